"""Synthetic faces drawn in code, written in CelebA's Kaggle layout.

The same reader code path serves real and synthetic data, so tests and the demo exercise
everything a real CelebA folder would. About a third of the attributes are drawn boldly into the
pixels (VISIBLE_ATTRIBUTES) so that a tiny CNN learns them at 32x32 within a few epochs; the
others are label noise at CelebA's real positive rates, with the obvious correlations kept.
Each image depends only on (seed, index), so the output is byte-identical for a seed however
many processes draw it.
"""

from __future__ import annotations

import os
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from celebhpo.data.layouts import ATTRIBUTES

WIDTH, HEIGHT = 178, 218  # CelebA's aligned crops

VISIBLE_ATTRIBUTES: list[str] = [
    "Bald", "Bangs", "Black_Hair", "Blond_Hair", "Brown_Hair", "Eyeglasses", "Goatee",
    "Gray_Hair", "Male", "Mouth_Slightly_Open", "Mustache", "No_Beard", "Pale_Skin", "Smiling",
    "Wearing_Hat", "Wearing_Lipstick", "Wearing_Necktie",
]

# Positive rates of the full CelebA release (202,599 images), used for the noise attributes.
CELEBA_RATES: dict[str, float] = {
    "5_o_Clock_Shadow": 0.111, "Arched_Eyebrows": 0.267, "Attractive": 0.513,
    "Bags_Under_Eyes": 0.205, "Bald": 0.022, "Bangs": 0.152, "Big_Lips": 0.241,
    "Big_Nose": 0.234, "Black_Hair": 0.239, "Blond_Hair": 0.148, "Blurry": 0.051,
    "Brown_Hair": 0.205, "Bushy_Eyebrows": 0.142, "Chubby": 0.058, "Double_Chin": 0.047,
    "Eyeglasses": 0.065, "Goatee": 0.063, "Gray_Hair": 0.042, "Heavy_Makeup": 0.387,
    "High_Cheekbones": 0.455, "Male": 0.417, "Mouth_Slightly_Open": 0.483, "Mustache": 0.042,
    "Narrow_Eyes": 0.115, "No_Beard": 0.835, "Oval_Face": 0.284, "Pale_Skin": 0.043,
    "Pointy_Nose": 0.277, "Receding_Hairline": 0.080, "Rosy_Cheeks": 0.066, "Sideburns": 0.057,
    "Smiling": 0.482, "Straight_Hair": 0.208, "Wavy_Hair": 0.320, "Wearing_Earrings": 0.189,
    "Wearing_Hat": 0.048, "Wearing_Lipstick": 0.472, "Wearing_Necklace": 0.123,
    "Wearing_Necktie": 0.073, "Young": 0.774,
}

# Noise attributes CelebA only ever marks on men / mostly on women: (rate if male, if female),
# chosen so the overall rate stays near CELEBA_RATES at 42% men.
_BY_SEX: dict[str, tuple[float, float]] = {
    "5_o_Clock_Shadow": (0.26, 0.0), "Sideburns": (0.13, 0.0), "Bushy_Eyebrows": (0.24, 0.07),
    "Big_Nose": (0.42, 0.10), "Receding_Hairline": (0.14, 0.04), "Double_Chin": (0.09, 0.02),
    "Arched_Eyebrows": (0.05, 0.43), "Wearing_Earrings": (0.03, 0.31),
    "Wearing_Necklace": (0.01, 0.20), "Attractive": (0.30, 0.67), "High_Cheekbones": (0.30, 0.56),
    "Rosy_Cheeks": (0.01, 0.11), "Young": (0.65, 0.87),
}

_HAIR = {  # RGB of each drawn hair colour; "Other" (auburn) has no attribute
    "Black_Hair": (22, 18, 18), "Blond_Hair": (236, 206, 104), "Brown_Hair": (112, 64, 30),
    "Gray_Hair": (172, 172, 176), "Other": (168, 58, 22),
}


