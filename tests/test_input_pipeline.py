"""jaxgan.data through its API, jaxgan.input_pipeline: sources, stream, transforms, bad input.

Decoding single images: tests/test_image_io.py; the tfds source: tests/test_tfds_source.py.
"""

from __future__ import annotations

import logging
import os
import threading
import time

import numpy as np
import pytest
from folder_data import make_config, make_folder, pattern
from PIL import Image

from jaxgan import image_io, input_pipeline
from jaxgan.data import sources
from jaxgan.data.stream import shard_count
from jaxgan.input_pipeline import DataError

MINI = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "datasets", "horse2zebra-mini")

# ------------------------------------------------------------------------------------------- sources


def test_folder_lists_images_recursively_any_case_ignoring_hidden_and_other_files(tmp_path):
    make_folder(tmp_path, {"trainA": 1, "trainB": 1, "testA": 0, "testB": 1})
    folder = tmp_path / "testA"
    (folder / "sub" / "deeper").mkdir(parents=True)
    (folder / ".cache").mkdir()
    image = Image.fromarray(pattern(1))
    image.save(folder / "a.JPG", format="JPEG")
    image.save(folder / "b.jpeg", format="JPEG")
    image.save(folder / "sub" / "c.Png", format="PNG")
    image.save(folder / "sub" / "deeper" / "d.bmp", format="BMP")
    image.save(folder / "e.WebP", format="WEBP")
    image.save(folder / ".hidden.png", format="PNG")
    image.save(folder / ".cache" / "f.png", format="PNG")
    (folder / "notes.txt").write_text("not an image")
    (folder / "Thumbs.db").write_bytes(b"\0" * 10)
    split = input_pipeline.load_test_split(make_config(f"folder:{tmp_path}"), "A")
    assert split.names == ["a.JPG", "b.jpeg", "e.WebP", "sub/c.Png", "sub/deeper/d.bmp"]
    assert split.images.shape == (5, 32, 32, 3) and split.truth is None


def test_a_folder_that_cannot_be_listed_is_left_out_with_a_warning(tmp_path, monkeypatch, caplog):
    make_folder(tmp_path, {"trainA": 2, "trainB": 1, "testA": 1, "testB": 1})
    locked = tmp_path / "trainA" / "locked"
    locked.mkdir()
    Image.fromarray(pattern(7)).save(locked / "hidden_from_us.png")
    scandir = os.scandir

    def denied(path="."):  # as for a folder without read permission (root, running the tests, reads any)
        if os.fspath(path) == str(locked):
            raise PermissionError(13, "Permission denied", str(locked))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", denied)
    caplog.set_level(logging.WARNING, logger="jaxgan.data")
    stream = input_pipeline.create_train_stream(make_config(f"folder:{tmp_path}"))
    assert stream.num_images["A"] == 2
    (message,) = [r.getMessage() for r in caplog.records]
    assert message == f"Cannot list {locked} (Permission denied); the images in it are left out"


def test_test_split_is_the_bicubic_resize_to_crop_size(tmp_path):
    make_folder(tmp_path)
    split = input_pipeline.load_test_split(make_config(f"folder:{tmp_path}"), "B", max_images=1)
    expected = Image.fromarray(pattern(300)).resize((32, 32), Image.Resampling.BICUBIC)
    np.testing.assert_array_equal(image_io.to_uint8(split.images[0]), np.asarray(expected))
    assert split.names == ["img_000.png"]
    assert split.images.dtype == np.float32 and split.images.min() >= -1.0 and split.images.max() <= 1.0


# -------------------------------------------------------------------------------------------- stream


