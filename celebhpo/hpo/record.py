"""The study record: what a celebhpo study stores beside Optuna, typed (re-exported by
studies.py, which writes it at `study create` and reads it back for every worker).

Optuna keeps it as the study's user attrs, one per field, so a worker needs only the study's
name and storage. This is the one place that knows their names; everything else reads
`StudyRecord.of(study)` (or gets one from `studies.open_study`).

The data fingerprint stored with a study (`data_fingerprint`: digests of its label and
partition files, its split subsets and decoding) tells a warm start (warm.py) whether two
studies saw the same data.

Imported by results.py as well as studies.py (which imports results): it imports neither.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import optuna

from celebhpo.config import DataConfig
from celebhpo.data.layouts import LAYOUTS, detect_layout
from celebhpo.errors import DataError

__all__ = ["FINGERPRINT", "StudyRecord", "data_difference", "data_fingerprint", "flat"]

# [data] keys beside the label files that decide which images, decoded how, a study sees
FINGERPRINT = ("train_size", "val_size", "test_size", "subset", "subset_seed", "image_size",
               "crop")


@dataclass(frozen=True)
class StudyRecord:
    """A celebhpo study's own settings, as `study create` stored them."""

    config: dict[str, Any]  # StudyConfig.to_dict(): data root absolute, effective name/sampler
    grid: bool = False  # its points were queued at creation (space.grid_trials)
    tracking_uri: str = ""  # without credentials: a worker brings its own
    # the MLflow experiment and parent run, made once at creation so workers never race to
    # create them; None with `[study] tracking = "off"`
    experiment_id: str | None = None
    parent_run_id: str | None = None
    study_key: str | None = None  # ties the parent run to this study, whatever its name
    # warm.data_fingerprint of [data] at creation: label/partition digests, subsets, decoding
    data_fingerprint: dict[str, Any] | None = None
    warm_start: dict[str, Any] | None = None  # WarmSummary.record(): the study copied from

    @classmethod
    def read(cls, attrs: Mapping[str, Any]) -> StudyRecord | None:
        """The record in a study's user attrs; None for a study celebhpo did not create (it
        has no stored config)."""
        if "config" not in attrs:
            return None
        return cls(**{f.name: attrs[f.name] for f in fields(cls) if f.name in attrs})

    @classmethod
    def of(cls, study: optuna.Study) -> StudyRecord | None:
        """`read` of an open study's user attrs."""
        return cls.read(study.user_attrs)

    def to_attrs(self) -> dict[str, Any]:
        """The user attrs that store it (`read` gives it back)."""
        return asdict(self)

    @property
    def metric(self) -> str:
        """`[study] metric`: a single-objective trial's value, the epoch metric of a study of
        several."""
        return str(self._study.get("metric") or "value")

    @property
    def objectives(self) -> list[str]:
        """`[study] objectives`: the metrics of a study of several ([] for one metric)."""
        return list(self._study.get("objectives") or [])

    @property
    def sampler(self) -> str:
        return str(self._study.get("sampler", "?"))

    @property
    def _study(self) -> dict[str, Any]:
        return self.config.get("study") or {}


def flat(d: Any, prefix: str = "") -> dict[str, Any]:
    """A stored config as `section.key` -> value (`[space]` kept whole)."""
    if not isinstance(d, dict):
        return {prefix.rstrip("."): d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) and k != "space"
                   else {f"{prefix}{k}": v})
    return out


def data_fingerprint(data: DataConfig) -> dict[str, Any]:
    """What makes two studies' figures comparable: a digest of the label and partition files
    (None when the root is not readable from here; the root's path then stands for them),
    which subset of each split, and how images are decoded (size, crop)."""
    files: dict[str, str | None] = {"labels": None, "partition": None}
    root = Path(data.root)
    try:
        attr, part, _ = LAYOUTS[detect_layout(root) if data.layout == "auto" else data.layout]
        files = {"labels": _digest(root / attr), "partition": _digest(root / part)}
    except (DataError, OSError, KeyError):
        pass
    return {**files, "root": str(data.root), **{k: getattr(data, k) for k in FINGERPRINT}}


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def data_difference(old: dict[str, Any], new: dict[str, Any], searched: set[str]) -> str:
    """"image_size 32 -> 16; labels file differs", or "" for the same data. The files are
    compared by digest when both were read, else by the root's path; a searched image size
    is each trial's param, not the study's."""
    read = all(fp.get(k) for fp in (old, new) for k in ("labels", "partition"))
    skip = ({"root"} if read else {"labels", "partition"}) | (
        {"image_size"} if "data.image_size" in searched else set())
    return "; ".join(f"{k} file differs" if k in ("labels", "partition") else
                     f"{k} {old.get(k)!r} -> {new.get(k)!r}"
                     for k in new if k not in skip and old.get(k) != new.get(k))
