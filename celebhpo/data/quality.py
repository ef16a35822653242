"""How far CelebA's labels can be trusted, per attribute, from a published re-annotation.

The facts live in `attribute_quality.json` beside this module (with their source), read once:
- `noisy_attributes()`: attributes whose two independent annotators agreed about as often as
  chance (High_Cheekbones, Oval_Face, Pointy_Nose);
- `reliable_attributes()`: attributes the source rates at >= 95% agreement, as far as they
  were confirmed when the file was written (`reliable_confirmed()` says whether the list is
  complete);
- `label_quality(name)`: "reliable", "noisy" or "unrated".

`val_mean_acc_reliable` (and every `mean_acc_reliable`) is the mean accuracy over the
attributes `reliable_mask` selects: the reliable list when it is confirmed; until then all
attributes except the noisy ones (see `reliable_definition`). The shipped file is unconfirmed:
only No_Beard of the source's twelve >= 95% attributes was seen named.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import cache
from importlib import resources
from typing import Any

import numpy as np

__all__ = ["QUALITY_FILE", "QUALITY_SOURCE", "label_quality", "noisy_attributes",
           "quality_data", "reliable_attributes", "reliable_confirmed", "reliable_definition",
           "reliable_mask"]

QUALITY_FILE = "attribute_quality.json"
QUALITY_SOURCE = ("Wu, Bezold, Günther, Boult, King, Bowyer: Consistency and Accuracy of CelebA "
                  "Attribute Values, CVPR Workshops 2023, arXiv:2210.07356")


@cache
def quality_data() -> dict[str, Any]:
    """The data file as a dict (read once): source, confirmed, reliable, noisy, agreement."""
    text = resources.files("celebhpo.data").joinpath(QUALITY_FILE).read_text(encoding="utf-8")
    return json.loads(text)


def reliable_attributes() -> list[str]:
    return list(quality_data()["reliable"])


def noisy_attributes() -> list[str]:
    return list(quality_data()["noisy"])


def reliable_confirmed() -> bool:
    """Whether `reliable_attributes()` is the source's complete >= 95% list."""
    return bool(quality_data().get("confirmed", False))


def label_quality(name: str) -> str:
    """"reliable", "noisy" or "unrated" (an attribute the source's lists, as shipped, omit)."""
    if name in quality_data()["noisy"]:
        return "noisy"
    return "reliable" if name in quality_data()["reliable"] else "unrated"


def reliable_mask(attributes: Sequence[str]) -> np.ndarray:
    """(A,) bool: the attributes that `mean_acc_reliable` averages over (module docstring)."""
    names = [str(a) for a in attributes]
    if reliable_confirmed():
        keep = set(reliable_attributes())
        return np.array([a in keep for a in names], dtype=bool)
    drop = set(noisy_attributes())
    return np.array([a not in drop for a in names], dtype=bool)


def reliable_definition() -> str:
    """One line saying which attributes `mean_acc_reliable` averages over."""
    if reliable_confirmed():
        return ("mean accuracy over the attributes the source rates at least 95% annotator "
                "agreement: " + ", ".join(reliable_attributes()))
    return ("mean accuracy over all attributes except the noisy ones ("
            + ", ".join(noisy_attributes()) + "), whose annotators agreed about as often as "
            "chance; the source's full list of reliable attributes is not confirmed here")
