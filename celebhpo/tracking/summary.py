"""The parent run's summaries, refreshed after each trial: leaderboard.csv, the attribute x
trial F1 heatmap, Optuna's plots (summary/*.html) and the best-trial metrics."""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from mlflow.entities import Metric

from celebhpo.tracking import plots
from celebhpo.tracking.client import Tracker, one_line

__all__ = ["refresh_parent"]

log = logging.getLogger(__name__)


def refresh_parent(tracker: Tracker, parent_run_id: str, study: optuna.Study,
                   leaderboard: pd.DataFrame | None = None) -> list[str]:
    """Re-log the parent run's leaderboard.csv, f1_by_attribute.png, Optuna plots (HTML)
    and best_trial_number/best_value metrics. A plot that cannot be drawn is skipped with
    a warning: a summary never fails a trial. Returns the artifact names written."""
    written: list[str] = []
    with tempfile.TemporaryDirectory(prefix="celebhpo-parent-") as tmp:
        out = Path(tmp)
        if leaderboard is None:
            leaderboard = study.trials_dataframe()
        leaderboard.to_csv(out / "leaderboard.csv", index=False)
        written.append("leaderboard.csv")
        for name, draw in _parent_plots(study):
            try:
                draw(out / name)
                written.append(name)
            except Exception as e:  # noqa: BLE001 - a plot must never fail the study
                log.warning("skipped %s for the parent run: %s", name, one_line(str(e), 200))
        for name in written:
            tracker.call("log artifact", tracker.client.log_artifact, parent_run_id,
                          str(out / name), "summary" if name.endswith(".html") else None)

    done = [t for t in study.trials if t.state.is_finished()]
    complete = [t for t in done if t.state == optuna.trial.TrialState.COMPLETE]
    now = int(time.time() * 1000)
    metrics = [Metric("finished_trials", len(done), now, len(done)),
               Metric("complete_trials", len(complete), now, len(done))]
    if complete and len(study.directions) == 1:
        best = study.best_trial
        metrics += [Metric("best_trial_number", best.number, now, len(done)),
                    Metric("best_value", float(best.value), now, len(done))]
    tracker.log_batch(parent_run_id, metrics=metrics)
    tracker.call("end run", tracker.client.set_terminated, parent_run_id, "FINISHED")
    return written


def _parent_plots(study: optuna.Study) -> list[tuple[str, Callable[[Path], None]]]:
    """(artifact name, drawer) for each parent plot that makes sense for this study now."""
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    vis = optuna.visualization

    def html(make: Callable[[optuna.Study], Any]) -> Callable[[Path], None]:
        # plotly.js from its CDN: a full copy would add 3.5 MB to every file on every refresh
        return lambda path: make(study).write_html(str(path), include_plotlyjs="cdn")

    out: list[tuple[str, Callable[[Path], None]]] = [
        ("f1_by_attribute.png", lambda path: plots.f1_heatmap_from_study(study, path)),
    ]
    if complete and len(study.directions) == 1:
        out.append(("optimization_history.html", html(vis.plot_optimization_history)))
        if len({k for t in complete for k in t.params}) >= 1:
            out.append(("parallel_coordinate.html", html(vis.plot_parallel_coordinate)))
        varied = {k for k in {k for t in complete for k in t.params}
                  if len({repr(t.params.get(k)) for t in complete}) > 1}
        if len(complete) >= 2 and len(varied) > 1:
            out.append(("param_importances.html", html(vis.plot_param_importances)))
    if any(t.intermediate_values for t in study.get_trials(deepcopy=False)):
        out.append(("intermediate_values.html", html(vis.plot_intermediate_values)))
    return out
