"""The parent run's summaries, refreshed after each trial: leaderboard.csv, the attribute x
trial F1 heatmap, Optuna's plots (summary/*.png and one offline summary/report.html), the
best trial's metrics and the parent's status."""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from mlflow.entities import Metric

from celebhpo.objectives import best_of
from celebhpo.tracking import plots
from celebhpo.tracking.client import Tracker, one_line
from celebhpo.tracking.names import STUDY_BEST_PREFIX, final_run_name
from celebhpo.tracking.parent import mark_best, set_study_run_status
from celebhpo.tracking.trial import RUN_ID_ATTR

__all__ = ["refresh_parent"]

log = logging.getLogger(__name__)


def refresh_parent(tracker: Tracker, parent_run_id: str, study: optuna.Study,
                   leaderboard: pd.DataFrame | None = None, *, done: bool = False,
                   grid: bool = False, config: dict[str, Any] | None = None) -> list[str]:
    """Re-log the parent run's leaderboard.csv, f1_by_attribute.png, Optuna's plots (PNG,
    and all of them in one self-contained summary/report.html), the `trials/*` counts and
    the best trial (`study_best/*` metrics, tags, the `celebhpo.best` tag on its run), then set
    the parent's status (parent.set_study_run_status; `done`: the caller's budget is spent,
    `grid`: the study's points were queued at creation). `config` is the study's resolved
    config (its note, the names of its objectives)
    A plot that cannot be drawn is skipped with a warning: a summary never fails a trial.
    Returns the artifact names written."""
    written: list[str] = []
    with tempfile.TemporaryDirectory(prefix="celebhpo-parent-") as tmp:
        out = Path(tmp)
        if leaderboard is None:
            leaderboard = study.trials_dataframe()
        _with_runs(leaderboard, study).to_csv(out / "leaderboard.csv", index=False)
        written.append("leaderboard.csv")
        for name, draw in _parent_plots(study, (config or {}).get("study") or {}):
            try:
                draw(out / name)
                written.append(name)
            except Exception as e:  # noqa: BLE001 - a plot must never fail the study
                log.warning("skipped %s for the parent run: %s", name, one_line(str(e), 200))
        for name in written:
            tracker.call("log artifact", tracker.client.log_artifact, parent_run_id,
                          str(out / name), "summary" if name in _SUMMARY else None)

    done_trials = [t for t in study.trials if t.state.is_finished()]
    complete = [t for t in done_trials if t.state == optuna.trial.TrialState.COMPLETE]
    now, step = int(time.time() * 1000), len(done_trials)
    metrics = [Metric("trials/finished", len(done_trials), now, step),
               Metric("trials/complete", len(complete), now, step)]
    best = best_trial(study) if len(study.directions) == 1 else None
    if best is not None:
        metrics += [Metric(f"{STUDY_BEST_PREFIX}trial_number", best.number, now, step),
                    Metric(f"{STUDY_BEST_PREFIX}value", float(best.value), now, step)]
    tracker.log_batch(parent_run_id, metrics=metrics)
    mark_best(tracker, parent_run_id, study, best, step, config)
    set_study_run_status(tracker, parent_run_id, study, done, grid=grid)
    return written


def _with_runs(board: pd.DataFrame, study: optuna.Study) -> pd.DataFrame:
    """The leaderboard with each trial's MLflow run name and id (run_name, run_id) at the
    end: the row to look for in the runs table."""
    key = "trial" if "trial" in board.columns else "number"
    if key not in board.columns:
        return board
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    found = [trials.get(int(n)) for n in board[key]]
    return board.assign(
        run_name=[final_run_name(t) if t else None for t in found],
        run_id=[t.user_attrs.get(RUN_ID_ATTR) if t else None for t in found])


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The best COMPLETE trial that meets the study's constraints, by the study's direction
    (None: none yet)."""
    complete = [t for t in study.get_trials(deepcopy=False,
                                            states=(optuna.trial.TrialState.COMPLETE,))
                if all(v <= 0 for v in t.constraints.values())]
    if not complete:
        return None
    # in trial-number order, so of equal values the first trial's is best
    return best_of(complete, study.direction.name.lower(), key=lambda t: t.value)


_PLOTS = {"optimization_history": "Optimization history",
          "parallel_coordinate": "Parallel coordinates",
          "param_importances": "Parameter importances",
          "intermediate_values": "Intermediate values (per epoch)"}
_SUMMARY = {f"{k}.png" for k in _PLOTS} | {"report.html", "pareto_front.png"}


def _parent_plots(study: optuna.Study, section: dict[str, Any]
                  ) -> list[tuple[str, Callable[[Path], None]]]:
    """(artifact name, drawer) for each parent plot that makes sense for this study now:
    the heatmap, each Optuna plot as a PNG, and report.html with every Optuna plot."""
    kinds = _plot_kinds(study)
    out: list[tuple[str, Callable[[Path], None]]] = [
        ("f1_by_attribute.png", lambda path: plots.f1_heatmap_from_study(study, path)),
    ]
    if len(study.directions) == 2:
        names = section.get("objectives") or ("value 0", "value 1")
        out.append(("pareto_front.png", lambda path: _pareto_png(study, path, names)))
    for kind in kinds:
        out.append((f"{kind}.png", lambda path, k=kind: plots.optuna_png(study, k, path)))
    if kinds:
        out.append(("report.html", lambda path: plots.optuna_report_html(
            study, {k: _PLOTS[k] for k in kinds}, path)))
    return out


def _pareto_png(study: optuna.Study, path: Path, names: Sequence[str]) -> None:
    """A two-metric study's trials (`names`: its objectives), its front (Optuna's, feasible
    trials only) marked."""
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    on_front = {t.number for t in study.best_trials}
    points = [{"number": t.number, "values": list(t.values), "label": _short(t.params),
               "feasible": all(v <= 0 for v in t.constraints.values())} for t in complete]
    plots.pareto_plot(points, tuple(names),
                      tuple(d.name.lower() for d in study.directions), path,
                      f"{study.study_name}: Pareto front",
                      front=[i for i, t in enumerate(complete) if t.number in on_front])


def _short(params: dict[str, Any]) -> str:
    """`resnet18 32px`: the architecture and image size of a trial, when searched."""
    parts = [str(params["arch"])] if "arch" in params else []
    if "data.image_size" in params:
        parts.append(f"{params['data.image_size']}px")
    return " ".join(parts)


def _plot_kinds(study: optuna.Study) -> list[str]:
    """The Optuna plots (optuna.visualization names less `plot_`) worth drawing now."""
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    kinds = []
    if complete and len(study.directions) == 1:
        kinds.append("optimization_history")
        searched = {k for t in complete for k in t.params}
        if searched:
            kinds.append("parallel_coordinate")
        varied = {k for k in searched if len({repr(t.params.get(k)) for t in complete}) > 1}
        if len(complete) >= 2 and len(varied) > 1:
            kinds.append("param_importances")
    if any(t.intermediate_values for t in study.get_trials(deepcopy=False)):
        kinds.append("intermediate_values")
    return kinds
