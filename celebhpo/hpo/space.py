"""The search space meets Optuna: samplers, pruners, one suggestion per `[space]` key, and a
grid study's queued trials.

Grid studies: `create_study(grid=True)` queues every grid point as a WAITING trial (in the
study file's order) tagged with its GridSampler `grid_id`. Workers only ever claim queued
trials, atomically, so each point runs exactly once however many workers share the study;
the grid is exhausted when the queue is empty and nothing is running.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import optuna

from celebhpo.config import Categorical, FloatRange, StudyConfig
from celebhpo.errors import ConfigError, StudyError

__all__ = ["QueuedGridSampler", "grid_trials", "make_pruner", "make_sampler", "suggest_params"]


class QueuedGridSampler(optuna.samplers.GridSampler):
    """GridSampler for a study whose grid points were queued at creation. Its `after_trial`
    calls `study.stop()`, which Optuna allows only inside `study.optimize`; celebhpo's worker
    loop runs trials itself and ends a grid study when its queue is empty."""

    def after_trial(self, study, trial, state, values) -> None:  # noqa: ANN001 - Optuna's
        return None


def make_sampler(cfg: StudyConfig, *, grid: bool, salt: int | None = None,
                 shared: bool = False) -> optuna.samplers.BaseSampler:
    """The study's sampler. Grid: GridSampler(cfg.grid(), seed) — every worker builds the same
    one. Others are seeded with `[study] seed`, mixed with `salt` (the worker's pid on shared
    storages) so that concurrent workers do not propose the same random trials. `shared`
    (a worker: it cannot know how many peers run) turns on TPE's constant liar, so that
    trials still running count as bad guesses instead of being proposed again."""
    seed = cfg.study.seed if salt is None else (cfg.study.seed * 1_000_003 + salt) % 2**32
    if grid or cfg.study.sampler == "grid":
        return QueuedGridSampler(cfg.grid(), seed=cfg.study.seed)
    if cfg.study.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed, constant_liar=shared)
    if cfg.study.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    if cfg.study.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    try:
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    except ImportError:
        raise StudyError(
            f"{cfg.source}: [study] sampler = 'cmaes' needs the cmaes package: pip install cmaes"
        ) from None


def make_pruner(cfg: StudyConfig) -> optuna.pruners.BasePruner:
    """The `[study] pruner`. Steps are epochs, counted from 1 as the user reads them:
    median/percentile `n_warmup_steps = k` means epochs 1..k are never pruned (Optuna skips
    pruning while `step < n_warmup_steps`, hence k + 1), and `n_startup_trials` trials must
    COMPLETE before any is pruned; successive halving/hyperband judge their first rung at
    epoch `min_resource` (1 = after the first epoch), the next at `min_resource *
    reduction_factor`, and so on."""
    s = cfg.study
    if s.n_warmup_steps < 0:
        raise ConfigError(f"{cfg.source}: [study] n_warmup_steps = {s.n_warmup_steps} must be "
                          ">= 0 (the number of first epochs that are never pruned)")
    try:
        return _pruner(cfg)
    except ValueError as e:  # Optuna's own range checks (n_startup_trials < 0, ...)
        raise ConfigError(f"{cfg.source}: [study] pruner = {s.pruner!r}: {e}") from None


def _pruner(cfg: StudyConfig) -> optuna.pruners.BasePruner:
    s = cfg.study
    warmup = s.n_warmup_steps + 1  # epochs 1..n_warmup_steps are never pruned
    if s.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=s.n_startup_trials,
                                           n_warmup_steps=warmup)
    if s.pruner == "percentile":
        return optuna.pruners.PercentilePruner(s.percentile, n_startup_trials=s.n_startup_trials,
                                               n_warmup_steps=warmup)
    if s.pruner == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=s.min_resource,
                                                      reduction_factor=s.reduction_factor)
    if s.pruner == "hyperband":
        max_resource: int | str = "auto" if "epochs" in cfg.space else cfg.train.epochs
        return optuna.pruners.HyperbandPruner(min_resource=s.min_resource,
                                              max_resource=max_resource,
                                              reduction_factor=s.reduction_factor)
    return optuna.pruners.NopPruner()


def suggest_params(trial: optuna.Trial, space: dict[str, Any]) -> dict[str, Any]:
    """One value per `[space]` key: the only place the search space meets Optuna."""
    params: dict[str, Any] = {}
    for key, dim in space.items():
        if isinstance(dim, Categorical):
            params[key] = trial.suggest_categorical(key, dim.choices)
        elif isinstance(dim, FloatRange):
            params[key] = trial.suggest_float(key, dim.low, dim.high, log=dim.log)
        else:
            params[key] = trial.suggest_int(key, dim.low, dim.high, step=dim.step)
    return params


def grid_trials(cfg: StudyConfig) -> list[optuna.trial.FrozenTrial]:
    """Every grid point as a WAITING trial, in the study file's order, tagged like
    GridSampler tags its own trials (`grid_id` into its seeded shuffle, `search_space`)."""
    grid = cfg.grid()
    sampler = make_sampler(cfg, grid=True)
    dists = {k: optuna.distributions.CategoricalDistribution(v) for k, v in grid.items()}
    search_space = {k: list(v) for k, v in sorted(grid.items())}
    # GridSampler's public sample_independent tells which point each grid_id stands for
    ids: dict[tuple[str, ...], int] = {}
    for grid_id in range(math.prod(len(v) for v in grid.values())):
        probe = optuna.trial.create_trial(state=optuna.trial.TrialState.WAITING,
                                          system_attrs={"grid_id": grid_id})
        point = tuple(repr(sampler.sample_independent(None, probe, k, dists[k])) for k in grid)
        ids[point] = grid_id
    trials = []
    for values in itertools.product(*grid.values()):
        params = dict(zip(grid, values, strict=True))
        trials.append(optuna.trial.create_trial(
            state=optuna.trial.TrialState.WAITING, params=params, distributions=dists,
            system_attrs={"grid_id": ids[tuple(repr(v) for v in values)],
                          "search_space": search_space},
        ))
    return trials
