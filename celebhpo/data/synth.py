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
from PIL import Image
from tqdm import tqdm

from celebhpo._io import atomic_write
from celebhpo.data.faces import HAIR, paint_face
from celebhpo.data.layouts import ATTRIBUTES
from celebhpo.errors import DataError

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
        hair = str(rng.choice(list(HAIR), p=p))
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


def draw_face(seed: int, index: int) -> tuple[Image.Image, dict[str, bool]]:
    """Image `index` of the dataset drawn with `seed`: (178x218 RGB image, its 40 labels)."""
    rng = np.random.default_rng([seed, index])
    a = _labels(rng)  # first: the painting's random draws follow the labels'
    return paint_face(rng, a), {k: v for k, v in a.items() if not k.startswith("_")}


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
    atomic_write(root / "list_attr_celeba.csv", "image_id," + ",".join(ATTRIBUTES) + "\n" + "".join(
        f"{i}," + ",".join(map(str, r)) + "\n" for i, r in zip(ids, rows, strict=True)))
    atomic_write(root / "list_eval_partition.csv", "image_id,partition\n" + "".join(
        f"{i},{p}\n" for i, p in zip(ids, parts, strict=True)))
    return root


def _progress(it, total: int, enabled: bool):
    if not enabled:
        return it
    return tqdm(it, total=total, desc="drawing faces", unit="img")
