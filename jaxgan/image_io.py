"""Image files in and out: decoding to 8-bit RGB, bicubic resizing, and the [-1, 1] <-> uint8 mapping.

Every image that enters jaxgan passes through :func:`decode_image`, which turns whatever Pillow can open
(grayscale, palette, RGBA/LA, CMYK, 16-bit) into ``uint8[H, W, 3]`` RGB and turns an unreadable file into
one :class:`DataError`. The float convention is the official one: ``x / 127.5 - 1`` (``ToTensor`` followed
by ``Normalize(0.5, 0.5)``), so pixel values live in ``[-1, 1]``.
"""

from __future__ import annotations

import io
import logging
import os
import warnings

import numpy as np
from numpy.typing import ArrayLike
from PIL import Image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")  # the official ones but PPM, and WebP

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")

_log = logging.getLogger("jaxgan.data")

_ORIENTATION_TAG = 0x0112  # EXIF tag 274: how the camera held the sensor
# EXIF orientation -> the transposition that shows the stored pixels upright (1: already upright).
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


class DataError(ValueError):
    """Bad data input (a path, a file, a data set name or a data config value); the message says what to do."""


def decode_image(source: str | os.PathLike | bytes, name: str | None = None) -> np.ndarray:
    """Decodes one image file (a path or its bytes) to 8-bit RGB.

    Grayscale and bilevel images are repeated over the three channels, palette images are expanded,
    alpha is dropped (as the official ``Image.convert('RGB')`` does), CMYK is converted, and 16-bit
    images are scaled to 8 bits (65535 -> 255) instead of being clipped. Animated files give their
    first frame. The EXIF orientation is applied, so a phone photo comes out upright as viewers show it.

    Args:
      source: a file path or the encoded file bytes.
      name: what to call the file in an error message (default: the path).

    Returns:
      uint8[H, W, 3] RGB.

    Raises:
      DataError: the file cannot be opened or decoded (not an image, truncated, corrupt, too large).
    """
    label = name if name is not None else (f"<{len(source)} bytes>" if isinstance(source, bytes) else str(source))
    try:
        with warnings.catch_warnings():
            # Pillow warns about palette transparency and EXIF quirks; the conversion below handles both.
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
                image.load()
                return pil_to_rgb(upright(image), sixteen_bit=_sixteen_bit_file(image))
    except FileNotFoundError as error:
        raise DataError(f"{label}: no such file") from error
    except Image.DecompressionBombError as error:
        raise DataError(
            f"{label}: too large to read ({error}); Pillow refuses such images as a guard against decompression "
            "bombs. Shrink it with another tool first, or, if you trust the file, raise PIL.Image.MAX_IMAGE_PIXELS"
        ) from error
    except MemoryError:
        raise
    except Exception as error:  # OSError, ValueError, ..., and on malformed files struct.error, ZeroDivisionError...
        raise DataError(f"{label}: not a readable image ({type(error).__name__}: {error})") from error


def upright(image: Image.Image) -> Image.Image:
    """The image as viewers show it: phone photos store the camera's rotation in EXIF orientation (tag 274).

    Only the pixels are turned. Unlike Pillow's ``ImageOps.exif_transpose``, the EXIF block is not rewritten,
    so a photo whose other EXIF tags are malformed (as some cameras write them) still reads; an orientation
    that cannot be read, or is not one of 1-8, counts as 1 (upright as stored).
    """
    try:
        orientation = image.getexif().get(_ORIENTATION_TAG, 1)
    except Exception:  # a malformed EXIF block: the pixels are still good
        return image
    transpose = _UPRIGHT.get(orientation) if isinstance(orientation, int) else None
    return image if transpose is None else image.transpose(transpose)


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Reads one image file as ``uint8[H, W, 3]`` RGB (see :func:`decode_image`); raises DataError if unreadable."""
    return decode_image(path)


def pil_to_rgb(image: Image.Image, sixteen_bit: bool = False) -> np.ndarray:
    """Converts a loaded Pillow image of any mode to ``uint8[H, W, 3]`` RGB (see :func:`decode_image`).

    ``sixteen_bit``: the file declares 16-bit samples, so that a 32-bit "I" image holds 16-bit values;
    otherwise such an image is taken as 16-bit when any value exceeds 255, and as 8-bit values if none does.
    """
    mode = image.mode
    if mode == "RGB":
        return np.asarray(image, dtype=np.uint8).copy()
    if mode in _SIXTEEN_BIT_MODES or mode in ("I", "F"):
        values = np.asarray(image).astype(np.float64)
        if mode == "F" and values.size and values.max() <= 1.0:
            values = values * 255.0  # float images in [0, 1]
        elif mode in _SIXTEEN_BIT_MODES or sixteen_bit or (values.size and values.max() > 255):
            values = values / 257.0  # 16-bit range onto 8 bits: 65535 -> 255
        gray = np.clip(np.rint(values), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=-1)
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()


def _sixteen_bit_file(image: Image.Image) -> bool:
    """Whether a mode-"I" image's file declares 16-bit samples, so that its values mean the 16-bit range.

    Pillow opens 16-bit PGM/PPM (any maxval above 255, rescaled to 65535), older Pillows' 16-bit PNGs and
    16-bit TIFFs in some layouts as 32-bit "I". Only a file that does not say (a 32-bit TIFF) is judged by its
    values, so that a dark 16-bit image, whose values all lie below 256, is not read as an 8-bit one.
    """
    if image.format in ("PPM", "PNG"):
        return True
    bits = getattr(image, "tag_v2", {}).get(258) if image.format == "TIFF" else None  # BitsPerSample
    return bool(bits) and max(bits if isinstance(bits, tuple) else (bits,)) == 16


def resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bicubic resize (Pillow's, antialiased when shrinking, as torchvision's ``Resize`` on PIL images).

    Args:
      image: uint8[H, W, 3].
      height, width: the output size.

    Returns:
      uint8[height, width, 3]; ``image`` itself when it already has that size.
    """
    if image.shape[0] == height and image.shape[1] == width:
        return image
    resized = Image.fromarray(image).resize((width, height), Image.Resampling.BICUBIC)
    return np.asarray(resized, dtype=np.uint8)


