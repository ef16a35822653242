"""The parent run as the study's face: its status, and the best trial it points at.

Status: RUNNING while the study has trials to run (any WAITING or RUNNING trial, or a
budget not yet spent), FINISHED when the grid or the budget is done, FAILED when every
finished trial failed. The best COMPLETE trial's run is tagged `celebhpo.best=true` (the tag
moves as the best changes); the parent carries its figures as `study_best/*` metrics (step =
trials finished: the best so far), its name, id and a link.
When the worker sets the status at its end it hands over the points given up after their
retry limit (hpo's retry.given_up, which this layer cannot import): the parent is tagged
`celebhpo.given_up` with them in one short line, and the tag is removed when there are none.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import optuna
from mlflow.entities import Metric, RunTag
from optuna.trial import TrialState

from celebhpo.tracking.client import Tracker
from celebhpo.tracking.names import BEST_EPOCH_PREFIX, STUDY_BEST_PREFIX, figure_key
from celebhpo.tracking.study import study_note, warm_line
from celebhpo.tracking.trial import RUN_ID_ATTR

__all__ = ["BEST_TAG", "GIVEN_UP_TAG", "given_up_line", "mark_best", "set_study_run_status",
           "study_best_metrics", "study_run_status"]

BEST_TAG = "celebhpo.best"
GIVEN_UP_TAG = "celebhpo.given_up"
GIVEN_UP_CHARS = 500  # the tag stays one short line; `study show` lists every point


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


def given_up_line(given_up: Sequence[tuple[int, Mapping[str, Any], int]]) -> str:
    """The `celebhpo.given_up` tag: `trial 7 {lr=0.001, dropout=0.1} after 3 attempts; ...`
    from (last attempt, params, attempts), cut to GIVEN_UP_CHARS."""
    line = "; ".join("trial {} {{{}}} after {} attempts".format(
        n, ", ".join(f"{k}={v}" for k, v in params.items()), attempts)
        for n, params, attempts in given_up)
    return line if len(line) <= GIVEN_UP_CHARS else line[:GIVEN_UP_CHARS - 3] + "..."


def set_study_run_status(tracker: Tracker, parent_run_id: str, study: optuna.Study,
                         done: bool = False, *, grid: bool = False,
                         given_up: Sequence[tuple[int, Mapping[str, Any], int]] | None = None
                         ) -> str:
    """Set the parent run's status from `study_run_status`; returns it. RUNNING again after
    FINISHED (more trials asked for) clears nothing: MLflow keeps every artifact and metric.
    `given_up` (last attempt, params, attempts) of the points given up sets the
    `celebhpo.given_up` tag, or removes it when empty; None leaves it as it is."""
    status = study_run_status(study, done, grid=grid)
    client = tracker.client
    run = tracker.call("get run", client.get_run, parent_run_id)
    if given_up is not None:
        _tag_given_up(tracker, parent_run_id, run.data.tags.get(GIVEN_UP_TAG),
                      given_up_line(given_up))
    current = run.info.status
    if status == current:
        return status
    if status == "RUNNING":
        tracker.call("update run", client.update_run, parent_run_id, status="RUNNING")
    else:
        tracker.call("end run", client.set_terminated, parent_run_id, status)
    return status


def _tag_given_up(tracker: Tracker, parent_run_id: str, tagged: str | None, line: str) -> None:
    if line and line != tagged:
        tracker.call("tag run", tracker.client.set_tag, parent_run_id, GIVEN_UP_TAG, line)
    elif not line and tagged is not None:
        tracker.call("untag run", tracker.client.delete_tag, parent_run_id, GIVEN_UP_TAG)


def study_best_metrics(metrics: Mapping[str, float], user_attrs: Mapping[str, Any]
                       ) -> dict[str, float]:
    """The parent's `study_best/<name>` from the best trial's run `metrics` (latest values):
    each `best_epoch/<name>` (`study_best/epoch` included), and each other metric of the run
    whose value at the best epoch the trial stores as a user attr (the objective's figures:
    val_loss, val_mean_acc, ... at that epoch; params_m, latency_ms)."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if key.startswith(BEST_EPOCH_PREFIX):
            out[STUDY_BEST_PREFIX + key[len(BEST_EPOCH_PREFIX):]] = float(value)
            continue
        attr = user_attrs.get(figure_key(key))  # val_mean_acc_reliable12: its user attr's key
        if isinstance(attr, int | float) and not isinstance(attr, bool) and (
                math.isfinite(attr)):
            out[STUDY_BEST_PREFIX + key] = float(attr)
    return out


def mark_best(tracker: Tracker, parent_run_id: str, study: optuna.Study,
              best: optuna.trial.FrozenTrial | None, step: int,
              config: dict[str, Any] | None = None) -> str | None:
    """Tag the best trial's run `celebhpo.best=true` (and untag any other), copy its figures
    (`study_best_metrics`), name, id and a link onto the parent, whose note describes the
    study (`config`, its resolved config). Returns the best run's id (None: no best yet)."""
    run_id = best.user_attrs.get(RUN_ID_ATTR) if best is not None else None
    client = tracker.client
    parent = tracker.call("get run", client.get_run, parent_run_id)
    experiment_id = parent.info.experiment_id
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
    metrics = [Metric(k, v, now, step)
               for k, v in study_best_metrics(run.data.metrics, best.user_attrs).items()]
    link = f"#/experiments/{experiment_id}/runs/{run_id}"
    note = study_note(study.study_name, config or {},
                      f"Best so far: trial {best.number}, [{run.info.run_name}]({link}), "
                      f"value {best.value:.4g}.", warm=warm_line(parent.data.tags))
    tracker.log_batch(parent_run_id, metrics=metrics, tags=[
        RunTag("celebhpo.best_run_name", run.info.run_name),
        RunTag("celebhpo.best_run_id", run_id),
        RunTag("celebhpo.best_run_link", link),
        RunTag("mlflow.note.content", note)])
    return run_id
