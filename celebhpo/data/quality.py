"""How far CelebA's labels can be trusted, per attribute, from a published re-annotation.

The facts live in `attribute_quality.json` beside this module (with their source), read once;
they are the figures of `celeba_label_agreement.csv` (also beside it, with its notes in
`celeba_label_agreement.md`): for each of the 40 attributes, on how many of the same 1,000
images two independent annotators disagreed (the paper's Table 1, as transcribed), and its
band (BANDS):
- `agreement(name)`: 1 - disagreements / 1000 (None for a name the source does not rate);
- `agreement_band(name)` = `label_quality(name)`: "reliable" (>= 95% agreement: the
  paper's 12), "moderate" (85-95%), "low" (< 85%), "chance" (High_Cheekbones, Oval_Face,
  Pointy_Nose: about 50%), or "unrated" (not an attribute the source rates);
- `reliable_attributes()`: the 12; `noisy_attributes()`: the three of the chance band;
- `select_attributes`: a band or attribute names (`evaluate --attributes reliable`) as the
  model's attribute names, in its order.

`val_mean_acc_reliable` (and every `mean_acc_reliable`) is the mean accuracy over the
reliable attributes that are present (`reliable_mask`). That key stays in study files and in
the JSON celebhpo writes; tables people read and MLflow's metric names say
`val_mean_acc_reliable12` (`shown_name`; `stored_name` undoes it). The file says `"confirmed": true`: its reliable list is
the paper's complete one. Consistent labels are not always correct (the note in the file).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import cache
from importlib import resources
from typing import Any

import numpy as np

from celebhpo.errors import ConfigError, did_you_mean

__all__ = ["BANDS", "QUALITY_FILE", "QUALITY_SOURCE", "RELIABLE12", "agreement",
           "agreement_band", "label_quality", "noisy_attributes", "quality_data",
           "reliable_attributes", "reliable_confirmed", "reliable_definition", "reliable_mask",
           "select_attributes", "shown_name", "stored_name"]

QUALITY_FILE = "attribute_quality.json"
QUALITY_SOURCE = ("Wu, Bezold, Günther, Boult, King, Bowyer: Consistency and Accuracy of CelebA "
                  "Attribute Values, CVPR Workshops 2023, arXiv:2210.07356")
BANDS = ("reliable", "moderate", "low", "chance")  # most to least agreement
RELIABLE12 = "reliable12"  # the name mean_acc_reliable is shown and logged under
_RELIABLE = "mean_acc_reliable"


@cache
def quality_data() -> dict[str, Any]:
    """The data file as a dict (read once): source, confirmed, bands, reliable, noisy, and
    per attribute its disagreements_per_1000, agreement and band."""
    text = resources.files("celebhpo.data").joinpath(QUALITY_FILE).read_text(encoding="utf-8")
    return json.loads(text)


def reliable_attributes() -> list[str]:
    return list(quality_data()["reliable"])


def noisy_attributes() -> list[str]:
    """The chance band: annotators agreed about as often as a coin would."""
    return list(quality_data()["noisy"])


def reliable_confirmed() -> bool:
    """Whether `reliable_attributes()` is the source's complete >= 95% list."""
    return bool(quality_data().get("confirmed", False))


def agreement(name: str) -> float | None:
    """The share of the source's 1,000 images on which its two annotators agreed."""
    row = quality_data()["attributes"].get(str(name))
    return None if row is None else float(row["agreement"])


def agreement_band(name: str) -> str:
    """One of BANDS, or "unrated" for a name the source does not rate."""
    row = quality_data()["attributes"].get(str(name))
    return "unrated" if row is None else str(row["band"])


def label_quality(name: str) -> str:
    """The per-class report's and the model card's `label_quality`: `agreement_band`."""
    return agreement_band(name)


def reliable_mask(attributes: Sequence[str]) -> np.ndarray:
    """(A,) bool: the attributes that `mean_acc_reliable` averages over (the reliable 12)."""
    keep = set(reliable_attributes())
    return np.array([str(a) in keep for a in attributes], dtype=bool)


def shown_name(key: str) -> str:
    """The name people and MLflow see for a metric key: `val_mean_acc_reliable` ->
    `val_mean_acc_reliable12` (the study file, metrics.json and model_card.json keep the
    key); any other key as it is."""
    return key.removesuffix("reliable") + RELIABLE12 if key.endswith(_RELIABLE) else key


def stored_name(name: str) -> str:
    """The metric key of a `shown_name`: `val_mean_acc_reliable12` -> `val_mean_acc_reliable`."""
    return name.removesuffix("12") if name.endswith(_RELIABLE + "12") else name


def reliable_definition() -> str:
    """One line saying which attributes `mean_acc_reliable` averages over."""
    return ("mean accuracy over the attributes the source rates at least 95% annotator "
            "agreement: " + ", ".join(reliable_attributes()))


def select_attributes(spec: str, attributes: Sequence[str], key: str = "--attributes"
                      ) -> list[str]:
    """The names of `attributes` that `spec` picks, in their order: comma-separated bands
    (BANDS: every attribute of that band) and attribute names. ConfigError naming `key`
    (with a did-you-mean) for an unknown word, or when nothing is picked."""
    names = [str(a) for a in attributes]
    words = [w.strip() for w in str(spec).split(",") if w.strip()]
    if not words:
        raise ConfigError(f"{key}: give a band ({', '.join(BANDS)}) or attribute names, "
                          "comma-separated")
    unknown = [w for w in words if w not in BANDS and w not in names]
    if unknown:
        close = did_you_mean(unknown[0], [*BANDS, *names])
        hint = (f"did you mean '{close[0]}'?" if close else
                f"use a band ({', '.join(BANDS)}) or names from: {', '.join(names)}")
        raise ConfigError(f"{key}: {unknown[0]!r} is neither a band nor an attribute of the "
                          f"model; {hint}")
    picked = [a for a in names if a in words or agreement_band(a) in words]
    if not picked:
        raise ConfigError(f"{key} {spec}: none of the model's {len(names)} attributes is in "
                          "that band; pick another band or name attributes")
    return picked
