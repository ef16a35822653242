"""Optuna studies: create one from a study config, open one for a worker, load and list them.

A study stores everything a worker needs beside Optuna, so `optimize` takes only a name and
a storage: its `StudyRecord` (record.py: the resolved config, grid, tracking URI without
credentials, the MLflow experiment and parent run made once, here, so workers never race to
create them, and the key that ties the parent run to this study). A grid study's points are
queued at creation (space.py).
"""

from __future__ import annotations

import json
import math
import os
import shlex
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path

import optuna
import pandas as pd

from celebhpo.config import StudyConfig
from celebhpo.data import check_split_sizes
from celebhpo.errors import ConfigError, StudyError, without_credentials
from celebhpo.hpo import warm as warm_starts
from celebhpo.hpo.outage import RetryPolicy
from celebhpo.hpo.record import StudyRecord, data_fingerprint, flat
from celebhpo.hpo.results import STATE_ORDER, best_trial, state_counts
from celebhpo.hpo.space import make_pruner, make_sampler
from celebhpo.hpo.storage import (
    DEFAULT_STORAGE,
    StorageSpec,
    as_spec,
    open_storage,
    optuna_quiet,
)
from celebhpo.hpo.warm import WarmStart, WarmSummary, add_trials, plan_warm_start
from celebhpo.objectives import describe
from celebhpo.tracking import resolve_tracking_uri, same_store, study_tracker

__all__ = ["CreateResult", "StudyRecord", "create_study", "list_studies", "load_study",
           "open_study"]


@dataclass
class CreateResult:
    name: str
    created: bool
    message: str
    warm: WarmSummary | None = None  # what --warm-start-from copied (report.format_warm_start)


# -- create ----------------------------------------------------------------------------------
def create_study(
    cfg: StudyConfig,
    *,
    storage: StorageSpec | str,
    grid: bool = False,
    name: str | None = None,
    replace: bool = False,
    tracking_uri: str | None = None,
    artifacts: str | None = None,
    warm_start: WarmStart | None = None,
) -> CreateResult:
    """Create the Optuna study, its MLflow experiment and parent run, and store the resolved
    config with it. The same config again is a no-op; another config under an existing name
    is a StudyError unless `replace` (which deletes the old study and its trials).
    `artifacts` is where a new MLflow experiment keeps its artifacts (required with a
    database tracking URI other than SQLite: see tracking.artifact_location). The study keeps
    the tracking URI without its credentials; workers bring their own. `warm_start`: begin
    with an earlier study's finished trials that fit (warm.py), its parent run linked."""
    spec = as_spec(storage)
    name = name or cfg.study.name
    if not name or "/" in name:
        raise StudyError(f"study name {name!r} must be non-empty and without '/'")
    grid = grid or cfg.study.sampler == "grid"
    stored = _resolved_config(cfg, grid, name)
    _check(stored, grid)
    config = json.loads(json.dumps(stored.to_dict()))
    uri = resolve_tracking_uri(tracking_uri)
    backend = open_storage(spec)
    old: StudyRecord | None = None
    n_old: int | None = None  # trials of the study of that name; None: there is none
    if name in optuna.get_all_study_names(storage=backend):
        existing = optuna.load_study(study_name=name, storage=backend)
        old, n_old = StudyRecord.of(existing), len(existing.get_trials(deepcopy=False))
        if not replace:
            return _unchanged(name, spec, old, config, grid, uri, n_old, warm_start)
    fingerprint = data_fingerprint(stored.data)
    # read before anything is made: a refused warm start leaves nothing behind
    warm = plan_warm_start(warm_start, stored, grid, spec, fingerprint) if warm_start else None
    # with [study] tracking = "off": no experiment, no parent run (both ids None)
    tracker = study_tracker(uri, enabled=stored.study.tracking == "on")
    tracker.check()  # one clear line now, not minutes of MLflow's own HTTP retries
    # a parent run of its own, keyed by this study's key (never by its name); made before the
    # old study is deleted, so a refused artifact location deletes nothing
    key = uuid.uuid4().hex
    experiment_id, parent_run_id = tracker.create_study_run(name, config, study_key=key,
                                                            storage=spec.url, artifacts=artifacts)
    if warm is not None:
        tracker.link_warm_start(**warm.link())  # the new parent run names the old one
    replaced = ""
    if n_old is not None:
        optuna.delete_study(study_name=name, storage=backend)
        replaced = f" (replaced the old one and its {n_old} trials)"
    _new_study(backend, spec, stored, StudyRecord(
        config=config, grid=grid, tracking_uri=without_credentials(uri),
        experiment_id=experiment_id, parent_run_id=parent_run_id, study_key=key,
        data_fingerprint=fingerprint, warm_start=warm and warm.record()), warm)
    if old is not None and old.parent_run_id not in (None, parent_run_id):
        tracker.supersede(old.parent_run_id)
    return CreateResult(name, True, _created(stored, grid, spec, replaced, tracker.describe()),
                        warm)


