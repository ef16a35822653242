"""The parent run as a user sees it on a real `mlflow server` (REST): its status through a
study's life, the best trial's tag moving, `study_best/` metrics, the offline report."""

from __future__ import annotations

import json
import re
import urllib.parse
import urllib.request
from pathlib import Path

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from celebhpo.hpo import leaderboard
from celebhpo.tracking import (
    BEST_TAG,
    Tracker,
    create_study_run,
    refresh_parent,
    set_study_run_status,
    start_trial,
    study_run_status,
)
from tests.helpers import ATTRS, CONFIG, make_fit

DISTS = {"lr": optuna.distributions.CategoricalDistribution([1e-3, 1e-2, 1e-1]),
         "dropout": optuna.distributions.CategoricalDistribution([0.1, 0.5])}


def _rest(base: str, endpoint: str, **query) -> dict:
    with urllib.request.urlopen(f"{base}{endpoint}?{urllib.parse.urlencode(query)}",
                                timeout=30) as r:
        return json.loads(r.read() or b"{}")


def _run(base: str, run_id: str) -> tuple[dict, dict, dict]:
    """(info, tags, metrics) of a run, read over REST."""
    run = _rest(base, "/api/2.0/mlflow/runs/get", run_id=run_id)["run"]
    tags = {t["key"]: t["value"] for t in run["data"].get("tags", [])}
    metrics = {m["key"]: m["value"] for m in run["data"].get("metrics", [])}
    return run["info"], tags, metrics


def _trial(tracker, exp, parent, study, tmp_path, lr, dropout, value, epochs=2):
    """One COMPLETE trial with its MLflow run, as the objective makes it."""
    trial = study.ask(DISTS)
    (tmp_path / str(trial.number)).mkdir()
    fit = make_fit(tmp_path / str(trial.number), epochs=epochs)
    run = start_trial(tracker, exp, parent, trial.number, trial.params, CONFIG)
    for h in fit.history:
        run.log_epoch(h["epoch"], h)
        trial.report(h["val_loss"], h["epoch"])
    trial.set_user_attr("f1_by_attribute", {a: value / 3 for a in ATTRS})
    trial.set_user_attr("val_loss", fit.best_metrics["val_loss"])  # its best epoch's
    trial.set_user_attr("mlflow_run_id", run.run_id)
    run.log_result(fit, CONFIG, log_checkpoint=False)
    run.end("COMPLETE")
    study.tell(trial, value)
    return run.run_id


