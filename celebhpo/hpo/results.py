"""What a study has found: its metric(s), the best trial (or the Pareto front of a study of
several metrics), trials counted by state, the leaderboard. Read-only: nothing here changes a
study.

"Better" is `objectives.better` in the study's direction (`direction`; the first metric's
in a study of several), and everything that ranks trials uses it. A study with `[study]
constraints` stores each trial's constraint values in Optuna (`Trial.set_constraint`); an
infeasible trial is never the best one nor on the front (`feasible`).
"""

from __future__ import annotations

import functools
import shlex
from collections.abc import Iterable

import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from celebhpo.data.quality import shown_name
from celebhpo.errors import StudyError, mask_url
from celebhpo.hpo.budget import pruned_only
from celebhpo.hpo.record import StudyRecord
from celebhpo.hpo.retry import DUPLICATE_OF, FAIL_REASON, GivenUp, given_up, rerun_of
from celebhpo.objectives import best_of, better, latency_noise

__all__ = ["STATE_ORDER", "best_trial", "direction", "feasible", "leaderboard", "metric_name",
           "metric_names", "pareto_board", "pareto_front", "require_best_trial", "state_counts"]

STATE_ORDER = {"COMPLETE": 0, "PRUNED": 1, "RUNNING": 2, "WAITING": 3, "FAIL": 4}


def metric_name(study: optuna.Study) -> str:
    """The study file's `[study] metric` (what a single-objective trial's value is; the
    epoch metric of a study of several), "value" if unknown."""
    record = StudyRecord.of(study)
    return record.metric if record else "value"


def metric_names(study: optuna.Study) -> list[str]:
    """What each of a trial's values is: `[study] metric`, or its list."""
    names = record.objectives if (record := StudyRecord.of(study)) else []
    return names if len(names) == len(study.directions) else [metric_name(study)]


def feasible(trial: FrozenTrial) -> bool:
    """Whether the trial meets the study's constraints (all its constraint values <= 0)."""
    return all(v <= 0 for v in trial.constraints.values())


def pareto_front(study: optuna.Study) -> list[FrozenTrial]:
    """The feasible COMPLETE trials no other feasible trial dominates, by trial number."""
    return sorted(study.best_trials, key=lambda t: t.number)


def direction(study: optuna.Study) -> str:
    """"minimize" or "maximize": the study's (its first metric's, in a study of several)."""
    return study.directions[0].name.lower()


def state_counts(trials: Iterable[FrozenTrial]) -> dict[str, int]:
    """Optuna state name -> number of `trials` in it (states with none are left out)."""
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    return counts


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """The best feasible COMPLETE trial by the study's direction, or None when none has
    completed (or met the constraints), or the study has several metrics."""
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if feasible(t)]
    if not complete or len(study.directions) != 1:
        return None
    return best_of(complete, direction(study), key=lambda t: t.value)


def require_best_trial(study: optuna.Study, storage: str, number: int | None = None
                       ) -> FrozenTrial:
    """Trial `number` (any COMPLETE trial), else `best_trial`; or one StudyError saying what
    the study holds and what to run: a study of several metrics has no single best (its
    front is listed), nor has a study whose completed trials all miss its constraints."""
    name = study.study_name
    if number is not None:
        return _chosen(study, number)
    if len(study.directions) != 1:
        front = ", ".join(f"trial {t.number} ({_values(study, t)})" for t in pareto_front(study))
        raise StudyError(f"study '{name}' has {len(study.directions)} metrics, so no single "
                         f"best trial; its Pareto front: {front or 'empty'}. Choose one with "
                         "`celebhpo export-best --trial N`")
    best = best_trial(study)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if best is None and complete:
        closest = min(complete, key=lambda t: sum(max(v, 0) for v in t.constraints.values()))
        missed = ", ".join(f"{k} by {v:.4g}" for k, v in closest.constraints.items() if v > 0)
        raise StudyError(
            f"no completed trial of study '{name}' meets its [study] constraints; the closest, "
            f"trial {closest.number}, misses {missed}. Relax the constraints (a new study), or "
            f"export that trial anyway with --trial {closest.number}")
    grid = best is None and bool((record := StudyRecord.of(study)) and record.grid)
    if best is None and (no_model := pruned_only(study.get_trials(deepcopy=False), grid, name)):
        raise StudyError(no_model)  # the real cause: `optimize` would only say it is done
    if best is None:
        counts = state_counts(study.get_trials(deepcopy=False))
        seen = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no trials"
        raise StudyError(
            f"study '{name}' in {mask_url(storage)} has no completed trial ({seen}); "
            f"run `celebhpo optimize --study {shlex.quote(name)}` first"
        )
    return best


def _chosen(study: optuna.Study, number: int) -> FrozenTrial:
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    t = trials.get(number)
    if t is None or t.state != TrialState.COMPLETE:
        done = sorted(n for n, t in trials.items() if t.state == TrialState.COMPLETE)
        what = "no such trial" if t is None else f"it is {t.state.name}"
        raise StudyError(f"--trial {number}: study '{study.study_name}' cannot export it "
                         f"({what}); completed trials: {', '.join(map(str, done)) or 'none'}")
    return t


def _values(study: optuna.Study, t: FrozenTrial) -> str:
    return ", ".join(f"{m} {v:.4g}" for m, v in zip(metric_names(study), t.values, strict=True))


