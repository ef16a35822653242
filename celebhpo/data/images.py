"""The one image preprocessing function: training's cache and inference both use it."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from celebhpo.errors import DataError

CROPS = ("squash", "center")


def load_image(path: str | Path, size: int, crop: str = "squash") -> np.ndarray:
    """Decode `path` into an (S, S, 3) uint8 RGB array.

    JPEGs are decoded at a reduced scale first (libjpeg DCT scaling via `draft`), which is both
    faster and no worse than resizing the full image. Grayscale, palette, RGBA and CMYK images
    are converted to RGB. `crop`: "squash" resizes the whole image to S x S like the original
    notebooks; "center" takes the centered square first. Raises DataError("PATH: reason") for a
    missing, unreadable or truncated file.
    """
    if crop not in CROPS:
        raise DataError(f"unknown crop {crop!r}; use squash or center")
    if size < 1:
        raise DataError(f"image size must be positive, got {size}")
    path = Path(path)
    try:
        with warnings.catch_warnings():
            # palette images with transparency warn on convert; we want them converted anyway
            warnings.simplefilter("ignore", UserWarning)
            with Image.open(path) as im:
                if im.format == "JPEG":
                    im.draft("RGB", (size, size))  # keeps both sides >= size
                if im.mode in ("P", "PA"):
                    im = im.convert("RGBA")
                if im.mode != "RGB":
                    im = im.convert("RGB")  # L, LA, RGBA (alpha dropped), CMYK, I;16 ...
                w, h = im.size
                if crop == "center":
                    side = min(w, h)
                    box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
                else:
                    box = (0, 0, w, h)
                # antialiased bilinear; reducing_gap halves big non-JPEG images cheaply first
                out = im.resize((size, size), Image.Resampling.BILINEAR, box=box,
                                reducing_gap=3.0)
                arr = np.asarray(out, dtype=np.uint8)
    except FileNotFoundError as e:
        raise DataError(f"{path}: file not found") from e
    except Image.DecompressionBombError as e:
        raise DataError(f"{path}: image too large to decode safely") from e
    except (OSError, SyntaxError, ValueError, EOFError) as e:  # PIL raises all of these
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"{path}: cannot decode ({reason})") from e
    if arr.shape != (size, size, 3):  # never expected; guards the cache's fixed shape
        raise DataError(f"{path}: decoded to shape {arr.shape}, expected ({size}, {size}, 3)")
    return arr
