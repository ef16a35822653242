"""Warm start: a new study begins with an earlier study's finished trials (`study create
--warm-start-from OLD`), the wrapper around Optuna's `create_trial` / `add_trials` that its
users write themselves (optuna#1930, #3104).

`plan_warm_start` reads OLD (in the new study's storage, or another) before anything is
created and refuses, in one line, what cannot be copied at all: a study that is not there,
another number of metrics, data with another fingerprint (unless `allow_other_data`). Each
finished (COMPLETE / PRUNED) trial whose params fit the new `[space]` becomes a copy with its
values, intermediate values, times and user attrs (its constraints judged by the new study's
`[study] constraints`); the others are counted by reason. A copy is marked `warm_start_from`
= "OLD#number" and has no MLflow run of this study (the old run's id is `warm_start_run_id`):
it was trained in OLD, and export-best says so. Copies are real trials of the study, so its
sampler learns from them (TPE counts them toward its n_startup_trials) and a grid study
queues only the points no copy has done (`left_to_queue`).

The data is compared by the fingerprint stored with every study at create
(record.data_fingerprint; computed from the stored config for a study made before it was).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import FrozenTrial, TrialState

from celebhpo.config import Categorical, FloatRange, StudyConfig
from celebhpo.errors import ConfigError, StudyError
from celebhpo.hpo.owner import OWNER_KEYS
from celebhpo.hpo.record import FINGERPRINT, StudyRecord, data_difference, data_fingerprint, flat
from celebhpo.hpo.retry import DUPLICATE_OF, FAIL_REASON, RETRY_WANTED
from celebhpo.hpo.space import grid_trials
from celebhpo.hpo.storage import DEFAULT_STORAGE, StorageSpec, open_storage
from celebhpo.objectives import violations
from celebhpo.tracking import RUN_ID_ATTR

__all__ = ["KEY_MISSING", "NOT_FINISHED", "OTHER_METRIC", "OUT_OF_RANGE", "WARM_ATTR", "add_trials",
           "refuse_late_warm_start",
           "WARM_RUN_ATTR", "WarmStart", "WarmSummary", "left_to_queue",
           "plan_warm_start"]

WARM_ATTR = "warm_start_from"  # user attr of a copy: "OLD#number"
WARM_RUN_ATTR = "warm_start_run_id"  # ... and the MLflow run it had in OLD
# user attrs about a run of the old study or its worker, not about the trial's result
_NOT_COPIED = (RUN_ID_ATTR, *OWNER_KEYS, RETRY_WANTED, DUPLICATE_OF, FAIL_REASON, "retry_of")
OUT_OF_RANGE, KEY_MISSING = "out of range", "key missing"
OTHER_METRIC, NOT_FINISHED = "different metric", "not finished"


@dataclass(frozen=True)
class WarmStart:
    """What `study create --warm-start-from` asks for."""

    study: str
    storage: StorageSpec | None = None  # None: the new study's storage
    allow_other_data: bool = False


@dataclass
class WarmSummary:
    """What a warm start took from OLD and what it left out (report.format_warm_start)."""

    source: str
    storage: str  # masked
    copied: dict[str, int] = field(default_factory=dict)  # state name -> copies
    left_out: dict[str, list[str]] = field(default_factory=dict)  # reason -> "trial 3: lr=0.3"
    other_data: str = ""  # how OLD's data differs, copied anyway (allow_other_data)
    other_settings: str = ""  # fixed settings (not searched) that differ, a note
    grid_done: int | None = None  # grid points a copy has done (a grid study)
    grid_queued: int | None = None  # ... and the points queued to run
    parent_run_id: str | None = None  # OLD's parent run, which the new one links to
    experiment_id: str | None = None
    tracking_uri: str = ""
    trials: list[FrozenTrial] = field(default_factory=list, repr=False)  # the copies

    def record(self) -> dict[str, Any]:
        """StudyRecord.warm_start: where the copies came from (export-best names it)."""
        return {"study": self.source, "storage": self.storage,
                "parent_run_id": self.parent_run_id, "copied": len(self.trials)}

    def link(self) -> dict[str, Any]:
        """The arguments of the tracker's `link_warm_start`."""
        return {"source": self.source, "parent_run_id": self.parent_run_id,
                "experiment_id": self.experiment_id, "tracking_uri": self.tracking_uri,
                "copied": len(self.trials)}