def leaderboard(study: optuna.Study) -> pd.DataFrame:
    """Every trial, best first: COMPLETE by value, then PRUNED by their best reported value,
    then RUNNING, WAITING and FAIL. Columns: trial, state, the searched params, the value
    (one column per metric in a study of several, plus `pareto`: * on the front), the best
    epoch (by the study's metric) and its val_loss, val_mean_acc, val_map (less the metrics
    that are values), the mean accuracy over the 12 reliable attributes (headed
    `val_mean_acc_reliable12`, data.quality.shown_name, as a value column too) and the
    worst-group accuracy when the trials have them, latency, GFLOPs and size when measured,
    `latency_flag` when a latency stayed noisy after re-measuring (objectives.latency_noise),
    `feasible` when the study has constraints, epochs run, duration_s, note (a failure's reason, its
    re-run, or "given up after N attempts: ..." on a point's last attempt, retry.given_up)."""
    trials = study.get_trials(deepcopy=False)
    metrics = metric_names(study)
    multi = len(metrics) > 1
    retried = {rerun_of(t): t.number for t in trials  # a re-run queued twice ran as the first
               if rerun_of(t) is not None and DUPLICATE_OF not in t.user_attrs}
    gone = {t.number: GivenUp.of(t) for t in given_up(trials)}
    param_names = list(dict.fromkeys(k for t in trials for k in t.params))
    figures = [k for k in ("val_loss", "val_mean_acc", "val_map", "val_mean_acc_reliable",
                           "val_worst_group_acc", "latency_ms", "gflops", "params_m")
               if k not in metrics and (k in ("val_loss", "val_mean_acc", "val_map")
                                        or any(t.user_attrs.get(k) is not None for t in trials))]
    front = {t.number for t in pareto_front(study)} if multi else set()
    constrained = any(t.constraints for t in trials)
    noisy = {t.number: latency_noise(t.user_attrs) for t in trials}
    rows = []
    for t in trials:
        a = t.user_attrs
        rows.append({
            "trial": t.number,
            "state": t.state.name,
            **{k: t.params.get(k) for k in param_names},
            **dict(zip(metrics, _scores(study, t, metrics), strict=True)),
            **({"pareto": "*" if t.number in front else ""} if multi else {}),
            **({"feasible": _feasible_text(t)} if constrained else {}),
            "best_epoch": a.get("best_epoch"),
            **{k: a.get(k) for k in figures},
            **({"latency_flag": noisy[t.number]} if any(noisy.values()) else {}),
            "epochs": a.get("epochs_run"),
            "duration_s": a.get("duration_s"),
            "note": _note(t, retried, gone.get(t.number)),
        })
    rows = _sorted_rows(study, rows, metrics[0])
    columns = ["trial", "state", *param_names, *metrics, *(["pareto"] if multi else []),
               *(["feasible"] if constrained else []), "best_epoch", *figures,
               *(["latency_flag"] if any(noisy.values()) else []), "epochs", "duration_s", "note"]
    df = pd.DataFrame(rows, columns=columns).reset_index(drop=True).rename(columns=shown_name)
    # counts stay integers beside missing values (not 2.0 beside NaN)
    return df.astype({"best_epoch": "Int64", "epochs": "Int64"})


def pareto_board(study: optuna.Study) -> pd.DataFrame:
    """The leaderboard's rows of the Pareto front (a study of several metrics)."""
    if len(study.directions) == 1:
        best = best_trial(study)
        raise StudyError(f"study '{study.study_name}' has one metric ({metric_name(study)}), so "
                         "no front: its best trial is "
                         f"{best.number if best else 'not there yet'}; `study show` without "
                         "--pareto lists every trial")
    board = leaderboard(study)
    return board[board["pareto"] == "*"].reset_index(drop=True)


def _scores(study: optuna.Study, t: FrozenTrial, metrics: list[str]) -> list[float | None]:
    """A COMPLETE trial's values; a pruned one's best reported value (single metric)."""
    if t.state == TrialState.COMPLETE:
        return list(t.values)
    reported = list(t.intermediate_values.values())
    if len(metrics) == 1:
        return [best_of(reported, direction(study)) if reported else None]
    return [t.user_attrs.get(m) for m in metrics]


def _feasible_text(t: FrozenTrial) -> str:
    if not t.constraints:
        return ""
    return "yes" if feasible(t) else "no: " + ", ".join(
        k for k, v in t.constraints.items() if v > 0)


def _note(t: FrozenTrial, retried: dict[int, int], gone: GivenUp | None = None) -> str:
    if gone is not None:  # its point will not run again unless asked (--retry-given-up)
        return f"given up after {gone.attempts} attempts: {gone.reason}"
    note = t.user_attrs.get(FAIL_REASON, "") if t.state == TrialState.FAIL else ""
    if t.state == TrialState.PRUNED and t.user_attrs.get("pruned_at") is not None:
        note = f"pruned at epoch {t.user_attrs['pruned_at']}"
    if t.number in retried:
        note = (note or "worker lost") + f"; re-run as trial {retried[t.number]}"
    return note


def _sorted_rows(study: optuna.Study, rows: list[dict], metric: str) -> list[dict]:
    """By state (STATE_ORDER), trials that miss the constraints after those that meet them;
    within COMPLETE and PRUNED best value first (`better`), rows without a value last; ties by
    trial number."""
    how = direction(study)

    def compare(a: dict, b: dict) -> int:
        ka, kb = STATE_ORDER.get(a["state"], 5), STATE_ORDER.get(b["state"], 5)
        if ka != kb:
            return ka - kb
        fa, fb = (str(r.get("feasible", "")).startswith("no") for r in (a, b))
        if fa != fb:
            return 1 if fa else -1
        va, vb = (r[metric] if r["state"] in ("COMPLETE", "PRUNED") else None for r in (a, b))
        if (va is None) != (vb is None):
            return 1 if va is None else -1
        if va is not None and better(va, vb, how):
            return -1
        if va is not None and better(vb, va, how):
            return 1
        return a["trial"] - b["trial"]

    return sorted(rows, key=functools.cmp_to_key(compare))
