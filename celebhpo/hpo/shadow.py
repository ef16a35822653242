"""Pruning a study of several metrics (issue 26). Optuna's `Trial.report` refuses a
multi-objective study, so its pruners never see one; celebhpo asks them through a *shadow*.

The study prunes on its epoch metric (`[study] metric`'s first metric with an epoch curve,
`StudySection.metric`; measured-once metrics such as gflops have none). Each epoch the trial's
curve of that metric is stored in its own user attr `curve` ({epoch: value}, the whole curve
rewritten, so a resumed trial's replay leaves it right), and a single-objective in-memory
study is built with that metric's direction, the study's own name and pruner
(space.make_pruner): every trial of the real study, under its own number, COMPLETE (value:
its value of that metric) or PRUNED with its curve, any other state as FAIL; the current
trial asked from the queue and its curve reported; `should_prune()` answers.

Successive halving and hyperband keep their rungs in a trial's system attrs
(`completed_rung_N`) and hyperband picks a trial's bracket from the study name and trial
number: the shadow carries both (the rungs a shadow wrote go to the real trial's user attr
`pruner_rungs`, and back into the next shadow), so every pruner judges as it would a study of
that metric alone. Only Optuna's public API is used.
"""

from __future__ import annotations

import math
from typing import Any

import optuna
from optuna.storages import InMemoryStorage
from optuna.trial import FrozenTrial, TrialState

from celebhpo.hpo.storage import optuna_quiet

__all__ = ["CURVE_ATTR", "RUNGS_ATTR", "ShadowPruner", "curve_of", "shadow_pruner"]

CURVE_ATTR = "curve"  # user attr: {epoch: value} of the pruned-on metric (None: not finite)
RUNGS_ATTR = "pruner_rungs"  # user attr: successive halving's completed_rung_N values
_RUNG = "completed_rung_"


def curve_of(trial: FrozenTrial) -> dict[int, float]:
    """A trial's stored curve as Optuna's intermediate values ({epoch: value}, NaN kept)."""
    stored = trial.user_attrs.get(CURVE_ATTR) or {}
    return {int(k): math.nan if v is None else float(v) for k, v in stored.items()}


def _storable(curve: dict[int, float]) -> dict[str, float | None]:
    return {str(k): v if math.isfinite(v) else None for k, v in sorted(curve.items())}


class ShadowPruner:
    """Asks `pruner` whether the real `trial` (of a study of several metrics) should stop,
    on its curve of the metric at `index` of the study's metrics, in `direction`."""

    def __init__(self, trial: optuna.Trial, pruner: optuna.pruners.BasePruner, index: int,
                 direction: str) -> None:
        self.trial, self.pruner = trial, pruner
        self.index, self.direction = index, direction
        self.curve: dict[int, float] = {}
        self.rungs: dict[str, float] = {}

    def report(self, value: float, epoch: int) -> None:
        """Keep the epoch's value and store the whole curve on the trial."""
        self.curve[epoch] = float(value)
        self.trial.set_user_attr(CURVE_ATTR, _storable(self.curve))

    def should_prune(self) -> bool:
        """The pruner's verdict on the curve so far; the rungs it recorded are stored."""
        shadow = self._shadow()
        me = shadow.ask()  # the one WAITING trial: this one, under its own number
        for epoch, value in sorted(self.curve.items()):
            me.report(value, epoch)
        verdict = me.should_prune()
        frozen = shadow.get_trials(deepcopy=False)[me.number]
        rungs = {k: v for k, v in frozen.system_attrs.items()
                 if k.startswith(_RUNG)}
        if rungs != self.rungs:
            self.rungs = rungs
            self.trial.set_user_attr(RUNGS_ATTR, rungs)
        return verdict

    def _shadow(self) -> optuna.Study:
        """The in-memory study: the real study's trials in number order, this one WAITING
        (ask() takes it, with its number and rungs)."""
        real = self.trial.study
        with optuna_quiet():  # Optuna logs each study it creates
            shadow = optuna.create_study(storage=InMemoryStorage(), study_name=real.study_name,
                                         direction=self.direction, pruner=self.pruner,
                                         sampler=optuna.samplers.RandomSampler(seed=0))
        trials = sorted(real.get_trials(deepcopy=False), key=lambda t: t.number)
        shadow.add_trials(self._copy(t) for t in trials)
        return shadow

    def _copy(self, t: FrozenTrial) -> FrozenTrial:
        """`t` as the shadow holds it: this trial WAITING with its rungs; a finished one with
        its curve and rungs; any other (running, waiting, failed) as FAIL with its rungs."""
        if t.number == self.trial.number:
            return optuna.trial.create_trial(state=TrialState.WAITING, system_attrs=self.rungs)
        rungs: dict[str, Any] = dict(t.user_attrs.get(RUNGS_ATTR) or {})
        if t.state == TrialState.COMPLETE:
            return optuna.trial.create_trial(value=t.values[self.index],
                                             intermediate_values=curve_of(t),
                                             system_attrs=rungs)
        if t.state == TrialState.PRUNED:
            return optuna.trial.create_trial(state=TrialState.PRUNED,
                                             intermediate_values=curve_of(t),
                                             system_attrs=rungs)
        return optuna.trial.create_trial(state=TrialState.FAIL, system_attrs=rungs)


def shadow_pruner(trial: optuna.Trial, objectives: list[str], metric: str, direction: str
                  ) -> ShadowPruner | None:
    """The shadow for `trial` of a study of several metrics (`objectives`) pruned on `metric`
    (in `direction`) by the study's pruner; None for one metric (Optuna prunes it itself) or
    for `pruner = "none"`."""
    pruner = trial.study.pruner
    if len(objectives) < 2 or isinstance(pruner, optuna.pruners.NopPruner):
        return None
    return ShadowPruner(trial, pruner, objectives.index(metric), direction)