def test_epoch_length_a_order_and_independent_b(tmp_path):
    stream = input_pipeline.create_train_stream(make_config(f"folder:{make_folder(tmp_path)}", seed=3))
    assert stream.steps_per_epoch == 8 and stream.num_images == {"A": 5, "B": 8}
    draws = [stream.image_indices(step) for step in range(8 * 60)]
    a = np.array([d["A"][0] for d in draws]).reshape(60, 8)
    b = np.array([d["B"][0] for d in draws])
    for epoch in a:  # every A image in every epoch; 3 of the 8 steps revisit one (8 % 5)
        assert set(epoch) == set(range(5))
    assert len({tuple(epoch) for epoch in a}) > 50  # a fresh order each epoch
    # The revisits fall on a fresh choice every epoch (the official code always gives them to A's first 3
    # files, which it then shows twice as often as the other 2): over the run, 96 times each.
    assert np.abs(np.bincount(a.ravel(), minlength=5) - 96).max() < 20
    counts = np.bincount(b, minlength=8)
    assert counts.min() > 30 and counts.max() < 90  # uniform B: 60 expected per image
    # B does not follow A: every (A, B) combination occurs.
    assert len(set(zip(a.ravel(), b, strict=True))) == 40


def test_steps_per_epoch_with_batches(tmp_path):
    folder = make_folder(tmp_path)
    for batch, steps in ((2, 4), (3, 3), (8, 1)):
        stream = input_pipeline.create_train_stream(make_config(f"folder:{folder}", batch_size=batch))
        assert stream.steps_per_epoch == steps and stream.local_batch_size == batch
        assert stream.batch(0)["A"].shape == (batch, 32, 32, 3)
        seen = np.concatenate([stream.image_indices(s)["A"] for s in range(steps)])
        assert set(seen) == set(range(5))


def test_stream_is_deterministic_and_resumes_mid_epoch(tmp_path):
    config = make_config(f"folder:{make_folder(tmp_path)}", batch_size=2, seed=7)
    first = input_pipeline.create_train_stream(config)
    uninterrupted = list(first.iterate(0, stop_step=10))
    assert len(uninterrupted) == 10
    resumed = input_pipeline.create_train_stream(config)  # a new process, resuming at step 6 (mid-epoch 1)
    for step, batch in zip(range(6, 10), resumed.iterate(6), strict=False):
        for key in "AB":
            np.testing.assert_array_equal(batch[key], uninterrupted[step][key])
    np.testing.assert_array_equal(resumed.batch(3)["B"], uninterrupted[3]["B"])  # any order, same answer
    config.seed = 8
    other = input_pipeline.create_train_stream(config)
    assert not np.array_equal(other.batch(0)["A"], uninterrupted[0]["A"])


def test_iterate_stops_its_thread_and_reraises_errors(tmp_path, monkeypatch):
    stream = input_pipeline.create_train_stream(make_config(f"folder:{make_folder(tmp_path)}"))
    iterator = stream.iterate(0)
    next(iterator)
    iterator.close()
    time.sleep(0.3)
    assert not any(t.name == "jaxgan-prefetch" and t.is_alive() for t in threading.enumerate())

    real = stream.batch

    def failing(step):
        if step == 2:
            raise RuntimeError("boom")
        return real(step)

    monkeypatch.setattr(stream, "batch", failing)
    with pytest.raises(RuntimeError, match="boom"):
        list(stream.iterate(0, stop_step=5))


def test_shards_split_a_domain_evenly_or_nearly():
    assert [shard_count(size, 4) for size in (12, 8, 6, 9, 7, 3, 1)] == [4, 4, 2, 1, 1, 1, 1]
    assert shard_count(1334, 8) == 8  # 166 or 167 images a shard: 0.6 % apart
    assert shard_count(1067, 64) == 8  # 64, 32 and 16 shards would hold 16-17, 33-34, 66-67 images
    assert shard_count(640, 64) == 64 and shard_count(5, 1) == 1