def plan_warm_start(ws: WarmStart, stored: StudyConfig, grid: bool, spec: StorageSpec,
                    fingerprint: dict[str, Any]) -> WarmSummary:
    """The copies of OLD's trials that fit the new study (`stored`, `grid`) and why the
    others do not; a StudyError (one line) for an OLD that cannot be copied at all."""
    old_spec = ws.storage or spec
    old, record = _open_old(ws.study, old_spec)
    names, dirs = stored.study.objective_names(), stored.study.objective_directions()
    old_names = record.objectives or [record.metric]
    old_dirs = [d.name.lower() for d in old.directions]
    if len(old_dirs) != len(dirs):
        raise StudyError(
            f"--warm-start-from {ws.study}: that study ranks trials by {len(old_dirs)} "
            f"metric(s) ({', '.join(old_names)}), this one by {len(dirs)} ({', '.join(names)}); "
            "a warm start needs studies of the same number of metrics")
    old_cfg = _old_config(record, ws.study)
    summary = WarmSummary(ws.study, old_spec.masked, parent_run_id=record.parent_run_id,
                          experiment_id=record.experiment_id,
                          tracking_uri=record.tracking_uri)
    summary.other_data = data_difference(record.data_fingerprint
                                          or data_fingerprint(old_cfg.data), fingerprint,
                                          set(old_cfg.space) | set(stored.space))
    if summary.other_data and not ws.allow_other_data:
        raise StudyError(
            f"--warm-start-from {ws.study}: that study was trained on other data "
            f"({summary.other_data}), so its values are not comparable with this study's; "
            "pass --allow-other-data to copy its trials anyway")
    summary.other_settings = _settings_difference(old_cfg, stored)
    space = _distributions(stored, grid)
    same_metric = old_names == names and old_dirs == dirs
    for t in old.get_trials(deepcopy=False):
        params = _fit(t, space, same_metric)
        if isinstance(params, tuple):
            summary.left_out.setdefault(params[0], []).append(f"trial {t.number}{params[1]}")
            continue
        summary.trials.append(_copy(t, params, space, ws.study, stored.study.constraints))
        summary.copied[t.state.name] = summary.copied.get(t.state.name, 0) + 1
    return summary


def _open_old(name: str, spec: StorageSpec) -> tuple[optuna.Study, StudyRecord]:
    try:
        backend = open_storage(spec, create=False)
        names = optuna.get_all_study_names(storage=backend)
    except StudyError as e:
        raise StudyError(f"--warm-start-from {name}: {e}") from None
    if name not in names:
        there = f"studies there: {', '.join(sorted(names))}" if names else "it holds none"
        raise StudyError(f"--warm-start-from {name}: no study '{name}' in {spec.masked} "
                         f"({there}); pass --storage-of-old URL for a study in another storage")
    old = optuna.load_study(study_name=name, storage=backend)
    record = StudyRecord.of(old)
    if record is None:
        raise StudyError(f"--warm-start-from {name}: study '{name}' in {spec.masked} was not "
                         "created by celebhpo (it has no stored config)")
    return old, record


def _old_config(record: StudyRecord, name: str) -> StudyConfig:
    try:
        return StudyConfig.from_dict(record.config, source=f"study '{name}' (stored config)")
    except ConfigError as e:
        raise StudyError(f"--warm-start-from {name}: {e}") from None


def _settings_difference(old: StudyConfig, new: StudyConfig) -> str:
    """The settings neither study searches that differ (`train.epochs 1 -> 2`), at most 3."""
    keep = {"train", "data"}
    skip = {f"data.{k}" for k in (*FINGERPRINT, "root", "cache_dir", "layout")}
    a = flat({k: v for k, v in old.to_dict().items() if k in keep})
    b = flat({k: v for k, v in new.to_dict().items() if k in keep})
    searched = {k if "." in k else f"train.{k}" for k in (*old.space, *new.space)}
    diffs = [f"{k} {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b))
             if k not in skip | searched and a.get(k) != b.get(k)]
    return "; ".join(diffs[:3]) + (f" and {len(diffs) - 3} more" if len(diffs) > 3 else "")


def _distributions(cfg: StudyConfig, grid: bool) -> dict[str, BaseDistribution]:
    """Each `[space]` key's distribution as the new study's trials will have it (a grid's
    lists as space.grid_trials queues them; else as space.suggest_params suggests)."""
    if grid:
        return {k: CategoricalDistribution(v) for k, v in cfg.grid().items()}
    out: dict[str, BaseDistribution] = {}
    for key, dim in cfg.space.items():
        if isinstance(dim, Categorical):
            out[key] = CategoricalDistribution(dim.choices)
        elif isinstance(dim, FloatRange):
            out[key] = FloatDistribution(dim.low, dim.high, log=dim.log)
        else:
            out[key] = IntDistribution(dim.low, dim.high, step=dim.step)
    return out


_NO = object()