def _created(stored: StudyConfig, grid: bool, spec: StorageSpec, replaced: str,
             tracking: str) -> str:
    name = stored.study.name
    what = (f"a grid of {math.prod(map(len, stored.grid().values()))} points over "
            f"{', '.join(stored.space)}" if grid else
            f"{stored.study.sampler} search over {', '.join(stored.space) or 'nothing'}")
    return (f"created study '{name}'{replaced} in {spec.masked}: {what}, {_goal(stored)}, "
            f"pruner {stored.study.pruner}; {tracking}. Next: {_run_hint(name, spec)}")


def _check(stored: StudyConfig, grid: bool) -> None:
    """What would fail every worker, now: the data (split sizes, slice names, when it is
    reachable from here), the grid or the sampler, the pruner."""
    # now, not when the first trial decodes its images
    check_split_sizes(stored.data, stored.study.slices, f"{stored.source}: [study] slices")
    if grid:
        stored.grid()  # a range in [space] is a ConfigError naming the key
    else:
        make_sampler(stored, grid=False)  # e.g. cmaes without its package
    make_pruner(stored)  # bad pruner settings fail here, not in the first worker


def _goal(cfg: StudyConfig) -> str:
    """`val_mean_acc maximized` / `val_mean_acc maximized and latency_ms minimized`, and the
    constraints."""
    s = cfg.study
    goal = " and ".join(f"{m} {d}d" for m, d in zip(s.objective_names(),
                                                      s.objective_directions(), strict=True))
    return goal + (f" subject to {describe(s.constraints)}" if s.constraints else "")


def _unchanged(name: str, spec: StorageSpec, old: StudyRecord | None, config: dict, grid: bool,
               uri: str, n_old: int, warm_start: WarmStart | None) -> CreateResult:
    """A study of that name exists and is not to be replaced: a no-op when its config is
    this one (a warm start asked of it refused), else a StudyError saying what differs."""
    warm_starts.refuse_late_warm_start(name, old and old.warm_start, warm_start)
    if (old is not None and old.config == config and old.grid == grid
            and same_store(str(old.tracking_uri), uri)):
        return CreateResult(name, False, f"study '{name}' already exists in {spec.masked} "
                            f"with this config: nothing to do ({_run_hint(name, spec)})")
    raise StudyError(
        f"study '{name}' already exists in {spec.masked} with another config "
        f"({_difference(old, config, grid, uri)}); pass --replace to delete it and its "
        f"{n_old} trials, or --name to create a study beside it"
    )


def _new_study(backend: optuna.storages.BaseStorage, spec: StorageSpec, stored: StudyConfig,
               record: StudyRecord, warm: WarmSummary | None) -> optuna.Study:
    """The Optuna study with its record (user attrs), the `warm` start's copies and (grid)
    the queued points no copy has done, or nothing at all."""
    name = stored.study.name
    try:
        with optuna_quiet():
            study = optuna.create_study(storage=backend, study_name=name,
                                        directions=stored.study.objective_directions())
    except optuna.exceptions.DuplicatedStudyError:
        raise StudyError(f"study '{name}' was created in {spec.masked} by someone else just now; "
                         "run the command again") from None
    try:
        with warnings.catch_warnings():  # experimental in Optuna 5; names "Objective 0"
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(stored.study.objective_names())
        for key, value in record.to_attrs().items():
            study.set_user_attr(key, value)
        add_trials(study, stored, record.grid, warm)
    except BaseException:
        optuna.delete_study(study_name=name, storage=backend)  # nothing half-written
        raise
    return study


