"""The one image preprocessing function: training's cache and inference both use it.

`load_image` turns any image file PIL reads into the (S, S, 3) uint8 RGB array the model sees:
- upright as a viewer shows it: the EXIF Orientation tag (phone photos stored sideways) is
  applied with `ImageOps.exif_transpose`, after JPEG `draft` (DCT scaling works only on the
  undecoded file) and before the crop, which therefore uses the upright width and height;
- 16-bit grayscale ("I;16", "I;16B", "I;16L", "I;16N", and "I" read from 16-bit files) scaled
  0..65535 -> 0..255 (PIL's own conversion clips at 255, which turns such images nearly white);
- palette ("P", "PA", with or without transparency), "1", "L", "LA", "RGBA", "CMYK" converted
  to RGB; alpha is dropped, not composited, so a transparent pixel keeps its colour.
"""

from __future__ import annotations

import re
import struct
import warnings
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps

from celebhpo.errors import DataError

CROPS = ("squash", "center")
# the smallest side a face photo may have: below it there is no face to see, and a model
# would still answer confidently (a 1x1 image came out Male 0.991)
MIN_SIDE = 16
# 16-bit grayscale modes; "I" (32-bit) is what 16-bit PGMs (and PNGs in older PIL) open as
_WIDE_GRAY = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def load_image(path: str | Path, size: int, crop: str = "squash") -> np.ndarray:
    """Decode `path` into an (S, S, 3) uint8 RGB array, upright per its EXIF orientation.

    JPEGs are decoded at a reduced scale first (libjpeg DCT scaling via `draft`), which is both
    faster and no worse than resizing the full image. `crop`: "squash" resizes the whole image
    to S x S like the original notebooks; "center" takes the centered square first. Raises
    DataError("PATH: reason") for a missing, unreadable or truncated file, or an image with a
    side under MIN_SIDE pixels.
    """
    if crop not in CROPS:
        raise DataError(f"unknown crop {crop!r}; use squash or center")
    if size < 1:
        raise DataError(f"image size must be positive, got {size}")
    path = Path(path)
    try:
        try:
            arr = _decode_quietly(path, size, crop, bomb="error")
        except Image.DecompressionBombWarning as e:
            # over PIL's warning limit, under its error limit: PIL decodes these, so do we
            warnings.warn(f"{path}: {_bomb_pixels(e)} pixels, over PIL's decompression-bomb "
                          f"warning limit of {Image.MAX_IMAGE_PIXELS:,}; decoded anyway",
                          stacklevel=2)
            arr = _decode_quietly(path, size, crop, bomb="ignore")
    except FileNotFoundError as e:
        raise DataError(f"{path}: file not found") from e
    except Image.DecompressionBombError as e:
        limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
        raise DataError(f"{path}: image too large: {_bomb_pixels(e)} pixels (PIL's limit "
                        f"{limit:,})") from e
    except (OSError, SyntaxError, ValueError, EOFError) as e:  # PIL raises all of these
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"{path}: cannot decode ({reason})") from e
    if arr.shape != (size, size, 3):  # never expected; guards the cache's fixed shape
        raise DataError(f"{path}: decoded to shape {arr.shape}, expected ({size}, {size}, 3)")
    return arr


def _decode_quietly(path: Path, size: int, crop: str, bomb: str) -> np.ndarray:
    """`_decode` with PIL's DecompressionBombWarning raised (`bomb="error"`) or ignored."""
    with warnings.catch_warnings():
        # PIL warns on palette transparency (converted anyway) and on a corrupt EXIF block
        # (read as upright); neither is news to the user, once per image
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter(bomb, Image.DecompressionBombWarning)  # type: ignore[arg-type]
        return _decode(path, size, crop)


def _bomb_pixels(e: Exception) -> str:
    """The pixel count in PIL's decompression-bomb message ("Image size (N pixels) ...")."""
    found = re.search(r"\((\d+) pixels\)", str(e))
    return f"{int(found.group(1)):,}" if found else "too many"


def _decode(path: Path, size: int, crop: str) -> np.ndarray:
    """draft -> upright -> RGB -> crop and resize; PIL's errors pass through to load_image."""
    with Image.open(path) as src:
        if min(src.size) < MIN_SIDE:
            raise DataError(f"{path}: image is {src.width}x{src.height} pixels, below the "
                            f"{MIN_SIDE}x{MIN_SIDE} minimum (too small to show a face)")
        if src.format == "JPEG":
            # before anything decodes; a square request keeps both sides >= size in either
            # orientation, so the transpose below cannot make a side too small
            src.draft("RGB", (size, size))
        im = _to_rgb(_upright(src))
        w, h = im.size  # upright: a 90-degree orientation has already swapped them
        if crop == "center":
            side = min(w, h)
            box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
        else:
            box = (0, 0, w, h)
        # antialiased bilinear; reducing_gap halves big non-JPEG images cheaply first
        out = im.resize((size, size), Image.Resampling.BILINEAR, box=box, reducing_gap=3.0)
        return np.asarray(out, dtype=np.uint8)


def _orientation(im: Image.Image) -> int:
    """The EXIF Orientation tag (1 = upright); 1 too when the EXIF block cannot be parsed,
    since a broken tag says nothing about the pixels, which still decode."""
    try:
        value = im.getexif().get(ExifTags.Base.Orientation, 1)
    except (OSError, SyntaxError, ValueError, struct.error, KeyError, TypeError):
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _upright(im: Image.Image) -> Image.Image:
    """`im` as a viewer shows it. Only a non-trivial orientation pays for the transposed copy."""
    if _orientation(im) == 1:
        return im
    return ImageOps.exif_transpose(im)


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any mode -> "RGB" (see the module docstring for the rules)."""
    if im.mode == "RGB":
        return im
    if im.mode in _WIDE_GRAY:
        wide = np.asarray(im).astype(np.int64)  # (H, W); I;16B arrives big-endian, as >u2
        # round(v * 255 / 65535) == round(v / 257): 0 -> 0, 65535 -> 255, no clipping
        gray = (np.clip(wide, 0, 65535) * 255 + 32767) // 65535
        return Image.fromarray(gray.astype(np.uint8), "L").convert("RGB")
    if im.mode in ("P", "PA"):
        im = im.convert("RGBA")  # RGB directly warns on transparency given as bytes
    return im.convert("RGB")  # 1, L, LA, RGBA (alpha dropped), CMYK, YCbCr, F ...
