"""The study record: what a celebhpo study stores beside Optuna, typed (re-exported by
studies.py, which writes it at `study create` and reads it back for every worker).

Optuna keeps it as the study's user attrs, one per field, so a worker needs only the study's
name and storage. This is the one place that knows their names; everything else reads
`StudyRecord.of(study)` (or gets one from `studies.open_study`).

Imported by results.py as well as studies.py (which imports results): it imports neither.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import optuna

__all__ = ["StudyRecord"]


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