def _resolved_config(cfg: StudyConfig, grid: bool, name: str) -> StudyConfig:
    """The config as stored: paths absolute (workers start anywhere), the effective name and
    sampler."""
    stored = StudyConfig.from_dict(cfg.to_dict(), source=cfg.source)
    stored.fixed_by_set = dict(cfg.fixed_by_set)  # for config.grid's message
    stored.study.name = name
    if grid:
        stored.study.sampler = "grid"
    stored.data.root = str(Path(stored.data.root).expanduser().resolve())
    if stored.data.cache_dir:
        stored.data.cache_dir = str(Path(stored.data.cache_dir).expanduser().resolve())
    return stored


def _run_hint(name: str, spec: StorageSpec) -> str:
    """The command to run next, quoted so that it pastes into a shell as it is."""
    storage = "" if spec.url == DEFAULT_STORAGE else f" --storage {shlex.quote(spec.masked)}"
    return f"celebhpo optimize --study {shlex.quote(name)}{storage}"


def _difference(record: StudyRecord | None, config: dict, grid: bool, uri: str) -> str:
    if record is None:
        return "it was not created by celebhpo"
    old, new = flat(record.config), flat(config)
    diffs = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
             if old.get(k) != new.get(k)]
    if record.grid != grid:
        diffs.append(f"grid: {record.grid} -> {grid}")
    if not same_store(str(record.tracking_uri), uri):
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


def open_study(name: str | None, storage: StorageSpec | str, *, worker: bool = False,
               policy: RetryPolicy | None = None
               ) -> tuple[optuna.Study, StudyConfig, StudyRecord]:
    """(study, config, record) of a celebhpo study; the name may be omitted when the
    storage holds one study. `worker=True` opens server RDBs with the study's heartbeat and
    salts non-grid samplers with the pid (see make_sampler). `policy`: how long a lost
    database is retried, and whom to tell (outage.py; 60 s by default)."""
    spec = as_spec(storage)
    backend = open_storage(spec, create=False, policy=policy, wait=worker)
    name = _pick_name(optuna.get_all_study_names(storage=backend), name, spec)
    record = StudyRecord.read(backend.get_study_user_attrs(backend.get_study_id_from_name(name)))
    if record is None:
        raise StudyError(f"study '{name}' in {spec.masked} was not created by celebhpo (it has "
                         "no stored config); create one with: celebhpo study create STUDY_FILE")
    try:
        cfg = StudyConfig.from_dict(record.config, source=f"study '{name}' (stored config)")
    except ConfigError as e:
        raise StudyError(f"{e}; this celebhpo cannot read the stored config: recreate the study "
                         "with --replace") from None
    if worker and spec.heartbeat:
        backend = open_storage(spec, heartbeat_interval=cfg.study.heartbeat_interval,
                               grace_period=cfg.study.grace_period, policy=policy, wait=True)
    salt = os.getpid() if worker else None  # SQLite takes several workers too
    study = optuna.load_study(study_name=name, storage=backend, pruner=make_pruner(cfg),
                              sampler=make_sampler(cfg, grid=record.grid, salt=salt,
                                                   shared=worker))
    return study, cfg, record


def load_study(name: str | None, storage: StorageSpec | str
               ) -> tuple[optuna.Study, StudyConfig]:
    """The Optuna study and its stored config; `name` may be None when the storage holds
    exactly one study. Its record: `StudyRecord.of(study)`."""
    study, cfg, _ = open_study(name, storage)
    return study, cfg


def list_studies(storage: StorageSpec | str) -> pd.DataFrame:
    """One row per study: name, direction, sampler, trials by state, best value and trial."""
    backend = open_storage(storage, create=False)
    rows = []
    for name in sorted(optuna.get_all_study_names(storage=backend)):
        study = optuna.load_study(study_name=name, storage=backend)
        trials = study.get_trials(deepcopy=False)
        counts = {s: 0 for s in STATE_ORDER} | state_counts(trials)
        record = StudyRecord.of(study)
        best = best_trial(study)
        rows.append({
            "name": name,
            "direction": study.direction.name.lower(),
            "sampler": record.sampler if record else "?",
            "trials": len(trials),
            **{s.lower(): n for s, n in counts.items()},
            "best_value": best.value if best else None,
            "best_trial": best.number if best else None,
        })
    columns = ["name", "direction", "sampler", "trials", *(s.lower() for s in STATE_ORDER),
               "best_value", "best_trial"]
    return pd.DataFrame(rows, columns=columns)