def to_float(images: np.ndarray) -> np.ndarray:
    """uint8[..., 3] in [0, 255] -> float32[..., 3] in [-1, 1] (``x / 127.5 - 1``)."""
    out = np.divide(images, np.float32(127.5), dtype=np.float32)
    out -= np.float32(1.0)
    return out


def to_uint8(images: ArrayLike) -> np.ndarray:
    """The reverse of :func:`to_float`: float[..., 3] in [-1, 1] (NumPy or JAX) -> uint8[..., 3], rounded, clipped."""
    values = (np.asarray(images, dtype=np.float32) + 1.0) * 127.5
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def save_image(path: str | os.PathLike, image: np.ndarray, image_format: str | None = None) -> None:
    """Writes one image; the format follows the file extension unless ``image_format`` (e.g. "PNG") is given.

    Args:
      path: where to write (its folder must exist).
      image: uint8[H, W, 3], or float[H, W, 3] in [-1, 1] (converted with :func:`to_uint8`).
      image_format: Pillow's format name, for a path without the usual extension (a ``.part`` file).
    """
    array = np.asarray(image)
    if array.dtype != np.uint8:
        array = to_uint8(array)
    Image.fromarray(array).save(path, format=image_format)


def is_image_file(name: str, extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> bool:
    """Whether a file name ends with one of ``extensions`` (any case) and is not hidden.

    Hidden means a leading dot, which also skips macOS's ``._name.jpg`` resource forks that sit beside
    every image copied from a Mac to a FAT or network drive.
    """
    base = os.path.basename(name)
    return not base.startswith(".") and base.lower().endswith(extensions)


def find_images(folder: str) -> tuple[list[str], list[str]]:
    """(image files, other files) below ``folder``, as sorted paths relative to it with ``/``.

    Hidden files and folders are left out. Linked folders are followed, each real folder once, except
    links back to ``folder`` or above it (they would list the same images, or other splits, again).
    Files that exist but are not regular files (pipes, sockets) count as other files; broken links stay
    among the images, so that reading them reports them as unreadable. A folder that cannot be listed
    (no permission) is left out with a warning.
    """
    top = os.path.realpath(folder)
    files, others, seen = [], [], {top}

    def unlisted(error: OSError) -> None:
        _log.warning("Cannot list %s (%s); the images in it are left out", error.filename, error.strerror)

    def new(real: str) -> bool:  # not listed yet, and not the folder itself or one above it (a loop)
        return real not in seen and not (top + os.sep).startswith(real.rstrip(os.sep) + os.sep)

    for dirpath, dirnames, filenames in os.walk(folder, onerror=unlisted, followlinks=True):
        keep = []
        for d in sorted(d for d in dirnames if not d.startswith(".")):
            real = os.path.realpath(os.path.join(dirpath, d))
            if new(real):
                seen.add(real)
                keep.append(d)
        dirnames[:] = keep
        for filename in filenames:
            if filename.startswith("."):
                continue
            path = os.path.join(dirpath, filename)
            relative = os.path.relpath(path, folder).replace(os.sep, "/")
            if is_image_file(filename) and (os.path.isfile(path) or not os.path.exists(path)):
                files.append(relative)
            else:
                others.append(relative)
    return sorted(files), sorted(others)
