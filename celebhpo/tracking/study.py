"""The study's experiment and parent run, and the child runs under it.

Shape (shared/DESIGN.md "MLflow shape"): one experiment per study name, created once by
`study create` (workers never race to create it) and tagged `mlflow.experimentKind =
custom_model_development`, so MLflow's UI keeps its model-training view on every page (not
its GenAI one); one parent run per study, tagged `role=study` and found by the study's key,
never by its name, with the study's data set as its dataset input; one child run per trial
(trial.py), tagged `mlflow.parentRunId`.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from mlflow.entities import Param, Run, RunTag

from celebhpo.errors import TrackingError, mask_url, without_credentials
from celebhpo.tracking.client import Tracker
from celebhpo.tracking.metadata import log_dataset, source_tags
from celebhpo.tracking.names import param_name
from celebhpo.tracking.trial import RUN_STATUS, TrialRun, flatten_config
from celebhpo.tracking.uris import artifact_location, same_store

__all__ = ["EXPERIMENT_KIND", "STUDY_KEY_TAG", "WARM_START_TAG", "child_runs",
           "close_orphan_runs", "create_study_run", "link_warm_start", "parent_params",
           "study_note", "supersede", "warm_line"]


STUDY_KEY_TAG = "celebhpo.study_key"
# a warm-started study's parent run: the study it copied trials from, that study's parent run
# (its id, and a link when both live in one store) and how many trials it copied
WARM_START_TAG = "celebhpo.warm_start_from"
WARM_PARENT_TAG, WARM_LINK_TAG = "celebhpo.warm_start_parent_run_id", "celebhpo.warm_start_link"
WARM_COPIED_TAG = "celebhpo.warm_start_copied"
# MLflow's experiment type (its UI's selector; values in MLflow 3.17's UI source:
# custom_model_development, genai_development, ...): without it a run page may switch to
# the GenAI view ("Evaluations")
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


def create_study_run(tracker: Tracker, study_name: str, config: dict[str, Any], *,
                     study_key: str | None = None, storage: str | None = None,
                     artifacts: str | None = None) -> tuple[str, str]:
    """The study's experiment (one per study name) and its parent run. Returns
    (experiment_id, parent_run_id).

    A parent run belongs to one study, found by `study_key` (tag celebhpo.study_key; the
    study keeps the same key as a user attr), never by name: the same key again (a retried
    create) returns the same run; another key (a new study of an old name, in a fresh or
    another storage) gets a parent of its own beside the old ones, named "NAME (2)",
    "NAME (3)", ... and tagged with its storage (without credentials). `artifacts` is where
    a new experiment keeps artifacts (see uris.artifact_location)."""
    experiment_id = _experiment(tracker, study_name, artifacts)
    key = study_key or uuid.uuid4().hex
    parents = tracker.call(
        "search runs", tracker.client.search_runs, [experiment_id],
        filter_string="tags.role = 'study'", order_by=["attributes.start_time ASC"],
        max_results=1000,
    )
    mine = [r for r in parents if r.data.tags.get(STUDY_KEY_TAG) == key]
    if mine:
        run_id = mine[0].info.run_id
    else:
        names = {r.info.run_name for r in parents}
        run_name = next(n for n in (study_name, *(f"{study_name} ({i})" for i in
                                                   range(2, len(names) + 3)))
                        if n not in names)
        tags = {**source_tags(), "role": "study", "study": study_name}
        if storage:
            tags["storage"] = without_credentials(storage)
        run_id = tracker.create_run(experiment_id, run_name, tags, key=key,
                                    key_tag=STUDY_KEY_TAG).info.run_id
    # logged again when a retry finds the run: MLflow accepts a param re-logged unchanged
    params = [Param(k, v) for k, v in parent_params(config).items()]
    tracker.log_batch(run_id, params=params,
                      tags=[RunTag("mlflow.note.content", study_note(study_name, config)),
                            RunTag("searched", ",".join(map(param_name, config.get("space")
                                                            or {})))])
    # the study's data set, as on every trial's run (a retry links the same input once)
    log_dataset(tracker, run_id, config.get("data") or {})
    # RUNNING while the study has trials to run: parent.set_study_run_status ends it
    # FINISHED (grid or budget done) or FAILED (every trial failed) after trials
    return experiment_id, run_id


def link_warm_start(tracker: Tracker, run_id: str, *, source: str, parent_run_id: str | None,
                    experiment_id: str | None, tracking_uri: str, copied: int) -> None:
    """Tag the parent run `run_id` with the study it was warm-started from (`source`) and
    that study's parent run, and add a line with the link to its description."""
    tags = {WARM_START_TAG: source, WARM_COPIED_TAG: str(copied)}
    if parent_run_id:
        tags[WARM_PARENT_TAG] = parent_run_id
        if experiment_id and same_store(tracking_uri, tracker.uri):
            tags[WARM_LINK_TAG] = f"#/experiments/{experiment_id}/runs/{parent_run_id}"
    note = tracker.call("get run", tracker.client.get_run, run_id).data.tags.get(
        "mlflow.note.content", "")
    tracker.log_batch(run_id, tags=[*(RunTag(k, v) for k, v in tags.items()), RunTag(
        "mlflow.note.content", f"{note}\n\n{warm_line(tags)}".strip())])