def _labels(rng: np.random.Generator) -> dict[str, bool]:
    """One face's 40 attributes: visible ones with their drawing rules' dependencies."""
    a: dict[str, bool] = {}
    male = a["Male"] = bool(rng.random() < 0.42)
    # Rare visible attributes are drawn more often than in CelebA so ~1000 images hold enough
    # positives to learn them in a few epochs.
    hat = a["Wearing_Hat"] = bool(rng.random() < 0.12)
    bald = a["Bald"] = bool(male and not hat and rng.random() < 0.18)
    if bald:
        hair = "none"
    else:
        p = [0.30, 0.10, 0.32, 0.14, 0.14] if male else [0.26, 0.30, 0.28, 0.08, 0.08]
        hair = str(rng.choice(list(_HAIR), p=p))
    for name in ("Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair"):
        a[name] = hair == name
    a["Bangs"] = bool(not bald and rng.random() < (0.12 if male else 0.30))
    a["Eyeglasses"] = bool(rng.random() < (0.22 if male else 0.12))
    a["Smiling"] = bool(rng.random() < 0.48)
    a["Mouth_Slightly_Open"] = bool(rng.random() < (0.70 if a["Smiling"] else 0.28))
    a["Wearing_Lipstick"] = bool(not male and rng.random() < 0.80)
    beard = str(rng.choice(["none", "full", "goatee"], p=[0.55, 0.27, 0.18])) if male else "none"
    a["No_Beard"] = beard == "none"
    a["Goatee"] = beard == "goatee"
    a["Mustache"] = bool(male and rng.random() < (0.45 if beard != "none" else 0.08))
    a["Pale_Skin"] = bool(rng.random() < 0.12)
    a["Wearing_Necktie"] = bool(male and rng.random() < 0.30)
    a["Heavy_Makeup"] = bool(rng.random() < (0.78 if a["Wearing_Lipstick"] else 0.03))
    for name in ATTRIBUTES:
        if name in a:
            continue
        if name in _BY_SEX:
            a[name] = bool(rng.random() < _BY_SEX[name][0 if male else 1])
        else:
            a[name] = bool(rng.random() < CELEBA_RATES[name])
    if a["Wavy_Hair"] and a["Straight_Hair"]:  # CelebA never marks both
        a["Straight_Hair"] = False
    a["_hair"] = hair  # type: ignore[assignment]  # drawing detail, not an attribute
    a["_beard"] = beard  # type: ignore[assignment]
    return a


def _jitter(rng: np.random.Generator, rgb: tuple[int, ...], amount: int = 12) -> tuple[int, ...]:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in rgb)


def _bright_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    """A saturated colour (hats, shirts): one channel high, one low."""
    c = rng.permutation([int(rng.integers(200, 256)), int(rng.integers(0, 60)),
                         int(rng.integers(0, 256))])
    return int(c[0]), int(c[1]), int(c[2])


