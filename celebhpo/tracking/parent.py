"""The parent run as the study's face: its status, and the best trial it points at.

Status: RUNNING while the study has trials to run (any WAITING or RUNNING trial, or a
budget not yet spent), FINISHED when the grid or the budget is done, FAILED when every
finished trial failed. The best COMPLETE trial's run is tagged `celebhpo.best=true` (the tag
moves as the best changes); the parent carries its `best/*` metrics, name, id and a link.
"""

from __future__ import annotations

import time
from typing import Any

import optuna
from mlflow.entities import Metric, RunTag
from optuna.trial import TrialState

from celebhpo.tracking.client import Tracker
from celebhpo.tracking.study import study_note
from celebhpo.tracking.trial import BEST_PREFIX, RUN_ID_ATTR

__all__ = ["BEST_TAG", "mark_best", "set_study_run_status", "study_run_status"]

BEST_TAG = "celebhpo.best"


def study_run_status(study: optuna.Study, done: bool = False, *, grid: bool = False) -> str:
    """The parent run's MLflow status for the study as it stands. `done`: the caller's budget
    is spent (the end of `optimize`); a `grid` study is done when no point is left to run."""
    trials = study.get_trials(deepcopy=False)
    if any(t.state in (TrialState.WAITING, TrialState.RUNNING) for t in trials):
        return "RUNNING"
    finished = [t for t in trials if t.state.is_finished()]
    if not (done or (grid and finished)):
        return "RUNNING"
    if finished and all(t.state == TrialState.FAIL for t in finished):
        return "FAILED"
    return "FINISHED"


def set_study_run_status(tracker: Tracker, parent_run_id: str, study: optuna.Study,
                         done: bool = False, *, grid: bool = False) -> str:
    """Set the parent run's status from `study_run_status`; returns it. RUNNING again after
    FINISHED (more trials asked for) clears nothing: MLflow keeps every artifact and metric."""
    status = study_run_status(study, done, grid=grid)
    client = tracker.client
    current = tracker.call("get run", client.get_run, parent_run_id).info.status
    if status == current:
        return status
    if status == "RUNNING":
        tracker.call("update run", client.update_run, parent_run_id, status="RUNNING")
    else:
        tracker.call("end run", client.set_terminated, parent_run_id, status)
    return status


def mark_best(tracker: Tracker, parent_run_id: str, study: optuna.Study,
              best: optuna.trial.FrozenTrial | None, step: int,
              config: dict[str, Any] | None = None) -> str | None:
    """Tag the best trial's run `celebhpo.best=true` (and untag any other), copy its `best/*`
    metrics, name, id and a link onto the parent, whose note describes the study (`config`,
    its resolved config). Returns the best run's id (None: no best yet)."""
    run_id = best.user_attrs.get(RUN_ID_ATTR) if best is not None else None
    client = tracker.client
    experiment_id = tracker.call("get run", client.get_run, parent_run_id).info.experiment_id
    marked = tracker.call(
        "search runs", client.search_runs, [experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}' and "
                      f"tags.`{BEST_TAG}` = 'true'", max_results=1000)
    for run in marked:
        if run.info.run_id != run_id:
            tracker.call("untag run", client.delete_tag, run.info.run_id, BEST_TAG)
    if not run_id:
        return None
    if run_id not in {r.info.run_id for r in marked}:
        tracker.call("tag run", client.set_tag, run_id, BEST_TAG, "true")
    run = tracker.call("get run", client.get_run, run_id)
    now = int(time.time() * 1000)
    metrics = [Metric(k, v, now, step) for k, v in run.data.metrics.items()
               if k.startswith(BEST_PREFIX) and k != f"{BEST_PREFIX}value"]
    link = f"#/experiments/{experiment_id}/runs/{run_id}"
    note = study_note(study.study_name, config or {},
                      f"Best so far: trial {best.number}, [{run.info.run_name}]({link}), "
                      f"value {best.value:.4g}.")
    tracker.log_batch(parent_run_id, metrics=metrics, tags=[
        RunTag("celebhpo.best_run_name", run.info.run_name),
        RunTag("celebhpo.best_run_id", run_id),
        RunTag("celebhpo.best_run_link", link),
        RunTag("mlflow.note.content", note)])
    return run_id