def warm_line(tags: dict[str, str]) -> str:
    """The description's line about the warm start (markdown), from the parent's tags; ""
    for a study that was not warm-started."""
    if WARM_START_TAG not in tags:
        return ""
    parent, link = tags.get(WARM_PARENT_TAG), tags.get(WARM_LINK_TAG)
    where = (f"[its parent run]({link})" if link else
             f"its parent run {parent} (in another MLflow store)" if parent else
             "it ran with tracking off")
    return (f"Warm-started from study **{tags[WARM_START_TAG]}**: "
            f"{tags.get(WARM_COPIED_TAG, '?')} of its trials copied (trained there, no runs "
            f"here); {where}.")


def supersede(tracker: Tracker, parent_run_id: str) -> None:
    """Tag the parent run of a replaced (deleted) study `superseded`."""
    tracker.call("tag run", tracker.client.set_tag, parent_run_id, "superseded", "true")


def _experiment(tracker: Tracker, name: str, artifacts: str | None) -> str:
    client = tracker.client
    exp = tracker.call("get experiment", client.get_experiment_by_name, name)
    if exp is None:
        location = artifact_location(tracker.uri, artifacts)  # a database without one: refused
        try:
            return tracker.call("create experiment", client.create_experiment, name,
                                 artifact_location=location,
                                 tags={"celebhpo.study": name,
                                       EXPERIMENT_KIND[0]: EXPERIMENT_KIND[1]})
        except TrackingError:
            # Another process may have created it between our look and our create.
            exp = tracker.call("get experiment", client.get_experiment_by_name, name)
            if exp is None:
                raise
    wanted = artifact_location(tracker.uri, artifacts) if artifacts else None
    if wanted and exp.artifact_location != wanted:
        raise TrackingError(
            f"MLflow experiment '{name}' in {tracker.masked_uri} keeps its artifacts at "
            f"{mask_url(exp.artifact_location)}, not {mask_url(wanted)}: an experiment's "
            "artifact location cannot change; pass that location, or --name for a new study"
        )
    if exp.lifecycle_stage == "deleted":
        tracker.call("restore experiment", client.restore_experiment, exp.experiment_id)
    if EXPERIMENT_KIND[0] not in exp.tags:  # made by an older celebhpo, or by hand
        tracker.call("tag experiment", client.set_experiment_tag, exp.experiment_id,
                     *EXPERIMENT_KIND)
    return exp.experiment_id


def parent_params(config: dict[str, Any]) -> dict[str, str]:
    """The parent run's params: the config, flat, with each searched key under its config
    name (names.param_name: `train.lr`, `data.image_size`, as on the trials' runs, which log
    the trial's value there) = its choices (a JSON list) or range (a JSON object), never its
    base value (it never trained)."""
    space = config.get("space") or {}
    out = flatten_config({k: v for k, v in config.items() if k != "space"})
    for key, dim in space.items():
        out[param_name(key)] = json.dumps(dim, sort_keys=True, default=str)[:6000]
    return out


def study_note(study_name: str, config: dict[str, Any], best: str = "", warm: str = "") -> str:
    """The parent run's description (markdown): what the study searches, where things are,
    `best` (a line about the best trial, with a link) once there is one, and `warm` (a
    warm-started study's `warm_line`)."""
    space = config.get("space", {})
    searched = ", ".join(space) if space else "nothing (a fixed configuration)"
    note = (f"celebhpo study **{study_name}**: one child run per trial; searched: {searched}. "
            "Artifacts: leaderboard.csv, f1_by_attribute.png, summary/report.html (every "
            "Optuna plot, offline) and summary/*.png.")
    return "\n\n".join(line for line in (note, best, warm) if line)


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
        TrialRun(tracker, run.info.run_id, number, run.info.run_name).end(
            state, reason=reason if state == "FAIL" else None, quiet=False)
        if state != "FAIL":
            tracker.call("tag run", tracker.client.set_tag, run.info.run_id, "note", reason)
        closed.append(run.info.run_id)
    return closed


def kill_runs(tracker: Tracker, parent_run_id: str, reason: str) -> list[str]:
    """End a study's parent run and its RUNNING child runs KILLED with `reason` tagged: the
    study is gone (deleted), so no worker will ever close them. Returns the ids."""
    closed = []
    for run in child_runs(tracker, parent_run_id, status="RUNNING"):
        tracker.call("tag run", tracker.client.set_tag, run.info.run_id, "note", reason)
        tracker.call("end run", tracker.client.set_terminated, run.info.run_id, "KILLED")
        closed.append(run.info.run_id)
    parent = tracker.call("get run", tracker.client.get_run, parent_run_id)
    if parent.info.status == "RUNNING":
        tracker.call("tag run", tracker.client.set_tag, parent_run_id, "note", reason)
        tracker.call("end run", tracker.client.set_terminated, parent_run_id, "KILLED")
        closed.append(parent_run_id)
    return closed