def draw_face(seed: int, index: int) -> tuple[Image.Image, dict[str, bool]]:
    """Image `index` of the dataset drawn with `seed`: (178x218 RGB image, its 40 labels)."""
    rng = np.random.default_rng([seed, index])
    a = _labels(rng)
    male, hair, beard = a["Male"], a["_hair"], a["_beard"]

    # background: a vertical gradient between two random colours
    top, bottom = (rng.integers(50, 210) + rng.integers(-35, 36, 3) for _ in range(2))
    t = np.linspace(0.0, 1.0, HEIGHT)[:, None, None]  # (H, 1, 1)
    bg = (top * (1 - t) + bottom * t).repeat(WIDTH, axis=1)  # (H, W, 3)

    layer = Image.new("RGBA", (WIDTH, HEIGHT), (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)
    s = rng.uniform(1.12, 1.38)  # faces fill the frame, as in CelebA's aligned crops
    cx = WIDTH / 2 + rng.uniform(-8, 8)
    cy = HEIGHT * 0.5 + rng.uniform(-8, 8)
    fw, fh = (80 if male else 68) * s, 94 * s
    face = (cx - fw / 2, cy - fh / 2, cx + fw / 2, cy + fh / 2)
    if a["Pale_Skin"]:
        skin = _jitter(rng, (246, 234, 228), 6)
    else:
        k = rng.uniform(0, 1)
        skin = tuple(int(lo * (1 - k) + hi * k) for lo, hi in zip((226, 178, 140), (92, 56, 36), strict=True))
    hair_rgb = _jitter(rng, _HAIR[hair]) if hair != "none" else None
    beard_rgb = hair_rgb or _jitter(rng, (40, 28, 22))

    # torso, neck, tie
    shirt = _jitter(rng, (int(rng.integers(70, 240)),) * 3, 30)  # muted: ties stand out
    d.ellipse((cx - 78 * s, cy + fh * 0.42, cx + 78 * s, cy + fh * 1.6), fill=shirt)
    d.rectangle((cx - fw * 0.2, cy + fh * 0.3, cx + fw * 0.2, cy + fh * 0.62), fill=skin)
    if a["Wearing_Necktie"]:
        tie = _jitter(rng, (205, 15, 25), 20) if rng.random() < 0.5 else _jitter(rng, (25, 35, 190), 20)
        y0 = cy + fh * 0.55
        d.polygon([(cx - 11 * s, y0), (cx + 11 * s, y0), (cx + 18 * s, HEIGHT), (cx - 18 * s, HEIGHT)],
                  fill=tie)
        d.rectangle((cx - 12 * s, y0 - 2, cx + 12 * s, y0 + 10 * s), fill=tie)

    # hair behind the face: long for women, a short cap for men
    if hair_rgb is not None:
        if male:
            d.ellipse((cx - fw / 2 - 5 * s, cy - fh / 2 - 13 * s, cx + fw / 2 + 5 * s, cy + fh * 0.05),
                      fill=hair_rgb)
        else:
            d.rounded_rectangle((cx - fw / 2 - 14 * s, cy - fh / 2 - 14 * s, cx + fw / 2 + 14 * s,
                                 cy + fh * 0.62), radius=int(30 * s), fill=hair_rgb)

    # the face: square jaw for men, oval for women
    if male:
        d.rounded_rectangle(face, radius=int(fw * 0.42), fill=skin)
    else:
        d.ellipse(face, fill=skin)
    if hair_rgb is not None:
        # bangs cover the forehead down to the eyebrows; otherwise a thin hairline
        d.chord(face, 198 if a["Bangs"] else 232, 342 if a["Bangs"] else 308, fill=hair_rgb)

    # beard first: mouth and mustache are drawn over it
    ym = cy + fh * 0.25
    mw = fw * 0.5
    if beard == "full":
        d.chord(face, 12, 168, fill=beard_rgb)
        d.rectangle((cx - fw / 2 + 2, cy + fh * 0.05, cx - fw / 2 + 9 * s, cy + fh * 0.2), fill=beard_rgb)
        d.rectangle((cx + fw / 2 - 9 * s, cy + fh * 0.05, cx + fw / 2 - 2, cy + fh * 0.2), fill=beard_rgb)
    elif beard == "goatee":
        d.rounded_rectangle((cx - mw * 0.3, ym + 5, cx + mw * 0.3, cy + fh / 2 - 1), radius=5,
                            fill=beard_rgb)

    # eyes, brows, nose
    ye = cy - fh * 0.08
    for side in (-1, 1):
        ex = cx + side * fw * 0.22
        d.ellipse((ex - 7 * s, ye - 4.5 * s, ex + 7 * s, ye + 4.5 * s), fill=(250, 250, 250))
        d.ellipse((ex - 3.5 * s, ye - 3.5 * s, ex + 3.5 * s, ye + 3.5 * s), fill=(40, 30, 25))
        d.line((ex - 8 * s, ye - 10 * s, ex + 8 * s, ye - 11 * s), fill=beard_rgb, width=3)
        if a["Eyeglasses"]:
            d.ellipse((ex - 15 * s, ye - 12 * s, ex + 15 * s, ye + 12 * s), fill=(45, 45, 55),
                      outline=(5, 5, 5), width=max(5, int(7 * s)))
    if a["Eyeglasses"]:
        d.line((cx - fw * 0.22 + 13 * s, ye, cx + fw * 0.22 - 13 * s, ye), fill=(5, 5, 5), width=6)
        d.line((cx - fw / 2 - 2, ye - 2, cx - fw * 0.22 - 13 * s, ye), fill=(5, 5, 5), width=6)
        d.line((cx + fw * 0.22 + 13 * s, ye, cx + fw / 2 + 2, ye - 2), fill=(5, 5, 5), width=6)
    nose = tuple(int(c * 0.8) for c in skin)
    d.line((cx, ye + 4 * s, cx - 4 * s, cy + fh * 0.12, cx + 3 * s, cy + fh * 0.13), fill=nose, width=3)

    # mouth: lipstick is bright red; smile = upward arc; open = dark hole
    lips = (_jitter(rng, (215, 15, 40), 15) if a["Wearing_Lipstick"]
            else tuple(int(c * 0.62) + 20 * (i == 0) for i, c in enumerate(skin)))
    if a["Mustache"]:
        d.rounded_rectangle((cx - mw * 0.55, ym - 19 * s, cx + mw * 0.55, ym - 8 * s), radius=3,
                            fill=beard_rgb)
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

    if a["Wearing_Hat"]:
        hat = _bright_colour(rng)
        d.rounded_rectangle((cx - fw / 2 - 4, cy - fh / 2 - 42 * s, cx + fw / 2 + 4, cy - fh * 0.3),
                            radius=int(10 * s), fill=hat)
        d.rectangle((cx - fw / 2 - 22 * s, cy - fh * 0.40, cx + fw / 2 + 22 * s, cy - fh * 0.28),
                    fill=hat)
        d.rectangle((cx - fw / 2, cy - fh * 0.49, cx + fw / 2, cy - fh * 0.42), fill=(10, 10, 10))

    layer = layer.rotate(rng.uniform(-8, 8), resample=Image.Resampling.BILINEAR, center=(cx, cy))
    img = Image.fromarray(bg.astype(np.uint8), "RGB").convert("RGBA")
    img.alpha_composite(layer)
    arr = np.asarray(img.convert("RGB"), dtype=np.float32)
    arr += rng.normal(0.0, rng.uniform(2.0, 9.0), arr.shape).astype(np.float32)
    out = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    return out, {k: v for k, v in a.items() if not k.startswith("_")}


def _draw_and_save(job: tuple[int, int, str]) -> list[int]:
    """Worker: draw image `index`, write it, return its 40 labels as -1/1."""
    seed, index, path = job
    img, labels = draw_face(seed, index)
    img.save(path, "JPEG", quality=90)
    return [1 if labels[name] else -1 for name in ATTRIBUTES]


def synthesize(out: str | Path, n: int = 2000, seed: int = 0, progress: bool = True) -> Path:
    """Draw `n` faces into `out` in CelebA's Kaggle layout and return `out`.

    Writes `img_align_celeba/img_align_celeba/000001.jpg...`, `list_attr_celeba.csv` (-1/1) and
    `list_eval_partition.csv` (first 80% train, next 10% val, last 10% test, like CelebA's
    ordering). The same (n, seed) gives byte-identical files.
    """
    from celebhpo.errors import DataError

    if n < 10:
        raise DataError(f"synthesize: n={n} is too small; ask for at least 10 images so every "
                        "split gets one")
    root = Path(out)
    image_dir = root / "img_align_celeba" / "img_align_celeba"
    try:
        image_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"{root}: cannot create the output folder ({e.strerror})") from e
    ids = [f"{i + 1:06d}.jpg" for i in range(n)]
    jobs = [(seed, i, str(image_dir / ids[i])) for i in range(n)]
    workers = min(os.cpu_count() or 1, 8, max(1, n // 100))
    if workers > 1:
        with get_context("fork").Pool(workers) as pool:
            it = pool.imap(_draw_and_save, jobs, chunksize=16)
            rows = list(_progress(it, n, progress))
    else:
        rows = list(_progress(map(_draw_and_save, jobs), n, progress))

    n_train, n_val = int(round(n * 0.8)), int(round(n * 0.1))
    parts = [0] * n_train + [1] * n_val + [2] * (n - n_train - n_val)
    # labels and partitions are written last, to a temp name: a half-drawn folder has no CSVs
    _write_text(root / "list_attr_celeba.csv", "image_id," + ",".join(ATTRIBUTES) + "\n" + "".join(
        f"{i}," + ",".join(map(str, r)) + "\n" for i, r in zip(ids, rows, strict=True)))
    _write_text(root / "list_eval_partition.csv", "image_id,partition\n" + "".join(
        f"{i},{p}\n" for i, p in zip(ids, parts, strict=True)))
    return root


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8", newline="\n")
    os.replace(tmp, path)


def _progress(it, total: int, enabled: bool):
    if not enabled:
        return it
    from tqdm import tqdm

    return tqdm(it, total=total, desc="drawing faces", unit="img")
