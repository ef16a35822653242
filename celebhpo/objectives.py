"""What a study can ask of a trial: the metrics it is judged by, each with its direction,
and the constraints it must meet (`[study] metric` and `[study] constraints`).

- Epoch metrics are measured on validation after every epoch; the first one a study names
  picks the best epoch, early-stops and prunes (in a study of several metrics through
  hpo/shadow.py; a pruner needs one, as the best epoch does).
- Trial metrics are measured once per configuration, on the finished model: `gflops` (the
  cost of one image's forward, the same on every machine: what a front or a bound should use
  by default), `latency_ms` (ms per image at batch 1 on the trial's device, 1 CPU thread:
  only as good as the machine was quiet) and `params_m` (parameters in millions).
- A latency is noisy (`latency_noise`) when its spread (IQR / median) is over 20% or the
  measuring thread was on a core less than 90% of the wall time: measured again, then
  flagged in `study show`.
- A constraint is met when its value `violation` is <= 0 (Optuna's `constraints_func`
  convention); a value the trial never measured counts as not met.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from celebhpo._typed import suggest
from celebhpo.errors import ConfigError

__all__ = ["CONSTRAINTS", "EPOCH_METRICS", "MEASURED", "METRICS", "TRIAL_METRICS", "best_of",
           "better", "check_study", "describe", "direction_of", "feasible", "latency_noise",
           "violations"]

EPOCH_METRICS = {"val_loss": "minimize", "val_mean_acc": "maximize", "val_map": "maximize",
                 "val_balanced_acc": "maximize", "val_mean_acc_reliable": "maximize",
                 "val_worst_group_acc": "maximize"}
TRIAL_METRICS = {"latency_ms": "minimize", "params_m": "minimize", "gflops": "minimize"}
METRICS = {**EPOCH_METRICS, **TRIAL_METRICS}
# what a trial measures of its finished model (stored and logged): the trial metrics, and how
# far its latency can be trusted (training.latency)
MEASURED = (*TRIAL_METRICS, "latency_ms_b64", "latency_spread", "latency_cpu_share",
            "latency_threads")
# constraint key -> (the trial value it bounds, "max" = at most / "min" = at least)
CONSTRAINTS = {"max_params_m": ("params_m", "max"), "max_gflops": ("gflops", "max"),
               "max_latency_ms": ("latency_ms", "max"),
               "min_worst_group_acc": ("val_worst_group_acc", "min")}
LATENCY_MAX_SPREAD = 0.2  # IQR / median
# the measuring thread's CPU time / wall time (1 CPU thread): >= 0.97 on a quiet machine; a
# thread off its core for 10% shares caches and memory with whatever took it, and runs slower
LATENCY_MIN_CPU_SHARE = 0.9


def direction_of(metric: str) -> str:
    return METRICS[metric]


def better(a: float, b: float, direction: str) -> bool:
    """Whether value `a` beats `b` in `direction` ("minimize" or "maximize"): every "better"
    in celebhpo is this one. Strict, so of equals the one held first stays best. A NaN (say
    the mAP of a split with no positive) never beats anything, and any number beats a NaN."""
    if direction not in ("minimize", "maximize"):
        raise ValueError(f"direction must be 'minimize' or 'maximize', got {direction!r}")
    a, b = float(a), float(b)
    if math.isnan(a):
        return False
    return math.isnan(b) or (a < b if direction == "minimize" else a > b)


_T = TypeVar("_T")


def best_of(items: Iterable[_T], direction: str, key: Callable[[_T], float] = float) -> _T:
    """The best of `items` by `key` in `direction` (`better`): the first of ties. ValueError
    when there are none."""
    it = iter(items)
    try:
        best = next(it)
    except StopIteration:
        raise ValueError("best_of() of nothing") from None
    for item in it:
        if better(key(item), key(best), direction):
            best = item
    return best


def violations(values: dict[str, Any], constraints: dict[str, float]) -> dict[str, float]:
    """{constraint key: how far past its bound the trial is} (<= 0: met; 1.0 when the trial
    has no finite value for it)."""
    out = {}
    for key, bound in constraints.items():
        name, kind = CONSTRAINTS[key]
        value = values.get(name)
        if value is None or not math.isfinite(float(value)):
            out[key] = 1.0
        else:
            out[key] = float(value) - bound if kind == "max" else bound - float(value)
    return out


def feasible(values: dict[str, Any], constraints: dict[str, float]) -> bool:
    return all(v <= 0 for v in violations(values, constraints).values())


def latency_noise(figures: dict[str, Any]) -> str:
    """Why the latency in `figures` (a trial's user attrs, or training.latency's result) is
    not to be trusted: "spread 34%" and/or "on-CPU 61%" (of the wall time); "" when it is, or
    when nothing says (a trial from before these were measured)."""
    spread, share = figures.get("latency_spread"), figures.get("latency_cpu_share")
    why = []
    if spread is not None and float(spread) > LATENCY_MAX_SPREAD:
        why.append(f"spread {float(spread):.0%}")
    if share is not None and float(share) < LATENCY_MIN_CPU_SHARE:
        why.append(f"on-CPU {float(share):.0%}")
    return ", ".join(why)


def describe(constraints: dict[str, float]) -> str:
    """`max_params_m = 30, max_latency_ms = 4`"""
    return ", ".join(f"{k} = {v:g}" for k, v in constraints.items())


def check_study(study: Any, where: str) -> None:
    """Normalize and check `[study]`'s metric(s), constraints and slices in place (`study` is
    a config.StudySection): a list `metric` becomes `objectives` plus its first epoch metric.
    ConfigError, one line naming the key, when the combination cannot work."""
    if isinstance(study.metric, list):
        study.objectives, study.metric = list(study.metric), None
    if len(study.objectives) == 1:
        study.metric, study.objectives = study.objectives[0], []
    valid = METRICS if study.objectives else EPOCH_METRICS
    for m in study.objectives or [study.metric]:
        if not isinstance(m, str) or m not in valid:
            raise ConfigError(f"{where} metric = {m!r} is not one of "
                              f"{', '.join(map(repr, valid))}{suggest(m, valid)}")
    if study.objectives:
        _check_objectives(study, where)
    _check_constraints(study, where)


def _check_objectives(study: Any, where: str) -> None:
    objs = study.objectives
    if len(objs) > 3 or len(set(objs)) != len(objs):
        raise ConfigError(f"{where} metric = {objs} must name 2 or 3 different metrics")
    epoch = [m for m in objs if m in EPOCH_METRICS]
    if not epoch and study.pruner != "none":
        raise ConfigError(f"{where} pruner = {study.pruner!r} prunes on an epoch curve, and "
                          f"metric = {objs} has none ({', '.join(objs)} are measured once per "
                          f"trial); add a validation metric ({', '.join(EPOCH_METRICS)})")
    if not epoch:
        raise ConfigError(f"{where} metric = {objs} needs at least one validation metric "
                          f"({', '.join(EPOCH_METRICS)}) to pick each trial's best epoch")
    study.metric = epoch[0]
    if study.direction != "auto":
        raise ConfigError(f"{where} direction = {study.direction!r}: a study of several metrics "
                          "takes each metric's own direction; remove direction")
    if study.sampler == "cmaes":
        raise ConfigError(f"{where} sampler = 'cmaes' is single-objective; use 'tpe' or "
                          "'nsga2' for a study of several metrics")


def _check_constraints(study: Any, where: str) -> None:
    for key, value in study.constraints.items():
        if key not in CONSTRAINTS:
            raise ConfigError(f"{where} constraints: unknown constraint {key!r}"
                              f"{suggest(key, CONSTRAINTS)} (valid: {', '.join(CONSTRAINTS)})")
        if value <= 0 or (key == "min_worst_group_acc" and value > 1):
            rule = "in (0, 1]" if key == "min_worst_group_acc" else "> 0"
            raise ConfigError(f"{where} constraints.{key} = {value:g} must be {rule}")
    if study.constraints and study.sampler in ("random", "cmaes"):
        raise ConfigError(f"{where} sampler = {study.sampler!r} cannot use constraints "
                          f"({describe(study.constraints)}); use 'tpe' or 'nsga2', or 'grid' "
                          "(every point runs; the constraints decide what is exported)")
    wants = "val_worst_group_acc" in [*study.objectives, study.metric] or (
        "min_worst_group_acc" in study.constraints)
    if wants and not study.slices:
        raise ConfigError(f"{where} slices = [] but the worst-group accuracy is asked for "
                          '(metric or constraints); set slices, e.g. ["Male", "Young"]')
    if len(study.slices) > 4 or len(set(study.slices)) != len(study.slices):
        raise ConfigError(f"{where} slices = {study.slices} must name at most 4 different "
                          "attributes (2^4 groups)")
