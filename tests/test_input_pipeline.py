"""jaxgan.data (through its API, jaxgan.input_pipeline) and jaxgan.image_io: sources, stream, transforms, bad input."""

from __future__ import annotations

import logging
import os
import threading
import time

import ml_collections
import numpy as np
import pytest
from PIL import Image

from jaxgan import image_io, input_pipeline
from jaxgan.data import sources as data_sources
from jaxgan.input_pipeline import DataError

MINI = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "datasets", "horse2zebra-mini")
SPLITS = ("trainA", "trainB", "testA", "testB")


def make_config(dataset: str, **overrides) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict(
        {
            "dataset": dataset,
            "data_dir": "",
            "batch_size": 1,
            "load_size": 36,
            "crop_size": 32,
            "preprocess": "resize_and_crop",
            "flip": True,
            "seed": 0,
        }
    )
    config.update(overrides)
    return config


def pattern(index: int, height: int = 40, width: int = 48) -> np.ndarray:
    """A distinct, asymmetric uint8[H, W, 3] image per index."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([(x * 5 + index * 37) % 256, (y * 6 + index * 11) % 256, (x * y + index * 3) % 256], -1).astype(
        np.uint8
    )


def make_folder(root, counts=None, size=(40, 48)) -> str:
    """The official layout with PNG images, ``counts`` per split."""
    counts = counts or {"trainA": 5, "trainB": 8, "testA": 3, "testB": 2}
    for split, count in counts.items():
        os.makedirs(root / split, exist_ok=True)
        for i in range(count):
            Image.fromarray(pattern(i + 100 * SPLITS.index(split), *size)).save(root / split / f"img_{i:03d}.png")
    return str(root)


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


@pytest.mark.parametrize("process_count", [2, 4])
def test_process_shards_cover_the_stream_without_overlap(tmp_path, process_count):
    config = make_config(f"folder:{make_folder(tmp_path, {'trainA': 9, 'trainB': 7})}", batch_size=4, seed=1)
    single = input_pipeline.create_train_stream(config)
    parts = [
        input_pipeline.create_train_stream(config, process_index=p, process_count=process_count)
        for p in range(process_count)
    ]
    assert all(p.local_batch_size == 4 // process_count for p in parts)
    assert all(p.steps_per_epoch == single.steps_per_epoch == 3 for p in parts)
    for key, size in (("A", 9), ("B", 7)):
        held = [set(p.cached_indices[key]) for p in parts]
        assert sum(len(h) for h in held) == size and set().union(*held) == set(range(size))
    for step in (0, 1, 2, 3, 7):  # across epoch boundaries
        whole = single.batch(step)
        local = [p.batch(step) for p in parts]
        for key in "AB":
            np.testing.assert_array_equal(np.concatenate([b[key] for b in local]), whole[key])


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


def test_float_uint8_mapping_round_trips():
    values = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, -1)
    floats = image_io.to_float(values)
    assert floats.dtype == np.float32 and floats.min() == -1.0 and floats.max() == 1.0
    np.testing.assert_array_equal(image_io.to_uint8(floats), values)
    np.testing.assert_array_equal(input_pipeline.to_uint8(np.array([-3.0, 3.0])), [0, 255])


def test_save_image_writes_floats_as_uint8(tmp_path):
    image = pattern(4)
    image_io.save_image(tmp_path / "x.png", image_io.to_float(image))
    np.testing.assert_array_equal(input_pipeline.load_image(tmp_path / "x.png"), image)


# ------------------------------------------------------------------------------------------- bad input


def _gray(h=20, w=24):
    return (np.arange(h * w).reshape(h, w) % 251).astype(np.uint8)


@pytest.mark.parametrize("mode", ["L", "1", "P", "P+transparency", "RGBA", "LA", "CMYK", "I;16", "I"])
def test_every_image_mode_becomes_8_bit_rgb(tmp_path, mode):
    gray = _gray()
    rgb = np.stack([gray, 255 - gray, gray // 2], -1)
    if mode == "L":
        image, expected = Image.fromarray(gray), np.repeat(gray[..., None], 3, -1)
    elif mode == "1":
        image = Image.fromarray(gray > 100)
        expected = np.repeat(np.where(gray > 100, 255, 0).astype(np.uint8)[..., None], 3, -1)
    elif mode.startswith("P"):
        image = Image.fromarray(rgb).quantize(16)
        if mode == "P+transparency":
            image.info["transparency"] = 0
        expected = np.asarray(image.convert("RGB"))
    elif mode == "RGBA":
        image, expected = Image.fromarray(np.dstack([rgb, gray])), rgb
    elif mode == "LA":
        image, expected = Image.fromarray(np.dstack([gray, gray])), np.repeat(gray[..., None], 3, -1)
    elif mode == "CMYK":
        image = Image.fromarray(rgb).convert("CMYK")
        expected = rgb
    else:  # 16-bit values, 257 * v, are v on 8 bits
        wide = gray.astype(np.uint16) * 257
        image = Image.fromarray(wide) if mode == "I;16" else Image.fromarray(wide.astype(np.int32), mode="I")
        expected = np.repeat(gray[..., None], 3, -1)
    path = tmp_path / ("x.tif" if mode in ("CMYK", "I") else "x.png")
    image.save(path)
    with Image.open(path) as check:
        assert check.mode.startswith(mode.split("+")[0]) or mode == "I;16"
    loaded = input_pipeline.load_image(path)
    assert loaded.dtype == np.uint8 and loaded.shape == (20, 24, 3)
    np.testing.assert_allclose(loaded.astype(int), expected.astype(int), atol=2)


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257 * 128, 65535]], np.uint16)
    Image.fromarray(values).save(tmp_path / "x.png")
    np.testing.assert_array_equal(input_pipeline.load_image(tmp_path / "x.png")[0, :, 0], [0, 128, 255])


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


# ---------------------------------------------------------------------------------------------- tfds


@pytest.fixture(scope="module")
def tfds_data_dir(tmp_path_factory):
    """A real, tiny cycle_gan/horse2zebra prepared by a local subclass of the tfds builder (no network)."""
    tfds = pytest.importorskip("tensorflow_datasets")
    tfds.disable_progress_bar()
    images = tmp_path_factory.mktemp("unpacked")
    make_folder(images, {"trainA": 3, "trainB": 4, "testA": 2, "testB": 1})
    Image.fromarray(_gray(40, 48)).save(images / "trainB" / "img_gray.jpg")  # grayscale, as in horse2zebra

    class LocalCycleGan(tfds.builder_cls("cycle_gan"), skip_registration=True):
        name = "cycle_gan"

        def _split_generators(self, dl_manager):
            return [
                tfds.core.SplitGenerator(name=s, gen_kwargs={"path": str(images / s), "label": s[-1]}) for s in SPLITS
            ]

        def _generate_examples(self, path, label):
            for name in sorted(os.listdir(path)):
                yield name, {"image": os.path.join(path, name), "label": label}

    data_dir = tmp_path_factory.mktemp("tfds")
    LocalCycleGan(config="horse2zebra", data_dir=str(data_dir), file_format="array_record").download_and_prepare()
    return str(data_dir)


def test_tfds_source_reads_a_prepared_data_set(tfds_data_dir, monkeypatch):
    monkeypatch.setattr(data_sources, "_download_host_reachable", lambda *a, **k: pytest.fail("no network"))
    config = make_config("tfds:cycle_gan/horse2zebra", data_dir=tfds_data_dir, batch_size=2)
    stream = input_pipeline.create_train_stream(config)
    assert stream.num_images == {"A": 3, "B": 5} and stream.steps_per_epoch == 3
    assert stream.batch(0)["B"].shape == (2, 32, 32, 3)
    shards = [input_pipeline.create_train_stream(config, process_index=p, process_count=2) for p in range(2)]
    assert not set(shards[0].cached_indices["B"]) & set(shards[1].cached_indices["B"])
    np.testing.assert_array_equal(np.concatenate([s.batch(4)["B"] for s in shards]), stream.batch(4)["B"])
    test = input_pipeline.load_test_split(config, "A")
    assert test.images.shape == (2, 32, 32, 3) and test.names == ["testA_00000.png", "testA_00001.png"]


def test_tfds_offline_fails_fast_with_the_folder_advice(tmp_path, monkeypatch):
    pytest.importorskip("tensorflow_datasets")
    monkeypatch.setattr(data_sources, "_download_host_reachable", lambda *a, **k: False)
    start = time.perf_counter()
    with pytest.raises(DataError) as error:
        input_pipeline.create_train_stream(make_config("tfds:cycle_gan/apple2orange", data_dir=str(tmp_path)))
    assert time.perf_counter() - start < 20
    message = str(error.value)
    assert "not prepared" in message and str(tmp_path) in message
    assert "--config.dataset=folder:/path/to/apple2orange" in message and "apple2orange.zip" in message


def test_tfds_without_tensorflow_explains_how_to_prepare(tmp_path, monkeypatch):
    pytest.importorskip("tensorflow_datasets")
    monkeypatch.setattr(data_sources, "_download_host_reachable", lambda *a, **k: True)
    monkeypatch.setattr(data_sources, "_tensorflow_available", lambda: False)
    with pytest.raises(DataError, match=r"needs TensorFlow[\s\S]*folder:"):
        input_pipeline.create_train_stream(make_config("tfds:cycle_gan/maps", data_dir=str(tmp_path)))


@pytest.mark.parametrize(
    "name, match",
    [
        ("cycle_gan/horse2zebr", r"cycle_gan/horse2zebr does not exist. Known: apple2orange"),
        ("cycle_gan/cityscapes", "removed from the tensorflow-datasets builder"),
        ("horse2zebra", r"Did you mean 'tfds:cycle_gan/horse2zebra'"),
        ("mnist", "is not a cycle_gan data set"),
    ],
)
def test_tfds_unknown_names_are_clear_errors(name, match):
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(DataError, match=match):
        input_pipeline.create_train_stream(make_config(f"tfds:{name}"))


# ------------------------------------------------------------------------------------------- EXIF


def _phone_photo(path, stored_hw=(48, 80), orientation=6) -> np.ndarray:
    """A JPEG stored ``stored_hw`` with EXIF orientation 6 (shown rotated 90 degrees clockwise); returns the
    upright image as a viewer shows it (``uint8[W, H, 3]``), up to JPEG's rounding."""
    stored = np.zeros((*stored_hw, 3), np.uint8)
    stored[: stored_hw[0] // 2, :, 0] = 255  # top half red in the stored frame: the right half once upright
    exif = Image.Exif()
    exif[274] = orientation
    Image.fromarray(stored).save(path, "JPEG", quality=95, exif=exif)
    return np.rot90(stored, k=-1)


def test_exif_orientation_is_applied_wherever_images_are_read(tmp_path):
    upright = _phone_photo(tmp_path / "phone.jpg")
    got = image_io.decode_image(tmp_path / "phone.jpg")
    assert got.shape == (80, 48, 3) == upright.shape  # stored 80 wide x 48 high, shown 48 wide x 80 high
    assert np.abs(got.astype(int) - upright).mean() < 8
    assert got[:, 30:, 0].mean() > 200 and got[:, :18, 0].mean() < 50  # red on the right once upright
    root = tmp_path / "data"
    make_folder(root, {"trainA": 1, "trainB": 1, "testA": 0, "testB": 1})
    os.makedirs(root / "testA", exist_ok=True)
    for split in ("trainA", "testA"):
        _phone_photo(root / split / "phone.jpg")
    config = make_config(f"folder:{root}", preprocess="none", flip=False, crop_size=32)
    test = input_pipeline.load_test_split(config, "A")
    red = image_io.to_uint8(test.images[0])[..., 0]
    assert red[:, 20:].mean() > 200 and red[:, :12].mean() < 50  # the test transform sees it upright too
