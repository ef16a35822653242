"""What a study keeps of its trials' finished models beyond their values: one latency per
configuration, and the checkpoint of the trial that comes closest to constraints nobody meets.

- `StudyLatencyCache`: training.latency's cache, kept in the study (a user attr per
  configuration, `latency/<key>`), so every worker of the study, on any machine, gives
  the same configuration the same figure, measured once: the front and a latency bound
  compare figures, not moments. A noisy figure is measured again by the next trial of that
  configuration (training.latency keeps the better one). A study-level store (not a file
  beside the data, not one per worker process) because the study is what every worker
  shares, whatever its storage.
- `closest_infeasible`: under `[study] checkpoints = "best"`, a trial that misses the
  constraints keeps its checkpoint while no completed trial meets them and none comes
  closer (the sum of the amounts missed, results.require_best_trial's "closest"), so the
  trial export-best then names (`--trial N`) can be exported.
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from typing import Any

import optuna
from optuna.trial import TrialState

from celebhpo.hpo.results import feasible
from celebhpo.objectives import violations

__all__ = ["LATENCY_ATTR", "StudyLatencyCache", "closest_infeasible"]

LATENCY_ATTR = "latency/"  # + the configuration's key (training.latency)


class StudyLatencyCache(MutableMapping[str, Any]):
    """configuration key -> its measured figures, in the study's user attrs."""

    def __init__(self, study: optuna.Study) -> None:
        self.study = study

    def __getitem__(self, key: str) -> dict[str, float]:
        return dict(self.study.user_attrs[LATENCY_ATTR + key])

    def __setitem__(self, key: str, figures: dict[str, float]) -> None:
        self.study.set_user_attr(LATENCY_ATTR + key, {k: float(v) for k, v in figures.items()})

    def __delitem__(self, key: str) -> None:
        raise TypeError("a study keeps its measured latencies (Optuna cannot delete a "
                        "study's user attr)")

    def __iter__(self) -> Iterator[str]:
        return (k[len(LATENCY_ATTR):] for k in self.study.user_attrs
                if k.startswith(LATENCY_ATTR))

    def __len__(self) -> int:
        return sum(1 for _ in self)


def closest_infeasible(study: optuna.Study, figures: dict[str, Any],
                       constraints: dict[str, float]) -> bool:
    """Whether a trial with `figures` misses `constraints` while no COMPLETE trial of `study`
    meets them and none misses them by less (ties keep theirs too)."""
    missed = violations(figures, constraints)
    total = sum(max(v, 0.0) for v in missed.values())
    if total <= 0:
        return False
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if feasible(t) or sum(max(v, 0.0) for v in t.constraints.values()) < total:
            return False
    return True
