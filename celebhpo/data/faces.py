"""Painting one synthetic face from its labels (synth.py chooses the labels).

Every random draw happens in one fixed order (background, face, torso, mouth, hat, tilt,
noise): moving one changes every image of a seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

WIDTH, HEIGHT = 178, 218  # CelebA's aligned crops

HAIR = {  # RGB of each drawn hair colour; "Other" (auburn) has no attribute
    "Black_Hair": (22, 18, 18), "Blond_Hair": (236, 206, 104), "Brown_Hair": (112, 64, 30),
    "Gray_Hair": (172, 172, 176), "Other": (168, 58, 22),
}


def paint_face(rng: np.random.Generator, a: dict[str, bool]) -> Image.Image:
    """The 178x218 RGB image of a face with labels `a` (with its "_hair" and "_beard")."""
    # background: a vertical gradient between two random colours
    top, bottom = (rng.integers(50, 210) + rng.integers(-35, 36, 3) for _ in range(2))
    t = np.linspace(0.0, 1.0, HEIGHT)[:, None, None]  # (H, 1, 1)
    bg = (top * (1 - t) + bottom * t).repeat(WIDTH, axis=1)  # (H, W, 3)

    f = _place_face(rng, a)
    layer = Image.new("RGBA", (WIDTH, HEIGHT), (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)
    _draw_torso(d, rng, a, f)
    _draw_head(d, a, f)
    _draw_eyes_and_nose(d, a, f)
    _draw_mouth(d, rng, a, f)
    if a["Wearing_Hat"]:
        _draw_hat(d, rng, f)

    layer = layer.rotate(rng.uniform(-8, 8), resample=Image.Resampling.BILINEAR,
                         center=(f.cx, f.cy))
    img = Image.fromarray(bg.astype(np.uint8), "RGB").convert("RGBA")
    img.alpha_composite(layer)
    arr = np.asarray(img.convert("RGB"), dtype=np.float32)
    arr += rng.normal(0.0, rng.uniform(2.0, 9.0), arr.shape).astype(np.float32)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def _jitter(rng: np.random.Generator, rgb: tuple[int, ...], amount: int = 12) -> tuple[int, ...]:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in rgb)


def _bright_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    """A saturated colour (hats, shirts): one channel high, one low."""
    c = rng.permutation([int(rng.integers(200, 256)), int(rng.integers(0, 60)),
                         int(rng.integers(0, 256))])
    return int(c[0]), int(c[1]), int(c[2])


@dataclass(frozen=True)
class _Face:
    """Where one face sits and its colours."""

    cx: float
    cy: float
    s: float  # scale: faces fill the frame, as in CelebA's aligned crops
    fw: float
    fh: float
    skin: tuple[int, ...]
    hair: tuple[int, ...] | None  # None when bald
    beard: tuple[int, ...]  # the hair colour, or dark brown; also the eyebrows

    @property
    def box(self) -> tuple[float, float, float, float]:
        return (self.cx - self.fw / 2, self.cy - self.fh / 2, self.cx + self.fw / 2,
                self.cy + self.fh / 2)


def _place_face(rng: np.random.Generator, a: dict[str, bool]) -> _Face:
    s = rng.uniform(1.12, 1.38)
    cx = WIDTH / 2 + rng.uniform(-8, 8)
    cy = HEIGHT * 0.5 + rng.uniform(-8, 8)
    if a["Pale_Skin"]:
        skin = _jitter(rng, (246, 234, 228), 6)
    else:
        k = rng.uniform(0, 1)
        skin = tuple(int(lo * (1 - k) + hi * k) for lo, hi in zip((226, 178, 140), (92, 56, 36), strict=True))
    hair = a["_hair"]
    hair_rgb = _jitter(rng, HAIR[hair]) if hair != "none" else None
    beard_rgb = hair_rgb or _jitter(rng, (40, 28, 22))
    return _Face(cx=cx, cy=cy, s=s, fw=(80 if a["Male"] else 68) * s, fh=94 * s, skin=skin,
                 hair=hair_rgb, beard=beard_rgb)


def _draw_torso(d: ImageDraw.ImageDraw, rng: np.random.Generator, a: dict[str, bool],
                f: _Face) -> None:
    """Shirt, neck and tie."""
    cx, cy, s, fw, fh = f.cx, f.cy, f.s, f.fw, f.fh
    shirt = _jitter(rng, (int(rng.integers(70, 240)),) * 3, 30)  # muted: ties stand out
    d.ellipse((cx - 78 * s, cy + fh * 0.42, cx + 78 * s, cy + fh * 1.6), fill=shirt)
    d.rectangle((cx - fw * 0.2, cy + fh * 0.3, cx + fw * 0.2, cy + fh * 0.62), fill=f.skin)
    if a["Wearing_Necktie"]:
        tie = _jitter(rng, (205, 15, 25), 20) if rng.random() < 0.5 else _jitter(rng, (25, 35, 190), 20)
        y0 = cy + fh * 0.55
        d.polygon([(cx - 11 * s, y0), (cx + 11 * s, y0), (cx + 18 * s, HEIGHT), (cx - 18 * s, HEIGHT)],
                  fill=tie)
        d.rectangle((cx - 12 * s, y0 - 2, cx + 12 * s, y0 + 10 * s), fill=tie)


def _draw_head(d: ImageDraw.ImageDraw, a: dict[str, bool], f: _Face) -> None:
    """Hair behind, the face, bangs or hairline, then the beard (the mouth goes over it)."""
    cx, cy, s, fw, fh, face, hair_rgb = f.cx, f.cy, f.s, f.fw, f.fh, f.box, f.hair
    # hair behind the face: long for women, a short cap for men
    if hair_rgb is not None:
        if a["Male"]:
            d.ellipse((cx - fw / 2 - 5 * s, cy - fh / 2 - 13 * s, cx + fw / 2 + 5 * s, cy + fh * 0.05),
                      fill=hair_rgb)
        else:
            d.rounded_rectangle((cx - fw / 2 - 14 * s, cy - fh / 2 - 14 * s, cx + fw / 2 + 14 * s,
                                 cy + fh * 0.62), radius=int(30 * s), fill=hair_rgb)
    # the face: square jaw for men, oval for women
    if a["Male"]:
        d.rounded_rectangle(face, radius=int(fw * 0.42), fill=f.skin)
    else:
        d.ellipse(face, fill=f.skin)
    if hair_rgb is not None:
        # bangs cover the forehead down to the eyebrows; otherwise a thin hairline
        d.chord(face, 198 if a["Bangs"] else 232, 342 if a["Bangs"] else 308, fill=hair_rgb)
    ym, mw = cy + fh * 0.25, fw * 0.5
    if a["_beard"] == "full":
        d.chord(face, 12, 168, fill=f.beard)
        d.rectangle((cx - fw / 2 + 2, cy + fh * 0.05, cx - fw / 2 + 9 * s, cy + fh * 0.2), fill=f.beard)
        d.rectangle((cx + fw / 2 - 9 * s, cy + fh * 0.05, cx + fw / 2 - 2, cy + fh * 0.2), fill=f.beard)
    elif a["_beard"] == "goatee":
        d.rounded_rectangle((cx - mw * 0.3, ym + 5, cx + mw * 0.3, cy + fh / 2 - 1), radius=5,
                            fill=f.beard)


def _draw_eyes_and_nose(d: ImageDraw.ImageDraw, a: dict[str, bool], f: _Face) -> None:
    cx, cy, s, fw, fh = f.cx, f.cy, f.s, f.fw, f.fh
    ye = cy - fh * 0.08
    for side in (-1, 1):
        ex = cx + side * fw * 0.22
        d.ellipse((ex - 7 * s, ye - 4.5 * s, ex + 7 * s, ye + 4.5 * s), fill=(250, 250, 250))
        d.ellipse((ex - 3.5 * s, ye - 3.5 * s, ex + 3.5 * s, ye + 3.5 * s), fill=(40, 30, 25))
        d.line((ex - 8 * s, ye - 10 * s, ex + 8 * s, ye - 11 * s), fill=f.beard, width=3)
        if a["Eyeglasses"]:
            d.ellipse((ex - 15 * s, ye - 12 * s, ex + 15 * s, ye + 12 * s), fill=(45, 45, 55),
                      outline=(5, 5, 5), width=max(5, int(7 * s)))
    if a["Eyeglasses"]:
        d.line((cx - fw * 0.22 + 13 * s, ye, cx + fw * 0.22 - 13 * s, ye), fill=(5, 5, 5), width=6)
        d.line((cx - fw / 2 - 2, ye - 2, cx - fw * 0.22 - 13 * s, ye), fill=(5, 5, 5), width=6)
        d.line((cx + fw * 0.22 + 13 * s, ye, cx + fw / 2 + 2, ye - 2), fill=(5, 5, 5), width=6)
    nose = tuple(int(c * 0.8) for c in f.skin)
    d.line((cx, ye + 4 * s, cx - 4 * s, cy + fh * 0.12, cx + 3 * s, cy + fh * 0.13), fill=nose, width=3)


def _draw_mouth(d: ImageDraw.ImageDraw, rng: np.random.Generator, a: dict[str, bool],
                f: _Face) -> None:
    """Lipstick is bright red; smile = upward arc; open = dark hole; mustache above."""
    cx, s = f.cx, f.s
    ym, mw = f.cy + f.fh * 0.25, f.fw * 0.5
    lips = (_jitter(rng, (215, 15, 40), 15) if a["Wearing_Lipstick"]
            else tuple(int(c * 0.62) + 20 * (i == 0) for i, c in enumerate(f.skin)))
    if a["Mustache"]:
        d.rounded_rectangle((cx - mw * 0.55, ym - 19 * s, cx + mw * 0.55, ym - 8 * s), radius=3,
                            fill=f.beard)
    smile, open_ = a["Smiling"], a["Mouth_Slightly_Open"]
    dark, teeth = (45, 5, 10), (252, 252, 248)
    # mouths are drawn large so that they survive the resize to 32x32 px
    if smile:
        box = (cx - mw * 0.85, ym - 26 * s, cx + mw * 0.85, ym + 26 * s)
        d.chord(box, 0, 180, fill=dark if open_ else teeth, outline=lips, width=5)
        if open_:
            d.rectangle((cx - mw * 0.7, ym + 1, cx + mw * 0.7, ym + 9 * s), fill=teeth)
    elif open_:
        d.ellipse((cx - mw * 0.34, ym - 14 * s, cx + mw * 0.34, ym + 20 * s), fill=dark,
                  outline=lips, width=5)
    else:
        d.line((cx - mw * 0.38, ym, cx + mw * 0.38, ym), fill=lips, width=7)


def _draw_hat(d: ImageDraw.ImageDraw, rng: np.random.Generator, f: _Face) -> None:
    cx, cy, s, fw, fh = f.cx, f.cy, f.s, f.fw, f.fh
    hat = _bright_colour(rng)
    d.rounded_rectangle((cx - fw / 2 - 4, cy - fh / 2 - 42 * s, cx + fw / 2 + 4, cy - fh * 0.3),
                        radius=int(10 * s), fill=hat)
    d.rectangle((cx - fw / 2 - 22 * s, cy - fh * 0.40, cx + fw / 2 + 22 * s, cy - fh * 0.28),
                fill=hat)
    d.rectangle((cx - fw / 2, cy - fh * 0.49, cx + fw / 2, cy - fh * 0.42), fill=(10, 10, 10))
