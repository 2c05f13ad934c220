"""jaxgan.image_io: decoding any image file to 8-bit RGB (modes, bit depths, EXIF orientation) and the
float <-> uint8 mapping, as every reader of images (training, test splits, translate) sees them."""

from __future__ import annotations

import os
import struct

import numpy as np
import pytest
from folder_data import gray_ramp, make_config, make_folder, pattern
from PIL import Image, ImageOps

from jaxgan import image_io, input_pipeline


def test_float_uint8_mapping_round_trips():
    values = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, -1)
    floats = image_io.to_float(values)
    assert floats.dtype == np.float32 and floats.min() == -1.0 and floats.max() == 1.0
    np.testing.assert_array_equal(image_io.to_uint8(floats), values)
    np.testing.assert_array_equal(input_pipeline.to_uint8(np.array([-3.0, 3.0])), [0, 255])


def test_image_file_names_skip_hidden_files_and_other_extensions():
    assert image_io.is_image_file("a/b/horse.JPG") and image_io.is_image_file("x.webp")
    assert not image_io.is_image_file("._horse.jpg")  # macOS resource fork
    assert not image_io.is_image_file("dir/.hidden.png") and not image_io.is_image_file("notes.txt")
    assert image_io.is_image_file("scan.TIFF") and not image_io.is_image_file("._s.tif")  # as the official list
    assert not image_io.is_image_file("scan.tif", (".png",))


def test_save_image_writes_floats_as_uint8(tmp_path):
    image = pattern(4)
    image_io.save_image(tmp_path / "x.png", image_io.to_float(image))
    np.testing.assert_array_equal(input_pipeline.load_image(tmp_path / "x.png"), image)


@pytest.mark.parametrize("mode", ["L", "1", "P", "P+transparency", "RGBA", "LA", "CMYK", "I;16", "I"])
def test_every_image_mode_becomes_8_bit_rgb(tmp_path, mode):
    gray = gray_ramp()
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


def test_a_dark_sixteen_bit_image_is_read_on_the_sixteen_bit_scale(tmp_path):
    # Pillow opens 16-bit PGM as 32-bit "I". Its values were judged by their size: a dark one (all below 256)
    # was read as 8-bit, up to 257 times too bright, unlike a brighter image of the same file type.
    dark = np.array([[0, 200, 255]], ">u2")  # 16-bit values, all below 256: on 8 bits 0, 1 and 1
    (tmp_path / "dark.pgm").write_bytes(b"P5\n3 1\n65535\n" + dark.tobytes())
    with Image.open(tmp_path / "dark.pgm") as check:
        assert check.mode == "I"
    np.testing.assert_array_equal(image_io.decode_image(tmp_path / "dark.pgm")[0, :, 0], [0, 1, 1])
    # A 32-bit TIFF says nothing of the range: values up to 255 stay 8-bit values, larger ones are 16-bit.
    for values, want in (([0, 128, 255], [0, 128, 255]), ([0, 257 * 128, 65535], [0, 128, 255])):
        Image.fromarray(np.array([values], np.int32), mode="I").save(tmp_path / "x.tif")
        np.testing.assert_array_equal(image_io.decode_image(tmp_path / "x.tif")[0, :, 0], want)


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


def _exif_with_a_mistyped_tag(orientation: int) -> bytes:
    """An EXIF block as some cameras write it: the orientation, and tag 0x0154 stored as ASCII where Pillow's
    table expects a number (Pillow reads it, but cannot write the block back: ``struct.error``)."""
    entries = [(0x0112, 3, 1, struct.pack("<HH", orientation, 0)), (0x0154, 2, 4, b"Cam\x00")]
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHI", *e[:3]) + e[3] for e in entries)
    return b"Exif\x00\x00II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_a_photo_with_a_malformed_exif_tag_still_reads_upright(tmp_path, orientation):
    stored = np.zeros((40, 60, 3), np.uint8)
    stored[:20, :30] = 255  # the top-left quarter white, to tell all eight orientations apart
    path = tmp_path / "phone.jpg"
    Image.fromarray(stored).save(path, "JPEG", quality=95, exif=_exif_with_a_mistyped_tag(orientation))
    if orientation != 1:  # to turn the pixels, Pillow's own helper rewrites the EXIF block, and fails on it
        with Image.open(path) as image, pytest.raises(struct.error):
            ImageOps.exif_transpose(image)
    shown = {  # what a viewer shows for each EXIF orientation
        1: stored,
        2: stored[:, ::-1],
        3: stored[::-1, ::-1],
        4: stored[::-1],
        5: stored.transpose(1, 0, 2),
        6: np.rot90(stored, k=-1),
        7: np.rot90(stored, k=-1)[::-1],
        8: np.rot90(stored),
    }[orientation]
    got = image_io.decode_image(path)
    assert got.shape == shown.shape
    assert np.abs(got.astype(int) - shown).mean() < 8


def test_any_error_of_pillow_on_a_malformed_file_is_a_data_error(tmp_path, monkeypatch):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "x.png")

    def broken(image):
        raise ZeroDivisionError("division by zero")  # as Pillow raises on some malformed EXIF rationals

    monkeypatch.setattr(image_io, "upright", broken)
    with pytest.raises(image_io.DataError, match=r"x\.png: not a readable image \(ZeroDivisionError"):
        image_io.decode_image(tmp_path / "x.png")


def test_an_image_over_pillows_size_guard_says_it_is_too_large(tmp_path, monkeypatch):
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(tmp_path / "panorama.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 900)  # 2,000 pixels: over twice the guard, an error
    with pytest.raises(image_io.DataError, match=r"panorama\.png: too large to read \(Image size \(2000 pixels\)"):
        image_io.decode_image(tmp_path / "panorama.png")