@pytest.mark.parametrize("process_count", [2, 4])
@pytest.mark.parametrize("sizes", [(12, 6), (9, 7)])
def test_process_shards_cover_the_stream(tmp_path, process_count, sizes):
    folder = make_folder(tmp_path, {"trainA": sizes[0], "trainB": sizes[1]})
    config = make_config(f"folder:{folder}", batch_size=4, seed=1)
    single = input_pipeline.create_train_stream(config)
    parts = [
        input_pipeline.create_train_stream(config, process_index=p, process_count=process_count)
        for p in range(process_count)
    ]
    assert all(p.local_batch_size == 4 // process_count for p in parts)
    assert all(p.steps_per_epoch == single.steps_per_epoch == 3 for p in parts)
    for key, size in zip("AB", sizes, strict=True):
        shards = shard_count(size, 4)  # 12: 4 shards, 6: 2; 9 and 7 images are not split (each process all)
        for p, part in enumerate(parts):
            rows = range(p * part.local_batch_size, (p + 1) * part.local_batch_size)
            own = {i for i in range(size) if i % shards in {r // (4 // shards) for r in rows}}
            assert set(part.cached_indices[key]) == own
        if shards >= process_count:  # the rows of a shard are contiguous: the processes hold disjoint parts
            assert sum(len(part.cached_indices[key]) for part in parts) == size
    for step in (0, 1, 2, 3, 7):  # across epoch boundaries
        whole = single.batch(step)
        local = [p.batch(step) for p in parts]
        for key in "AB":
            np.testing.assert_array_equal(np.concatenate([b[key] for b in local]), whole[key])


def test_fewer_shards_than_rows_still_split_the_domain_between_processes(tmp_path):
    # 20 images at batch 8: 4 shards of 5, each shown by 2 neighbouring rows; 2 processes hold 2 shards each.
    config = make_config(f"folder:{make_folder(tmp_path, {'trainA': 20, 'trainB': 20})}", batch_size=8, seed=2)
    assert shard_count(20, 8) == 4
    parts = [input_pipeline.create_train_stream(config, process_index=p, process_count=2) for p in range(2)]
    assert [sorted(p.cached_indices["A"]) for p in parts] == [
        [i for i in range(20) if i % 4 in (0, 1)],
        [i for i in range(20) if i % 4 in (2, 3)],
    ]
    single = input_pipeline.create_train_stream(config)
    for step in (0, 2, 3, 5):
        np.testing.assert_array_equal(np.concatenate([p.batch(step)["B"] for p in parts]), single.batch(step)["B"])


def test_every_image_is_shown_equally_often_when_the_batch_does_not_divide_the_domain(tmp_path):
    # 10 images at batch 8. One shard per row (i % 8) would hold 2 images in rows 0-1 and 1 in rows 2-7, and
    # show images 2-7 twice as often as the others.
    stream = input_pipeline.create_train_stream(
        make_config(f"folder:{make_folder(tmp_path, {'trainA': 10, 'trainB': 10})}", batch_size=8)
    )
    for key in "AB":
        counts = np.bincount(np.concatenate([stream.image_indices(s)[key] for s in range(1000)]), minlength=10)
        assert np.abs(counts - 800).max() < 80, (key, counts)  # 8,000 slots: 800 each


def test_domain_smaller_than_the_batch_is_shared_by_all_rows(tmp_path):
    config = make_config(f"folder:{make_folder(tmp_path, {'trainA': 1, 'trainB': 6})}", batch_size=4)
    single = input_pipeline.create_train_stream(config)
    halves = [input_pipeline.create_train_stream(config, process_index=p, process_count=2) for p in range(2)]
    assert single.steps_per_epoch == 2
    np.testing.assert_array_equal(np.concatenate([h.batch(1)["A"] for h in halves]), single.batch(1)["A"])


def test_global_batch_must_divide_among_processes(tmp_path):
    config = make_config(f"folder:{make_folder(tmp_path)}", batch_size=3)
    with pytest.raises(DataError, match="divisible"):
        input_pipeline.create_train_stream(config, process_index=0, process_count=2)


# ------------------------------------------------------------------------------------------ transforms


@pytest.mark.parametrize(
    "preprocess, shape",
    [
        ("resize_and_crop", (32, 32)),
        ("crop", (32, 32)),
        ("scale_width", (32, 36)),  # width 48 -> 36, height max(36 * 40 / 48, 32) = 32
        ("scale_width_and_crop", (32, 32)),
        ("none", (40, 48)),
    ],
)
def test_every_transform_gives_its_shape_in_range(tmp_path, preprocess, shape):
    config = make_config(f"folder:{make_folder(tmp_path)}", preprocess=preprocess, batch_size=2)
    stream = input_pipeline.create_train_stream(config)
    assert stream.image_shape == shape
    for step in range(3):
        batch = stream.batch(step)
        for key in "AB":
            assert batch[key].shape == (2, *shape, 3) and batch[key].dtype == np.float32
            assert batch[key].min() >= -1.0 and batch[key].max() <= 1.0
    test = input_pipeline.load_test_split(config, "A")
    assert test.images.shape == (3, 32, 32, 3)


@pytest.mark.parametrize(
    "load_size, shape",
    [
        (42, (36, 40)),  # 48x40 -> 42x35, rounded to multiples of 4 as the generator needs
        (34, (32, 32)),  # 34x28 -> the height at least the crop (32), the width rounded half to even
        (64, (52, 64)),  # 64x53
    ],
)
def test_scale_width_trains_on_sizes_the_generator_takes(tmp_path, load_size, shape):
    config = make_config(f"folder:{make_folder(tmp_path)}", preprocess="scale_width", load_size=load_size)
    stream = input_pipeline.create_train_stream(config)
    assert stream.image_shape == shape and stream.batch(0)["A"].shape == (1, *shape, 3)


def test_random_crop_and_flip_are_windows_of_the_resized_image(tmp_path):
    folder = make_folder(tmp_path, {"trainA": 1, "trainB": 1})
    original = np.asarray(Image.fromarray(pattern(0)).resize((36, 36), Image.Resampling.BICUBIC))
    windows = {(y, x): original[y : y + 32, x : x + 32] for y in range(5) for x in range(5)}
    for flip in (False, True):
        stream = input_pipeline.create_train_stream(make_config(f"folder:{folder}", flip=flip))
        found = set()
        for step in range(40):
            image = image_io.to_uint8(stream.batch(step)["A"][0])
            matches = [(pos, False) for pos, w in windows.items() if np.array_equal(image, w)]
            matches += [(pos, True) for pos, w in windows.items() if np.array_equal(image, w[:, ::-1])]
            assert matches, "not a window of the resized image"
            found.update(matches)
        flipped = {m[1] for m in found}
        assert flipped == ({False, True} if flip else {False})
        assert len({m[0] for m in found}) > 8  # many different crop positions


# ------------------------------------------------------------------------------------------- bad input


def _bad_files(folder):
    good = folder / "img_000.png"
    data = good.read_bytes()
    Image.open(good).convert("RGB").save(folder / "truncated.jpg", format="JPEG")
    (folder / "truncated.jpg").write_bytes((folder / "truncated.jpg").read_bytes()[:300])
    (folder / "text.jpg").write_text("this is not a jpeg")
    (folder / "empty.png").write_bytes(b"")
    (folder / "cut.png").write_bytes(data[: len(data) // 2])
    return ["cut.png", "empty.png", "text.jpg", "truncated.jpg"]


def test_corrupt_files_are_skipped_with_one_warning(tmp_path, caplog):
    root = make_folder(tmp_path)
    bad = _bad_files(tmp_path / "trainA")
    with pytest.raises(DataError, match="not a readable image"):
        input_pipeline.load_image(tmp_path / "trainA" / "text.jpg")
    caplog.set_level(logging.INFO, logger="jaxgan.data")
    stream = input_pipeline.create_train_stream(make_config(f"folder:{root}"))
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert "Skipped 4 of 9" in message and all(name in message for name in bad)
    assert len(stream.cached_indices["A"]) == 5 and stream.num_images["A"] == 9
    for step in range(12):  # only readable images are ever drawn
        assert stream.batch(step)["A"].shape == (1, 32, 32, 3)


def test_the_first_readable_test_images_are_taken_past_bad_ones(tmp_path, caplog):
    # The sample grid asks for the first 2 images of testA, whose first 2 files (by name) are unreadable.
    root = make_folder(tmp_path, {"trainA": 1, "trainB": 1, "testA": 3, "testB": 1})
    _bad_files(tmp_path / "testA")  # cut.png, empty.png, img_000..002.png, text.jpg, truncated.jpg
    caplog.set_level(logging.WARNING, logger="jaxgan.data")
    split = input_pipeline.load_test_split(make_config(f"folder:{root}"), "A", max_images=2)
    assert split.names == ["img_000.png", "img_001.png"]
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "Skipped 2 of 4 image files of testA" in warning  # the files after img_001.png were not read
    assert input_pipeline.load_test_split(make_config(f"folder:{root}"), "A").names[-1] == "img_002.png"


def test_a_row_whose_images_are_all_unreadable_draws_from_all(tmp_path, caplog):
    # 8 images at batch 4, so 4 shards: row 1 shows only images 1 and 5 (i % 4 == 1), both unreadable.
    root = make_folder(tmp_path, {"trainA": 8, "trainB": 8, "testA": 1, "testB": 1})
    for name in ("img_001.png", "img_005.png"):
        (tmp_path / "trainB" / name).write_bytes(b"not a png")
    caplog.set_level(logging.WARNING, logger="jaxgan.data")
    config = make_config(f"folder:{root}", batch_size=4)
    stream = input_pipeline.create_train_stream(config)
    messages = [r.getMessage() for r in caplog.records]
    assert any("The images i of trainB with i % 4 in {1} are all unreadable; the rows of the batch that show them "
               "draw from all readable images" in m for m in messages), messages  # fmt: skip
    assert any("Skipped 2 of 8 image files of trainB" in m for m in messages), messages
    drawn = [{int(stream.image_indices(step)["B"][row]) for step in range(40)} for row in range(4)]
    assert drawn == [{0, 4}, {0, 2, 3, 4, 6, 7}, {2, 6}, {3, 7}]  # row 1: every readable image; never a bad one
    assert stream.batch(0)["B"].shape == (4, 32, 32, 3)
    # The same batches with the rows split between processes (the one holding row 1 reads the others' images).
    parts = [input_pipeline.create_train_stream(config, process_index=p, process_count=2) for p in range(2)]
    for step in range(6):
        np.testing.assert_array_equal(np.concatenate([p.batch(step)["B"] for p in parts]), stream.batch(step)["B"])


def test_a_domain_of_only_bad_files_is_a_clear_error(tmp_path):
    root = make_folder(tmp_path, {"trainA": 1, "trainB": 2})
    _bad_files(tmp_path / "trainA")
    os.remove(tmp_path / "trainA" / "img_000.png")
    with pytest.raises(DataError, match=r"None of the 4 image files of trainA"):
        input_pipeline.create_train_stream(make_config(f"folder:{root}"))


def test_images_smaller_than_the_crop_are_resized_up_with_a_note(tmp_path, caplog):
    root = make_folder(tmp_path, size=(20, 26))
    caplog.set_level(logging.INFO, logger="jaxgan.data")
    for preprocess in ("crop", "none", "resize_and_crop"):
        caplog.clear()
        stream = input_pipeline.create_train_stream(make_config(f"folder:{root}", preprocess=preprocess))
        assert stream.batch(0)["A"].shape[1:3] in ((32, 32), (32, 40))  # 'none': 20x26 -> 32x41.6 -> 32x40
        notes = [r.getMessage() for r in caplog.records if "smaller than crop_size" in r.getMessage()]
        assert len(notes) == 2 and "5 images of trainA" in notes[0]  # one note per domain


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(DataError) as error:
        input_pipeline.create_train_stream(make_config(f"folder:{tmp_path / 'nowhere'}"))
    assert str(tmp_path / "nowhere") in str(error.value) and "does not exist" in str(error.value)
    assert "trainA/" in str(error.value) and "testB/" in str(error.value)


def test_missing_train_b_is_a_clear_error(tmp_path):
    root = make_folder(tmp_path, {"trainA": 2, "testA": 1})
    with pytest.raises(DataError, match=r"has no trainB/ folder \(it has: testA, trainA\)") as error:
        input_pipeline.create_train_stream(make_config(f"folder:{root}"))
    assert "Expected layout" in str(error.value)


def test_data_set_one_level_down_is_pointed_out(tmp_path):
    make_folder(tmp_path / "horse2zebra")
    with pytest.raises(DataError, match="Did you mean folder:.*horse2zebra"):
        input_pipeline.create_train_stream(make_config(f"folder:{tmp_path}"))


def test_empty_domain_is_a_clear_error(tmp_path):
    root = make_folder(tmp_path, {"trainA": 2, "trainB": 0})
    (tmp_path / "trainB" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match=r"trainB holds no images \(1 other files\)"):
        input_pipeline.create_train_stream(make_config(f"folder:{root}"))


def test_linked_folders_are_read_once_and_pipes_and_other_files_are_counted(tmp_path, caplog):
    root = make_folder(tmp_path, {"trainA": 4, "trainB": 3, "testA": 1, "testB": 1})
    os.symlink("..", tmp_path / "trainA" / "up")  # a loop back to the data set's root: trainB, tests, itself
    os.symlink(".", tmp_path / "trainB" / "self")
    (tmp_path / "more").mkdir()
    Image.fromarray(pattern(7)).save(tmp_path / "more" / "extra.png")
    os.symlink("../more", tmp_path / "trainB" / "more")  # a linked folder outside: read, once
    os.symlink("../more", tmp_path / "trainB" / "more_again")
    os.mkfifo(tmp_path / "trainB" / "pipe.jpg")  # opening it would block for ever
    (tmp_path / "trainB" / "notes.txt").write_text("x")
    Image.fromarray(pattern(9)).save(tmp_path / "trainB" / "scan.TIF", format="TIFF")  # read, as the official code
    (tmp_path / "trainB" / "layers.psd").write_bytes(b"8BPS")
    (tmp_path / "trainB" / ".DS_Store").write_bytes(b"\0")
    with caplog.at_level(logging.INFO, logger="jaxgan.data"):
        stream = input_pipeline.create_train_stream(make_config(f"folder:{root}"))
    assert stream.steps_per_epoch == 5  # max(4, 3 + 1 + 1): each real image once
    source = sources.make_source(make_config(f"folder:{root}"))
    assert [source.name("trainB", i) for i in range(source.count("trainB"))] == [
        "img_000.png", "img_001.png", "img_002.png", "more/extra.png", "scan.TIF"]  # fmt: skip
    assert source.count("trainA") == 4
    assert "3 other files ignored (.jpg, .psd, .txt)" in caplog.text  # the pipe, the Photoshop file, the notes
    assert "Skipped" not in caplog.text  # the TIFF was read


@pytest.mark.parametrize("dataset", ["horse2zebra", "folder:", "tfds:", "imagenet:x", ""])
def test_unknown_data_set_is_a_clear_error(dataset):
    with pytest.raises(DataError, match="config.dataset must be one of"):
        input_pipeline.create_train_stream(make_config(dataset))


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"preprocess": "zoom"}, "preprocess must be one of"),
        ({"load_size": 30}, "load_size .30. must be at least config.crop_size"),
        ({"batch_size": 0}, "batch_size must be a positive integer"),
    ],
)
def test_bad_data_config_values_are_clear_errors(tmp_path, overrides, match):
    with pytest.raises(DataError, match=match):
        input_pipeline.create_train_stream(make_config(f"folder:{make_folder(tmp_path)}", **overrides))


# -------------------------------------------------------------------------------------- real images


@pytest.mark.skipif(not os.path.isdir(MINI), reason="../shared/datasets/horse2zebra-mini is not present")
def test_horse2zebra_mini_with_the_paper_transform():
    config = make_config(f"folder:{MINI}", load_size=286, crop_size=256)
    stream = input_pipeline.create_train_stream(config)
    assert stream.num_images == {"A": 100, "B": 107} and stream.steps_per_epoch == 107
    batch = stream.batch(0)
    assert batch["A"].shape == batch["B"].shape == (1, 256, 256, 3)
    folder = os.path.join(MINI, "trainB")
    gray = []
    for name in sorted(os.listdir(folder)):
        with Image.open(os.path.join(folder, name)) as image:
            if image.mode == "L":
                gray.append(name)
    assert len(gray) == 7  # the grayscale zebras of the official training split
    for name in gray:
        image = input_pipeline.load_image(os.path.join(folder, name))
        assert image.shape == (256, 256, 3) and (image == image[..., :1]).all()
    test = input_pipeline.load_test_split(config, "B", max_images=4)
    assert test.images.shape == (4, 256, 256, 3) and test.names[0].endswith(".jpg")