def test_parent_status_best_tag_and_offline_report(tracking_server, tmp_path):
    base = tracking_server
    tracker = Tracker(base, retries=1, backoff=0.1)
    exp, parent = create_study_run(tracker, "parent-life", CONFIG, study_key="pl-1")
    assert _run(base, parent)[0]["status"] == "RUNNING"  # trials to run
    study = optuna.create_study(direction="minimize", study_name="parent-life")
    for lr in (1e-3, 1e-2, 1e-1):
        study.enqueue_trial({"lr": lr, "dropout": 0.1 if lr < 0.05 else 0.5})

    first = _trial(tracker, exp, parent, study, tmp_path, 1e-3, 0.1, value=0.9)
    refresh_parent(tracker, parent, study, grid=True)
    info, tags, metrics = _run(base, parent)
    assert info["status"] == "RUNNING"  # two grid points left
    assert _run(base, first)[1][BEST_TAG] == "true"
    assert tags["celebhpo.best_run_id"] == first

    second = _trial(tracker, exp, parent, study, tmp_path, 1e-2, 0.1, value=0.4, epochs=3)
    refresh_parent(tracker, parent, study, grid=True)
    # the tag moved: only the new best carries it
    assert BEST_TAG not in _run(base, first)[1]
    assert _run(base, second)[1][BEST_TAG] == "true"
    info, tags, metrics = _run(base, parent)
    assert tags["celebhpo.best_run_id"] == second
    assert tags["celebhpo.best_run_name"] == "t001 lr=0.01 p=0.1"
    assert f"#/experiments/{exp}/runs/{second}" in tags["mlflow.note.content"]
    assert metrics["study_best/trial_number"] == 1 and metrics["study_best/value"] == 0.4
    assert metrics["study_best/epoch"] == 3  # the best trial's own best_epoch/ metrics
    assert metrics["study_best/val_loss"] == pytest.approx(1.1 / 3)  # at its best epoch
    assert not [k for k in metrics if k.startswith(("best/", "best_epoch/"))]

    # the last grid point fails: the grid is done, the study FINISHED
    trial = study.ask(DISTS)
    run = start_trial(tracker, exp, parent, trial.number, trial.params, CONFIG)
    run.end("FAIL", reason="loss is NaN")
    trial.set_user_attr("mlflow_run_id", run.run_id)
    study.tell(trial, state=TrialState.FAIL)
    written = refresh_parent(tracker, parent, study, leaderboard(study), grid=True)
    board = pd.read_csv(tracker.client.download_artifacts(parent, "leaderboard.csv",
                                                          str(tmp_path / "board")))
    assert board["run_id"].tolist() == [second, first, run.run_id]  # best first
    assert board["run_name"].tolist() == ["t001 lr=0.01 p=0.1", "t000 lr=1e-3 p=0.1",
                                          "t002 lr=0.1 p=0.5 [failed]"]
    assert _run(base, parent)[0]["status"] == "FINISHED"
    assert _run(base, run.run_id)[0]["run_name"].endswith("[failed]")

    # the report renders offline: plotly.js inlined once, no external script
    assert "report.html" in written
    html = Path(tracker.client.download_artifacts(parent, "summary/report.html",
                                                  str(tmp_path / "dl"))).read_text()
    assert not re.search(r"<script[^>]+src=[\"']?(https?:)?//", html)
    optuna_pngs = [w for w in written if w.endswith(".png") and w != "f1_by_attribute.png"]
    assert len(optuna_pngs) == 3  # importances need two varied params among complete trials
    assert html.count("Plotly.newPlot") == len(optuna_pngs)  # each plot in the report
    assert len(re.findall(r"plotly\.js v\d", html)) == 1  # the library, once
    files = {f["path"] for f in _rest(base, "/api/2.0/mlflow/artifacts/list", run_id=parent,
                                      path="summary")["files"]}
    assert {"summary/optimization_history.png", "summary/intermediate_values.png",
            "summary/report.html"} <= files
    assert not [f for f in files if f.endswith(".html") and f != "summary/report.html"]


def test_study_run_status_rules():
    study = optuna.create_study()
    assert study_run_status(study) == "RUNNING"  # nothing run yet, no budget spent
    assert study_run_status(study, done=True) == "FINISHED"  # a budget of 0
    for _ in range(2):
        study.tell(study.ask(), state=TrialState.FAIL)
    assert study_run_status(study) == "RUNNING"  # a search: the budget decides
    assert study_run_status(study, done=True) == "FAILED"  # every trial failed
    study.enqueue_trial({})
    assert study_run_status(study, done=True) == "RUNNING"  # a queued trial left
    study.tell(study.ask(), 1.0)
    assert study_run_status(study, done=True) == "FINISHED"
    grid = optuna.create_study()
    grid.tell(grid.ask(), state=TrialState.FAIL)
    assert study_run_status(grid) == "RUNNING"  # a search: its budget decides
    assert study_run_status(grid, grid=True) == "FAILED"  # the grid is done and all of it failed


def test_parent_status_moves_back_to_running(tracking_server):
    """More trials asked for after FINISHED: RUNNING again, then FINISHED."""
    tracker = Tracker(tracking_server, retries=1, backoff=0.1)
    _, parent = create_study_run(tracker, "again", CONFIG)
    study = optuna.create_study()
    study.tell(study.ask(), 1.0)
    assert set_study_run_status(tracker, parent, study, done=True) == "FINISHED"
    assert _run(tracking_server, parent)[0]["status"] == "FINISHED"
    study.enqueue_trial({})
    assert set_study_run_status(tracker, parent, study) == "RUNNING"
    assert _run(tracking_server, parent)[0]["status"] == "RUNNING"
    study.tell(study.ask(), 2.0)
    assert set_study_run_status(tracker, parent, study, done=True) == "FINISHED"
    assert _run(tracking_server, parent)[0]["status"] == "FINISHED"
