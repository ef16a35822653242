"""Optuna studies: create one from a study config, run its trials, read its leaderboard.

study.py knows nothing of pixels: a trial is `train.fit` with callbacks, tracking is
`tracking.Tracker`, storages are `storage.py`, and the worker loop lives in `workers.py`.

A study stores everything a worker needs as user attrs, so `optimize` takes only a name and
a storage: `config` (the resolved study config, data root made absolute), `grid`,
`tracking_uri`, `experiment_id` and `parent_run_id` (the MLflow experiment and parent run
made once, here, so workers never race to create them).

Grid studies: `create_study(grid=True)` queues every grid point as a WAITING trial (in the
study file's order) tagged with its GridSampler `grid_id`. Workers only ever claim queued
trials, atomically, so each point runs exactly once however many workers share the study;
the grid is exhausted when the queue is empty and nothing is running.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna

from celebhpo.config import Categorical, FloatRange, StudyConfig
from celebhpo.errors import ConfigError, StudyError
from celebhpo.hpo.results import STATE_ORDER, best_trial, leaderboard
from celebhpo.hpo.storage import (
    DEFAULT_STORAGE,
    StorageSpec,
    open_storage,
    optuna_quiet,
    parse_storage,
)

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "DEFAULT_STORAGE",
    "CreateResult",
    "OptimizeSummary",
    "create_study",
    "launch_workers",
    "leaderboard",
    "list_studies",
    "load_study",
    "make_pruner",
    "make_sampler",
    "optimize",
    "suggest_params",
]


@dataclass
class CreateResult:
    name: str
    created: bool
    message: str


@dataclass
class OptimizeSummary:
    study_name: str
    counts: dict[str, int]  # Optuna state name -> trials of the study in that state
    ran: list[int]  # numbers of the trials this call ran
    best_trial: int | None
    best_value: float | None
    best_params: dict[str, Any] = field(default_factory=dict)
    metric: str = "val_loss"
    stopped: str = ""  # why it stopped

    def __str__(self) -> str:
        states = ", ".join(f"{n} {s}" for s, n in self.counts.items() if n)
        lines = [f"study '{self.study_name}': {sum(self.counts.values())} trials ({states}); "
                 f"this worker ran {len(self.ran)}; stopped: {self.stopped}"]
        if self.best_trial is not None:
            params = " ".join(f"{k}={v}" for k, v in self.best_params.items())
            lines.append(f"best: trial {self.best_trial} {self.metric}={self.best_value:.4f} "
                         f"{params}")
        return "\n".join(lines)


# -- samplers, pruners, the search space ------------------------------------------------------
class QueuedGridSampler(optuna.samplers.GridSampler):
    """GridSampler for a study whose grid points were queued at creation. Its `after_trial`
    calls `study.stop()`, which Optuna allows only inside `study.optimize`; celebhpo's worker
    loop runs trials itself and ends a grid study when its queue is empty."""

    def after_trial(self, study, trial, state, values) -> None:  # noqa: ANN001 - Optuna's
        return None


def make_sampler(cfg: StudyConfig, *, grid: bool, salt: int | None = None
                 ) -> optuna.samplers.BaseSampler:
    """The study's sampler. Grid: GridSampler(cfg.grid(), seed) — every worker builds the same
    one. Others are seeded with `[study] seed`, mixed with `salt` (the worker's pid on shared
    storages) so that concurrent workers do not propose the same random trials."""
    seed = cfg.study.seed if salt is None else (cfg.study.seed * 1_000_003 + salt) % 2**32
    if grid or cfg.study.sampler == "grid":
        return QueuedGridSampler(cfg.grid(), seed=cfg.study.seed)
    if cfg.study.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if cfg.study.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    try:
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    except ImportError:
        raise StudyError(
            f"{cfg.source}: [study] sampler = 'cmaes' needs the cmaes package: pip install cmaes"
        ) from None


def make_pruner(cfg: StudyConfig) -> optuna.pruners.BasePruner:
    """The `[study] pruner`; steps are epochs, counted from 1."""
    s = cfg.study
    if s.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=s.n_startup_trials,
                                           n_warmup_steps=s.n_warmup_steps)
    if s.pruner == "percentile":
        return optuna.pruners.PercentilePruner(s.percentile, n_startup_trials=s.n_startup_trials,
                                               n_warmup_steps=s.n_warmup_steps)
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


def _grid_trials(cfg: StudyConfig) -> list[optuna.trial.FrozenTrial]:
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


# -- create ----------------------------------------------------------------------------------
def create_study(
    cfg: StudyConfig,
    *,
    storage: str,
    grid: bool = False,
    name: str | None = None,
    replace: bool = False,
    tracking_uri: str | None = None,
) -> CreateResult:
    """Create the Optuna study, its MLflow experiment and parent run, and store the resolved
    config with it. The same config again is a no-op; another config under an existing name
    is a StudyError unless `replace` (which deletes the old study and its trials)."""
    from celebhpo.tracking.client import Tracker, resolve_tracking_uri

    spec = parse_storage(storage)
    name = name or cfg.study.name
    if not name or "/" in name:
        raise StudyError(f"study name {name!r} must be non-empty and without '/'")
    grid = grid or cfg.study.sampler == "grid"
    stored = _resolved_config(cfg, grid, name)
    if grid:
        stored.grid()  # a range in [space] is a ConfigError naming the key
    else:
        make_sampler(stored, grid=False)  # e.g. cmaes without its package
    config = json.loads(json.dumps(stored.to_dict()))
    uri = resolve_tracking_uri(tracking_uri)
    backend = open_storage(storage)
    replaced = ""
    if name in optuna.get_all_study_names(storage=backend):
        old = optuna.load_study(study_name=name, storage=backend)
        attrs = old.user_attrs
        n_old = len(old.get_trials(deepcopy=False))
        same = (attrs.get("config") == config and attrs.get("grid") == grid
                and attrs.get("tracking_uri") == uri)
        if not replace:
            if same:
                return CreateResult(name, False, f"study '{name}' already exists in {spec.masked} "
                                    f"with this config: nothing to do ({_run_hint(name, spec)})")
            raise StudyError(
                f"study '{name}' already exists in {spec.masked} with another config "
                f"({_difference(attrs, config, grid, uri)}); pass --replace to delete it and its "
                f"{n_old} trials, or --name to create a study beside it"
            )
        tracker = Tracker(uri)
        tracker.check()
        optuna.delete_study(study_name=name, storage=backend)
        replaced = f" (replaced the old one and its {n_old} trials)"
    else:
        tracker = Tracker(uri)
        tracker.check()  # one clear line now, not minutes of MLflow's own HTTP retries
    experiment_id, parent_run_id = tracker.create_study_run(name, config, fresh=bool(replaced))
    try:
        with optuna_quiet():
            study = optuna.create_study(storage=backend, study_name=name,
                                        direction=stored.study.resolved_direction())
    except optuna.exceptions.DuplicatedStudyError:
        raise StudyError(f"study '{name}' was created in {spec.masked} by someone else just now; "
                         "run the command again") from None
    try:
        for key, value in {"config": config, "grid": grid, "tracking_uri": uri,
                           "experiment_id": experiment_id,
                           "parent_run_id": parent_run_id}.items():
            study.set_user_attr(key, value)
        if grid:
            study.add_trials(_grid_trials(stored))
    except BaseException:
        optuna.delete_study(study_name=name, storage=backend)  # nothing half-written
        raise
    what = (f"a grid of {len(study.trials)} points over {', '.join(stored.space)}" if grid else
            f"{stored.study.sampler} search over {', '.join(stored.space) or 'nothing'}")
    return CreateResult(name, True, (
        f"created study '{name}'{replaced} in {spec.masked}: {what}, {stored.study.metric} "
        f"{stored.study.resolved_direction()}d, pruner {stored.study.pruner}; MLflow experiment "
        f"{experiment_id} at {tracker.masked_uri}. Next: {_run_hint(name, spec)}"))


def _resolved_config(cfg: StudyConfig, grid: bool, name: str) -> StudyConfig:
    """The config as stored: paths absolute (workers start anywhere), the effective name and
    sampler."""
    stored = StudyConfig.from_dict(cfg.to_dict(), source=cfg.source)
    stored.study.name = name
    if grid:
        stored.study.sampler = "grid"
    stored.data.root = str(Path(stored.data.root).expanduser().resolve())
    if stored.data.cache_dir:
        stored.data.cache_dir = str(Path(stored.data.cache_dir).expanduser().resolve())
    return stored


def _run_hint(name: str, spec: StorageSpec) -> str:
    storage = "" if spec.url == DEFAULT_STORAGE else f" --storage {spec.masked}"
    return f"celebhpo optimize --study {name}{storage}"


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix.rstrip("."): d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) and k != "space"
                   else {f"{prefix}{k}": v})
    return out


def _difference(attrs: dict[str, Any], config: dict, grid: bool, uri: str) -> str:
    if "config" not in attrs:
        return "it was not created by celebhpo"
    old, new = _flat(attrs["config"]), _flat(config)
    diffs = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
             if old.get(k) != new.get(k)]
    if attrs.get("grid") != grid:
        diffs.append(f"grid: {attrs.get('grid')} -> {grid}")
    if attrs.get("tracking_uri") != uri:
        diffs.append("tracking URI differs")
    more = f", and {len(diffs) - 3} more" if len(diffs) > 3 else ""
    return "; ".join(diffs[:3]) + more


# -- open, load, list ------------------------------------------------------------------------
def _pick_name(names: list[str], name: str | None, spec: StorageSpec) -> str:
    if name is not None:
        if name not in names:
            there = f"studies there: {', '.join(sorted(names))}" if names else "it holds none"
            raise StudyError(f"study '{name}' not found in {spec.masked}; {there}")
        return name
    if len(names) == 1:
        return names[0]
    if not names:
        raise StudyError(f"no studies in {spec.masked}; create one with: celebhpo study create "
                         "STUDY_FILE" + ("" if spec.url == DEFAULT_STORAGE
                                         else f" --storage {spec.masked}"))
    raise StudyError(f"storage {spec.masked} holds {len(names)} studies "
                     f"({', '.join(sorted(names))}); pick one with --study NAME")


def open_study(name: str | None, storage: str, *, worker: bool = False
               ) -> tuple[optuna.Study, StudyConfig, dict[str, Any]]:
    """(study, config, user attrs) of a celebhpo study; the name may be omitted when the
    storage holds one study. `worker=True` opens server RDBs with the study's heartbeat and
    salts non-grid samplers with the pid (see make_sampler)."""
    import os

    spec = parse_storage(storage)
    backend = open_storage(storage, create=False)
    name = _pick_name(optuna.get_all_study_names(storage=backend), name, spec)
    attrs = backend.get_study_user_attrs(backend.get_study_id_from_name(name))
    if "config" not in attrs:
        raise StudyError(f"study '{name}' in {spec.masked} was not created by celebhpo (it has "
                         "no stored config); create one with: celebhpo study create STUDY_FILE")
    try:
        cfg = StudyConfig.from_dict(attrs["config"], source=f"study '{name}' (stored config)")
    except ConfigError as e:
        raise StudyError(f"{e}; this celebhpo cannot read the stored config: recreate the study "
                         "with --replace") from None
    if worker and spec.heartbeat:
        backend = open_storage(storage, heartbeat_interval=cfg.study.heartbeat_interval,
                               grace_period=cfg.study.grace_period)
    grid = bool(attrs.get("grid"))
    salt = os.getpid() if worker and spec.multiprocess else None
    study = optuna.load_study(study_name=name, storage=backend,
                              sampler=make_sampler(cfg, grid=grid, salt=salt),
                              pruner=make_pruner(cfg))
    return study, cfg, attrs


def load_study(name: str | None, storage: str) -> tuple[optuna.Study, StudyConfig]:
    """The Optuna study and its stored config; `name` may be None when the storage holds
    exactly one study."""
    study, cfg, _ = open_study(name, storage)
    return study, cfg


def list_studies(storage: str) -> pd.DataFrame:
    """One row per study: name, direction, sampler, trials by state, best value and trial."""
    import pandas as pd

    backend = open_storage(storage, create=False)
    rows = []
    for name in sorted(optuna.get_all_study_names(storage=backend)):
        study = optuna.load_study(study_name=name, storage=backend)
        trials = study.get_trials(deepcopy=False)
        counts = {s: 0 for s in STATE_ORDER}
        for t in trials:
            counts[t.state.name] = counts.get(t.state.name, 0) + 1
        cfg = study.user_attrs.get("config", {})
        best = best_trial(study)
        rows.append({
            "name": name,
            "direction": study.direction.name.lower(),
            "sampler": cfg.get("study", {}).get("sampler", "?"),
            "trials": len(trials),
            **{s.lower(): n for s, n in counts.items()},
            "best_value": best.value if best else None,
            "best_trial": best.number if best else None,
        })
    columns = ["name", "direction", "sampler", "trials", *(s.lower() for s in STATE_ORDER),
               "best_value", "best_trial"]
    return pd.DataFrame(rows, columns=columns)


# -- run -------------------------------------------------------------------------------------
def optimize(
    *,
    study_name: str | None = None,
    storage: str,
    n_trials: int | None = None,
    timeout: float | None = None,
    device: str | None = None,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> OptimizeSummary:
    """Run trials of a study until it holds `n_trials` trials in all (shared by every worker),
    the grid is exhausted, or `timeout` seconds have passed (no trial starts after that).
    Resumes a study that was interrupted. See workers.py for the rules on counting and on
    recovering trials of dead workers. Ctrl-C/SIGTERM fails and re-queues the running trial,
    then raises KeyboardInterrupt."""
    from celebhpo.hpo.worker import run_worker

    if n_trials is not None and n_trials < 1:
        raise StudyError(f"--trials {n_trials}: give a number >= 1")
    if timeout is not None and timeout <= 0:
        raise StudyError(f"--timeout {timeout}: give a number of seconds > 0")
    study, cfg, attrs = open_study(study_name, storage, worker=True)
    return run_worker(study, cfg, attrs, spec=parse_storage(storage), n_trials=n_trials,
                      timeout=timeout, device=device, progress=progress, echo=echo)


def launch_workers(devices: list[str], args: list[str]) -> int:
    """`optimize --devices 0,1,...`: one `celebhpo optimize` process per device, each with its
    own CUDA_VISIBLE_DEVICES, on a shared storage; returns the exit code (workers.py)."""
    from celebhpo.hpo.worker import launch_workers as _launch

    return _launch(devices, args)
