"""What a study has found: its metric, the best trial, trials counted by state, the
leaderboard. Read-only: nothing here changes a study.

"Better" is defined once, from the study's direction (`better`), and everything that ranks
trials uses it.
"""

from __future__ import annotations

import functools
import operator
import shlex
from collections.abc import Callable, Iterable

import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from celebhpo.errors import StudyError, mask_url

__all__ = ["STATE_ORDER", "best_trial", "better", "leaderboard", "metric_name",
           "require_best_trial", "state_counts"]

STATE_ORDER = {"COMPLETE": 0, "PRUNED": 1, "RUNNING": 2, "WAITING": 3, "FAIL": 4}


def metric_name(study: optuna.Study) -> str:
    """The study file's `[study] metric` (what the trial values are), "value" if unknown."""
    cfg = study.user_attrs.get("config") or {}
    return str((cfg.get("study") or {}).get("metric") or "value")


def better(study: optuna.Study) -> Callable[[float, float], bool]:
    """`better(a, b)`: whether value `a` beats `b` in the study's direction (ties do not)."""
    return operator.lt if study.direction == optuna.study.StudyDirection.MINIMIZE else operator.gt


def _ranked(study: optuna.Study, values: Iterable[float]) -> float:
    """The best of `values` in the study's direction."""
    return (min if better(study) is operator.lt else max)(values)


def state_counts(trials: Iterable[FrozenTrial]) -> dict[str, int]:
    """Optuna state name -> number of `trials` in it (states with none are left out)."""
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    return counts


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """The best COMPLETE trial by the study's direction, or None when none has completed."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return None
    best = complete[0]
    for t in complete[1:]:
        if better(study)(t.value, best.value):
            best = t
    return best


def require_best_trial(study: optuna.Study, storage: str) -> FrozenTrial:
    """`best_trial`, or one StudyError saying what the study holds and what to run."""
    name = study.study_name
    if len(study.directions) != 1:
        raise StudyError(f"study '{name}' has {len(study.directions)} objectives; export-best "
                         "needs a single-objective study")
    best = best_trial(study)
    if best is None:
        counts = state_counts(study.get_trials(deepcopy=False))
        seen = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no trials"
        raise StudyError(
            f"study '{name}' in {mask_url(storage)} has no completed trial ({seen}); "
            f"run `celebhpo optimize --study {shlex.quote(name)}` first"
        )
    return best


def leaderboard(study: optuna.Study) -> pd.DataFrame:
    """Every trial, best first: COMPLETE by value, then PRUNED by their best reported value,
    then RUNNING, WAITING and FAIL. Columns: trial, state, the searched params, the value,
    the best epoch (by the study's metric) and its val_loss, val_mean_acc, val_map (less the
    one that is the value), epochs run, duration_s, note."""
    trials = study.get_trials(deepcopy=False)
    metric = metric_name(study)
    retried = {n: t.number for t in trials for n in t.system_attrs.get("retry_history", [])[-1:]}
    param_names = list(dict.fromkeys(k for t in trials for k in t.params))
    figures = [k for k in ("val_loss", "val_mean_acc", "val_map") if k != metric]
    rows = []
    for t in trials:
        a = t.user_attrs
        if t.state == TrialState.COMPLETE:
            score = t.value
        else:
            reported = list(t.intermediate_values.values())
            score = _ranked(study, reported) if reported else None
        rows.append({
            "trial": t.number,
            "state": t.state.name,
            **{k: t.params.get(k) for k in param_names},
            metric: score,
            "best_epoch": a.get("best_epoch"),
            **{k: a.get(k) for k in figures},
            "epochs": a.get("epochs_run"),
            "duration_s": a.get("duration_s"),
            "note": _note(t, retried),
        })
    rows = _sorted_rows(study, rows, metric)
    columns = ["trial", "state", *param_names, metric, "best_epoch", *figures, "epochs",
               "duration_s", "note"]
    df = pd.DataFrame(rows, columns=columns).reset_index(drop=True)
    # counts stay integers beside missing values (not 2.0 beside NaN)
    return df.astype({"best_epoch": "Int64", "epochs": "Int64"})


def _note(t: FrozenTrial, retried: dict[int, int]) -> str:
    note = t.user_attrs.get("fail_reason", "") if t.state == TrialState.FAIL else ""
    if t.state == TrialState.PRUNED and t.user_attrs.get("pruned_at") is not None:
        note = f"pruned at epoch {t.user_attrs['pruned_at']}"
    if t.number in retried:
        note = (note or "worker lost") + f"; re-run as trial {retried[t.number]}"
    return note


def _sorted_rows(study: optuna.Study, rows: list[dict], metric: str) -> list[dict]:
    """By state (STATE_ORDER); within COMPLETE and PRUNED best value first (`better`), rows
    without a value last; ties by trial number."""
    is_better = better(study)

    def compare(a: dict, b: dict) -> int:
        ka, kb = STATE_ORDER.get(a["state"], 5), STATE_ORDER.get(b["state"], 5)
        if ka != kb:
            return ka - kb
        va, vb = (r[metric] if r["state"] in ("COMPLETE", "PRUNED") else None for r in (a, b))
        if (va is None) != (vb is None):
            return 1 if va is None else -1
        if va is not None and is_better(va, vb):
            return -1
        if va is not None and is_better(vb, va):
            return 1
        return a["trial"] - b["trial"]

    return sorted(rows, key=functools.cmp_to_key(compare))