def _in(dist: BaseDistribution, v: Any) -> Any:
    """`v` as a value of `dist` (a categorical's own choice), or _NO."""
    number = isinstance(v, int | float) and not isinstance(v, bool)
    if isinstance(dist, CategoricalDistribution):
        return next((c for c in dist.choices
                     if c == v and isinstance(c, bool) == isinstance(v, bool)), _NO)
    if not number or not dist.low <= v <= dist.high:
        return _NO
    if isinstance(dist, FloatDistribution):
        return float(v)
    step = dist.step  # IntDistribution
    return int(v) if float(v).is_integer() and (int(v) - dist.low) % step == 0 else _NO


def _fit(t: FrozenTrial, space: dict[str, BaseDistribution], same_metric: bool
         ) -> dict[str, Any] | tuple[str, str]:
    """The copy's params, or (reason, detail) why `t` is left out."""
    if t.state not in (TrialState.COMPLETE, TrialState.PRUNED):
        return NOT_FINISHED, f" ({t.state.name})"
    if not same_metric:
        return OTHER_METRIC, ""
    keys = sorted(set(space) ^ set(t.params))
    if keys:
        return KEY_MISSING, f": {', '.join(keys)}"
    params = {k: _in(space[k], t.params[k]) for k in space}
    bad = [f"{k}={t.params[k]!r}" for k, v in params.items() if v is _NO]
    return (OUT_OF_RANGE, f": {', '.join(bad)}") if bad else params


def _copy(t: FrozenTrial, params: dict[str, Any], space: dict[str, BaseDistribution],
          source: str, constraints: dict[str, float]) -> FrozenTrial:
    """`t` as a trial of the new study: its values, intermediate values, times and result
    attrs; marked as a copy; constraints judged by the new study's."""
    attrs = {k: v for k, v in t.user_attrs.items() if k not in _NOT_COPIED}
    attrs[WARM_ATTR] = f"{source}#{t.number}"
    if t.user_attrs.get(RUN_ID_ATTR):
        attrs[WARM_RUN_ATTR] = t.user_attrs[RUN_ID_ATTR]
    complete = t.state == TrialState.COMPLETE
    copy = optuna.trial.create_trial(
        state=t.state, values=t.values, params=params,
        distributions={k: space[k] for k in params}, user_attrs=attrs,
        intermediate_values=dict(t.intermediate_values),
        constraints=violations(t.user_attrs, constraints) if complete and constraints
        else None)
    copy.datetime_start, copy.datetime_complete = t.datetime_start, t.datetime_complete
    return copy


def left_to_queue(points: list[FrozenTrial], copies: list[FrozenTrial]) -> list[FrozenTrial]:
    """The grid points (space.grid_trials) that no copy has done."""
    done = {_key(c.params) for c in copies}
    return [p for p in points if _key(p.params) not in done]


def _key(params: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, repr(v)) for k, v in params.items()))


def add_trials(study: optuna.Study, cfg: StudyConfig, grid: bool, warm: WarmSummary | None
               ) -> None:
    """A new study's trials: the warm start's copies, then (grid) the points they left."""
    copies = warm.trials if warm is not None else []
    study.add_trials(copies)
    if grid:
        points = grid_trials(cfg)
        study.add_trials(queued := left_to_queue(points, copies))
        if warm is not None:
            warm.grid_done, warm.grid_queued = len(points) - len(queued), len(queued)


def trained_elsewhere(study: optuna.Study, trial: FrozenTrial) -> str:
    """export-best's line for a warm start's copy (it has no run or checkpoint in this
    study: where it was trained and the command that exports it there); "" for another."""
    origin = str(trial.user_attrs.get(WARM_ATTR) or "")
    if not origin:
        return ""
    source, _, number = origin.rpartition("#")
    record = StudyRecord.of(study)
    old = (record.warm_start if record else None) or {}
    storage = old.get("storage") if old.get("study") == source else DEFAULT_STORAGE
    there = "" if storage == DEFAULT_STORAGE else f" --storage {shlex.quote(storage)}"
    return (f"trial {trial.number} of study '{study.study_name}' is a copy of trial {number} of "
            f"study '{source}' (study create --warm-start-from) and was trained there, so this "
            f"study has no checkpoint of it; export it from there: celebhpo export-best --study "
            f"{shlex.quote(source)} --trial {number}{there} --out DIR (or a trial trained here "
            "with --trial N)")


def refuse_late_warm_start(name: str, had: dict[str, Any] | None, warm: WarmStart | None
                           ) -> None:
    """A warm start fills a study it creates: asked of study `name` that exists (and whose
    record's warm start, `had`, was not from that study) it would be ignored; say so."""
    if warm is None or (had or {}).get("study") == warm.study:
        return
    raise StudyError(f"study '{name}' already exists, and --warm-start-from {warm.study} copies "
                     "trials only into a study it creates: pass --replace to create it again "
                     "from those trials, or --name to create a study beside it")
