"""jaxgan.translate's own logic, without a trained run: which files it reads, how it batches them.

The command line on a trained run (outputs, errors, checkpoints) is tested in test_runner.py.
"""

import os

import numpy as np
import pytest
from PIL import Image

from jaxgan import translate


def test_translate_inputs_follow_links_skip_pipes_and_a_previous_output_inside(tmp_path):
    src, more = tmp_path / "photos", tmp_path / "more"
    src.mkdir(), more.mkdir()
    for path in (src / "a.jpg", more / "b.png", src / "zebra" / "a.png"):
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path)
    os.symlink(more, src / "linked")  # a linked folder is read
    os.symlink("..", src / "up")  # a loop back above the input is not
    os.mkfifo(src / "pipe.jpg")  # listing must not open it (it would block for ever)
    os.symlink("loop2.jpg", src / "loop1.jpg")  # a link loop: listed (and reported unreadable), no crash
    os.symlink("loop1.jpg", src / "loop2.jpg")
    names = lambda output: sorted(str(p.relative_to(src)) for p in translate._collect_inputs(src, output))  # noqa: E731
    every = ["a.jpg", "linked/b.png", "loop1.jpg", "loop2.jpg", "zebra/a.png"]
    assert names(tmp_path / "out") == every
    assert names(src / "zebra") == every[:4]  # the last run's output, inside the input: left out
    assert names(src) == every  # the input itself: _destinations decides
    assert names(tmp_path) == every  # an output around the input leaves everything in
    assert [p.name for p in translate._collect_inputs(src / "a.jpg", src)] == ["a.jpg"]


def test_translate_holds_few_decoded_images_when_sizes_vary(tmp_path, monkeypatch):
    files = [tmp_path / f"{i:02d}.png" for i in range(40)]
    for i, f in enumerate(files):  # 20 sizes, 2 images each, the pairs far apart in the listing
        Image.fromarray(np.full((8 + 4 * (i % 20), 8, 3), i, np.uint8)).save(f)
    loads, real = [], translate.image_io.load_image
    monkeypatch.setattr(translate.image_io, "load_image", lambda f: loads.append(f) or real(f))
    done, held = [], []
    for paths, images in translate._batches_by_size(files, batch_size=3):
        assert images.shape[0] == len(paths) and len({np.asarray(real(p)).shape for p in paths}) == 1
        held.append(len(loads) - len(done))  # decoded, not yet handed out
        done += paths
    assert sorted(done) == files and max(held) <= translate.HELD_BATCHES * 3, held


def test_progress_counts_every_input_and_link_loops_are_skipped(tmp_path):
    import jax

    from jaxgan import models

    src = tmp_path / "in"
    src.mkdir()
    for name, side in (("a.png", 8), ("b.png", 12), ("c.png", 8)):
        Image.fromarray(np.full((side, side, 3), 100, np.uint8)).save(src / name)
    os.symlink("z2.jpg", src / "z1.jpg")  # listed last, unreadable: skipped after the last batch
    os.symlink("z1.jpg", src / "z2.jpg")
    generator = models.ResnetGenerator(ngf=4, n_blocks=1)
    params = generator.init(jax.random.PRNGKey(0), np.zeros((1, 8, 8, 3), np.float32))["params"]
    skipped, progress = ["an earlier folder's entry"], []
    written = translate.translate_files(generator, params, src, tmp_path / "out", batch_size=2, skipped=skipped,
                                        on_progress=progress.append)  # fmt: skip
    assert sorted(p.name for p in written) == ["a.png", "b.png", "c.png"]
    assert [s.split(":")[0] for s in skipped[1:]] == [str(src / "z1.jpg"), str(src / "z2.jpg")], skipped
    assert progress == sorted(progress) and progress[-1] == 5  # 3 written + 2 skipped, not the earlier entry

    # A plan made before the generator loads (as the command does) is translated as listed, not listed again.
    planned = translate.plan(src, tmp_path / "planned")
    (src / "a.png").rename(src / "renamed.png")  # after the listing: missing for the plan, not re-listed
    skipped = []
    written = translate.translate_files(generator, params, planned, None, skipped=skipped)
    assert sorted(p.name for p in written) == ["b.png", "c.png"]
    assert sorted(s.split(":")[0] for s in skipped) == [str(src / n) for n in ("a.png", "z1.jpg", "z2.jpg")]
    with pytest.raises(translate.TranslateError, match="differs from the plan's"):
        translate.translate_files(generator, params, planned, tmp_path / "elsewhere")
    assert not (tmp_path / "elsewhere").exists()
    same = translate.translate_files(generator, params, planned, tmp_path / "in" / ".." / "planned", skipped=[])
    assert sorted(p.name for p in same) == ["b.png", "c.png"]  # the plan's folder, spelled otherwise
    with pytest.raises(translate.TranslateError, match="output is None"):
        translate.translate_files(generator, params, src, None)


def test_one_image_may_be_written_to_a_png_file_name(tmp_path):
    # `--output zebra.png` for one photo used to make a folder named zebra.png, with the translation inside.
    import jax

    from jaxgan import models

    Image.fromarray(np.full((12, 8, 3), 100, np.uint8)).save(tmp_path / "photo.jpg")
    (tmp_path / "old.png").write_bytes(b"an earlier translation")
    generator = models.ResnetGenerator(ngf=4, n_blocks=1)
    params = generator.init(jax.random.PRNGKey(0), np.zeros((1, 8, 8, 3), np.float32))["params"]
    for name in ("new/zebra.png", "old.png", "UPPER.PNG"):
        written = translate.translate_files(generator, params, tmp_path / "photo.jpg", tmp_path / name)
        assert written == [tmp_path / name] and Image.open(tmp_path / name).size == (8, 12), name
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["zebra.png"]
    for inputs, output, says in (
        (tmp_path / "photo.jpg", "zebra.jpg", "translations are written as PNG; name it zebra.png"),
        (tmp_path / "photo.jpg", "zebra.gif", "translations are written as PNG; name it zebra.png"),  # not a folder
        (tmp_path / "new", "all.png", "names an image file, but --input"),
        (tmp_path / "old.png", "old.png", "would overwrite it"),
        (tmp_path / "missing.jpg", "x.png", "does not exist"),
    ):
        with pytest.raises(translate.TranslateError, match=says):
            translate.plan(inputs, tmp_path / output)
    assert not any((tmp_path / name).exists() for name in ("zebra.jpg", "zebra.gif", "all.png"))
    (tmp_path / "shots.png").mkdir()  # a folder named like an image is still a folder
    assert translate.plan(tmp_path / "photo.jpg", tmp_path / "shots.png").destinations == {
        tmp_path / "photo.jpg": tmp_path / "shots.png" / "photo.png"
    }
