"""A contact sheet: a PNG grid of images with a caption under each (retrieve --sheet)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, ImageOps, UnidentifiedImageError

from celebhpo._io import atomic_open

__all__ = ["contact_sheet"]


def contact_sheet(paths: Sequence[str | Path], captions: Sequence[str], out: str | Path,
                  title: str = "", cell: int = 128, columns: int = 0) -> Path:
    """A PNG grid of `paths` with a caption under each, written atomically to `out`."""
    out = Path(out)
    font = ImageFont.load_default()
    n = len(paths)
    cols = columns or max(1, min(6, math.ceil(math.sqrt(n))))
    rows = max(1, math.ceil(n / cols))
    caption_h, title_h, pad = 16, 22 if title else 0, 4
    width = cols * (cell + pad) + pad
    height = title_h + rows * (cell + caption_h + pad) + pad
    sheet = Image.new("RGB", (max(width, 240), height), "white")
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((pad, 5), title, fill="black", font=font)
    if n == 0:
        draw.text((pad, title_h + cell // 2), "no matches", fill="gray", font=font)
    for k, (p, text) in enumerate(zip(paths, captions, strict=True)):
        x = pad + (k % cols) * (cell + pad)
        y = title_h + pad + (k // cols) * (cell + caption_h + pad)
        try:
            with Image.open(p) as im:
                thumb = ImageOps.fit(im.convert("RGB"), (cell, cell))
        except (OSError, ValueError, UnidentifiedImageError):
            thumb = Image.new("RGB", (cell, cell), "lightgray")  # gone or broken since predicted
        sheet.paste(thumb, (x, y))
        # cut the caption to the cell's width so neighbours do not overlap
        while text and draw.textlength(text, font=font) > cell:
            text = text[:-1]
        draw.text((x, y + cell + 2), text, fill="black", font=font)
    with atomic_open(out, "wb") as f:
        sheet.save(f, format="PNG")
    return out
