"""The study's experiment and parent run, and the child runs under it.

Shape (shared/DESIGN.md "MLflow shape"): one experiment per study, created once by
`study create` (workers never race to create it); one parent run for the study, tagged
`role=study`; one child run per trial (trial.py), tagged `mlflow.parentRunId`.
"""

from __future__ import annotations

from typing import Any

from mlflow.entities import Param, Run, RunTag

from celebhpo.errors import TrackingError
from celebhpo.tracking.client import Tracker, artifact_root
from celebhpo.tracking.trial import RUN_STATUS, TrialRun, flatten_config

__all__ = ["child_runs", "close_orphan_runs", "create_study_run"]


def create_study_run(tracker: Tracker, study_name: str, config: dict[str, Any], *,
                     fresh: bool = False) -> tuple[str, str]:
    """The study's experiment and parent run, created once; asked again for the same
    study, returns the existing ones. `fresh=True` (a replaced study) starts a new parent
    run and marks the old one `superseded`. Returns (experiment_id, parent_run_id)."""
    experiment_id = _experiment(tracker, study_name)
    parents = tracker.call(
        "search runs", tracker.client.search_runs, [experiment_id],
        filter_string="tags.role = 'study'", order_by=["attributes.start_time ASC"],
        max_results=50,
    )
    parents = [r for r in parents if r.data.tags.get("superseded") != "true"]
    if parents and not fresh:
        return experiment_id, parents[0].info.run_id
    for old in parents:
        tracker.call("tag run", tracker.client.set_tag, old.info.run_id, "superseded", "true")
    run = tracker.call(
        "create run", tracker.client.create_run, experiment_id, run_name=study_name,
        tags={"role": "study", "study": study_name},
    )
    params = [Param(k, v) for k, v in flatten_config(config).items()]
    tracker.log_batch(run.info.run_id, params=params,
                       tags=[RunTag("mlflow.note.content", _study_note(study_name, config))])
    # The parent stands for the study, not for a process: it is FINISHED at once (MLflow
    # still accepts its artifacts and metrics), so no worker's exit leaves it RUNNING.
    tracker.call("end run", tracker.client.set_terminated, run.info.run_id, "FINISHED")
    return experiment_id, run.info.run_id


def _experiment(tracker: Tracker, name: str) -> str:
    client = tracker.client
    exp = tracker.call("get experiment", client.get_experiment_by_name, name)
    if exp is None:
        try:
            return tracker.call("create experiment", client.create_experiment, name,
                                 artifact_location=artifact_root(tracker.uri),
                                 tags={"celebhpo.study": name})
        except TrackingError:
            # Another process may have created it between our look and our create.
            exp = tracker.call("get experiment", client.get_experiment_by_name, name)
            if exp is None:
                raise
    if exp.lifecycle_stage == "deleted":
        tracker.call("restore experiment", client.restore_experiment, exp.experiment_id)
    return exp.experiment_id


def _study_note(study_name: str, config: dict[str, Any]) -> str:
    space = config.get("space", {})
    searched = ", ".join(space) if space else "nothing (a fixed configuration)"
    return (f"celebhpo study **{study_name}**: one child run per trial; searched: {searched}. "
            "Artifacts: leaderboard.csv, f1_by_attribute.png, summary/*.html (Optuna plots).")


def child_runs(tracker: Tracker, parent_run_id: str, status: str | None = None) -> list[Run]:
    """The trial runs under a parent (mlflow Run objects), oldest first."""
    parent = tracker.call("get run", tracker.client.get_run, parent_run_id)
    query = f"tags.`mlflow.parentRunId` = '{parent_run_id}'"
    if status:
        query += f" and attributes.status = '{status}'"
    runs: list[Run] = []
    token = None
    while True:
        page = tracker.call("search runs", tracker.client.search_runs,
                             [parent.info.experiment_id], filter_string=query,
                             order_by=["attributes.start_time ASC"], max_results=1000,
                             page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def close_orphan_runs(tracker: Tracker, parent_run_id: str,
                      trial_states: dict[int, str]) -> list[str]:
    """Close child runs left RUNNING by a killed worker. `trial_states` maps trial number
    -> Optuna state name; a RUNNING run whose trial Optuna considers over (COMPLETE,
    PRUNED, FAIL) is ended to match, with the reason tagged. Runs of trials Optuna still
    counts as RUNNING/WAITING (live on another worker) are left alone. Returns the ids."""
    closed = []
    for run in child_runs(tracker, parent_run_id, status="RUNNING"):
        try:
            number = int(run.data.tags.get("trial_number", ""))
        except ValueError:
            continue
        state = trial_states.get(number)
        if state not in RUN_STATUS:
            continue
        reason = (f"worker stopped before closing this run; Optuna marked trial {number} "
                  f"{state}")
        TrialRun(tracker, run.info.run_id, number).end(
            state, reason=reason if state == "FAIL" else None, quiet=False)
        if state != "FAIL":
            tracker.call("tag run", tracker.client.set_tag, run.info.run_id, "note", reason)
        closed.append(run.info.run_id)
    return closed
