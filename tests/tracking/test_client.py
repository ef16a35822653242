"""celebhpo.tracking against a real MLflow SQLite store in a temp folder (no mocks)."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest

from celebhpo.errors import TrackingError
from celebhpo.tracking import (
    Tracker,
    close_orphan_runs,
    create_study_run,
    download_checkpoint,
    f1_by_attribute,
    flatten_config,
    refresh_parent,
    resolve_tracking_uri,
    start_trial,
    supersede,
    trial_run_name,
    ui_command,
)
from celebhpo.tracking.study import child_runs
from tests.helpers import ATTRS, CONFIG, make_fit

SECRET_URL = "postgresql+psycopg2://alice:hunter2@db.example:5432/optuna"


@pytest.fixture(scope="module")
def tracker(tmp_path_factory) -> Tracker:
    root = tmp_path_factory.mktemp("mlflow")
    t = Tracker(f"sqlite:///{root / 'mlflow.db'}", retries=0)
    t.check()
    return t


def test_resolve_uri_precedence_and_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri() == f"sqlite:///{tmp_path.resolve() / 'mlruns' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert resolve_tracking_uri() == "http://127.0.0.1:5999"
    assert resolve_tracking_uri("sqlite:///x/y.db") == f"sqlite:///{tmp_path.resolve()}/x/y.db"
    with pytest.raises(TrackingError, match="no longer supports a plain folder"):
        resolve_tracking_uri("./mlruns")


def test_ui_command_binds_localhost_and_names_artifacts(tmp_path):
    argv = ui_command(f"sqlite:///{tmp_path}/m.db")
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    assert argv[argv.index("--default-artifact-root") + 1] == (tmp_path / "artifacts").as_uri()
    with pytest.raises(TrackingError, match="already a tracking server"):
        ui_command("http://127.0.0.1:5000")


def test_run_names_and_flattening():
    params = {"dropout": 0.3, "lr": 0.001, "arch": "resnet50", "num_features": 512,
              "weight_decay": 0.0001}
    assert trial_run_name(7, params) == "t007 resnet50 lr=1e-3 p=0.3 f=512 wd=1e-4"
    assert trial_run_name(12, {"lr": 0.00025}) == "t012 lr=2.5e-4"
    flat = flatten_config({**CONFIG, "data": {"root": SECRET_URL, "image_size": 32}})
    assert flat["data.image_size"] == "32"
    assert flat["train.lr"] == "0.001"
    assert json.loads(flat["space"])["lr"] == [1e-3, 1e-2]
    assert "hunter2" not in flat["data.root"] and "alice:***@" in flat["data.root"]


def test_parent_run_belongs_to_one_study_key(tracker):
    exp1, parent1 = create_study_run(tracker, "once", CONFIG, study_key="k1",
                                     storage="sqlite:////tmp/a.db")
    # the same study asking again (a retried create) gets the same run
    assert create_study_run(tracker, "once", CONFIG, study_key="k1") == (exp1, parent1)
    client = tracker.client
    exp = client.get_experiment(exp1)
    assert exp.name == "once"
    # artifacts beside the SQLite file, not under whatever the cwd was
    assert exp.artifact_location == (Path(tracker.uri[len("sqlite:///"):]).parent
                                     / "artifacts").as_uri()
    parent = client.get_run(parent1)
    assert parent.info.run_name == "once"
    assert parent.data.tags["celebhpo.study_key"] == "k1"
    assert parent.data.tags["storage"] == "sqlite:////tmp/a.db"
    assert parent.data.params["data.image_size"] == "32"
    # searched keys: their range or choices, never their base value (it never trained),
    # under the name a trial's run gives its value
    assert json.loads(parent.data.params["train.lr"]) == [1e-3, 1e-2]
    assert json.loads(parent.data.params["train.dropout"]) == {"low": 0.1, "high": 0.5,
                                                               "log": False}
    assert not [k for k in parent.data.params if k.startswith("space")]
    assert parent.data.params["train.arch"] == "tiny"  # not searched: logged
    assert parent.info.status == "RUNNING"  # the study has trials to run
    # another study of the same name (a fresh storage, another storage): the same
    # experiment, a parent of its own, named apart
    exp2, parent2 = create_study_run(tracker, "once", CONFIG, study_key="k2")
    exp3, parent3 = create_study_run(tracker, "once", CONFIG)  # no key: a new study
    assert exp1 == exp2 == exp3 and len({parent1, parent2, parent3}) == 3
    assert [client.get_run(p).info.run_name for p in (parent2, parent3)] == [
        "once (2)", "once (3)"]
    active = client.search_runs([exp1], filter_string="tags.role = 'study'")
    assert len(active) == 3
    supersede(tracker, parent1)
    assert client.get_run(parent1).data.tags["superseded"] == "true"


def test_trial_lifecycle_metrics_artifacts(tracker, tmp_path):
    exp, parent = create_study_run(tracker, "life", CONFIG)
    client = tracker.client
    fit = make_fit(tmp_path, epochs=3)

    done = start_trial(tracker, exp, parent, 0, {"arch": "tiny", "lr": 1e-3}, CONFIG,
                       {"study": "life", "device": "cpu"})
    assert client.get_run(done.run_id).info.status == "RUNNING"
    for h in fit.history:
        done.log_epoch(h["epoch"], h)
    out = done.log_result(fit, CONFIG, log_checkpoint=True)
    assert out["f1_by_attribute"] == {"Eyeglasses": 0.75, "Male": 0.65, "Smiling": 0.55}
    assert done.end("COMPLETE")

    pruned = start_trial(tracker, exp, parent, 1, {"arch": "tiny", "lr": 1e-2}, CONFIG)
    pruned.log_epoch(1, fit.history[0])
    pruned.end("PRUNED", pruned_at=1)
    failed = start_trial(tracker, exp, parent, 2, {"arch": "tiny", "lr": 10.0}, CONFIG)
    failed.end("FAIL", reason=f"loss is NaN at epoch 1\nwhile talking to {SECRET_URL}")

    run = client.get_run(done.run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "t000 tiny lr=1e-3"
    assert run.data.tags["mlflow.parentRunId"] == parent
    assert run.data.tags["trial_number"] == "0"
    assert run.data.tags["state"] == "COMPLETE"
    assert run.data.tags["device"] == "cpu"
    assert run.data.tags["host"] == socket.gethostname()
    assert run.data.params["train.arch"] == "tiny"
    assert run.data.params["train.lr"] == "0.001" and "space" not in run.data.params
    assert run.data.metrics["best_epoch/epoch"] == 3
    # the best epoch's val_loss is the curve's point at that epoch, not a metric of its own
    assert not [k for k in run.data.metrics if k.startswith("best/") or k == "best_epoch/val_loss"]
    history = client.get_metric_history(done.run_id, "val_loss")
    assert [(m.step, round(m.value, 6)) for m in history] == [
        (1, 1.1), (2, 0.55), (3, round(1.1 / 3, 6))]
    assert len(client.get_metric_history(done.run_id, "images_per_s")) == 3
    names = {f.path for f in client.list_artifacts(done.run_id)}
    assert names == {"classification_report.csv", "classification_report.json",
                     "classification_report.png", "thresholds.json", "best_epoch.json",
                     "curves.png", "config.json", "model.pt"}
    got = download_checkpoint(tracker, done.run_id, tmp_path / "dl")
    assert got.name == "model.pt" and got.read_bytes() == fit.checkpoint_path.read_bytes()
    thr = json.loads(Path(client.download_artifacts(done.run_id, "thresholds.json",
                                                    str(tmp_path / "dl"))).read_text())
    assert thr == {"Eyeglasses": 0.3, "Male": 0.4, "Smiling": 0.6}

    run = client.get_run(pruned.run_id)
    assert run.info.status == "KILLED"
    assert run.data.tags["state"] == "PRUNED" and run.data.tags["pruned_at_epoch"] == "1"
    # the UI shows KILLED like FAILED: the name and description tell them apart
    assert run.info.run_name == "t001 tiny lr=0.01 [pruned@1]"
    assert run.data.tags["mlflow.runName"] == run.info.run_name
    assert run.data.tags["mlflow.note.content"].startswith("Pruned after epoch 1")
    assert len(client.get_metric_history(pruned.run_id, "val_loss")) == 1
    with pytest.raises(TrackingError, match="no model.pt artifact"):
        download_checkpoint(tracker, pruned.run_id, tmp_path / "dl2")

    run = client.get_run(failed.run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["state"] == "FAIL"
    error = run.data.tags["error"]
    assert error.startswith("loss is NaN at epoch 1 while talking to")
    assert "hunter2" not in error and "alice:***@" in error and "\n" not in error
    assert run.info.run_name == "t002 tiny lr=10 [failed]"
    assert "hunter2" not in run.data.tags["mlflow.note.content"]

    assert [r.info.run_id for r in child_runs(tracker, parent)] == [
        done.run_id, pruned.run_id, failed.run_id]


def test_checkpoint_not_logged_when_not_asked(tracker, tmp_path):
    exp, parent = create_study_run(tracker, "nockpt", CONFIG)
    run = start_trial(tracker, exp, parent, 0, {"lr": 1e-3}, CONFIG)
    run.log_result(make_fit(tmp_path), CONFIG, log_checkpoint=False)
    run.end("COMPLETE")
    assert "model.pt" not in {f.path for f in tracker.client.list_artifacts(run.run_id)}


def test_passwords_never_reach_params_or_tags(tracker):
    config = {**CONFIG, "data": {**CONFIG["data"], "root": f"{SECRET_URL}/images"}}
    exp, parent = create_study_run(tracker, "secret", config)
    run = start_trial(tracker, exp, parent, 0, {"lr": 1e-3}, config,
                      {"storage": SECRET_URL, "device": "cpu"})
    run.end("FAIL", reason=f"could not reach {SECRET_URL}")
    for run_id in (parent, run.run_id):
        data = tracker.client.get_run(run_id).data
        stored = json.dumps([data.params, data.tags])
        assert "hunter2" not in stored
    data = tracker.client.get_run(run.run_id).data
    assert data.tags["storage"] == "postgresql+psycopg2://alice:***@db.example:5432/optuna"
    assert data.params["data.root"].startswith("postgresql+psycopg2://alice:***@")


def test_end_rejects_unknown_state_and_is_idempotent(tracker):
    exp, parent = create_study_run(tracker, "states", CONFIG)
    run = start_trial(tracker, exp, parent, 0, {"lr": 1e-3}, CONFIG)
    with pytest.raises(TrackingError, match="not one of COMPLETE, PRUNED, FAIL"):
        run.end("DONE")
    assert run.end("FAIL", reason="first")
    assert run.end("COMPLETE")  # already ended: the first end stands
    assert tracker.client.get_run(run.run_id).info.status == "FAILED"


def test_close_orphan_runs(tracker):
    exp, parent = create_study_run(tracker, "orphans", CONFIG)
    runs = [start_trial(tracker, exp, parent, n, {"lr": 1e-3}, CONFIG) for n in range(4)]
    runs[3].end("COMPLETE")
    # trial 0 died with its worker (Optuna: FAIL), 1 finished but its run was not closed,
    # 2 is still running on another worker
    closed = close_orphan_runs(tracker, parent, {0: "FAIL", 1: "COMPLETE", 2: "RUNNING",
                                                 3: "COMPLETE"})
    assert sorted(closed) == sorted([runs[0].run_id, runs[1].run_id])
    status = {n: tracker.client.get_run(r.run_id) for n, r in enumerate(runs)}
    assert status[0].info.status == "FAILED"
    assert "worker stopped" in status[0].data.tags["error"]
    assert status[1].info.status == "FINISHED"
    assert status[2].info.status == "RUNNING"
    assert close_orphan_runs(tracker, parent, {0: "FAIL", 1: "COMPLETE"}) == []


def test_refresh_parent_logs_summaries(tracker, tmp_path):
    exp, parent = create_study_run(tracker, "summary", CONFIG)
    study = optuna.create_study(direction="minimize")
    for i, (lr, p) in enumerate([(1e-3, 0.1), (1e-2, 0.3), (1e-1, 0.5)]):
        trial = study.ask({"lr": optuna.distributions.FloatDistribution(1e-4, 1, log=True),
                           "dropout": optuna.distributions.FloatDistribution(0, 0.9)})
        trial.report(1.0 + i, 1)
        trial.set_user_attr("f1_by_attribute", {a: 0.1 * i + 0.2 for a in ATTRS})
        study.tell(trial, 0.5 + i)
        del lr, p
    board = pd.DataFrame({"trial": [0, 1, 2], "value": [0.5, 1.5, 2.5]})
    written = refresh_parent(tracker, parent, study, board)
    pngs = {"optimization_history.png", "param_importances.png", "parallel_coordinate.png",
            "intermediate_values.png"}
    assert {"leaderboard.csv", "f1_by_attribute.png", "report.html"} | pngs == set(written)
    client = tracker.client
    top = {f.path for f in client.list_artifacts(parent)}
    assert {"leaderboard.csv", "f1_by_attribute.png", "summary"} <= top
    assert {Path(f.path).name for f in client.list_artifacts(parent, "summary")} == (
        pngs | {"report.html"})
    run = client.get_run(parent)
    assert run.data.metrics["study_best/trial_number"] == 0
    assert run.data.metrics["study_best/value"] == 0.5
    assert run.data.metrics["trials/finished"] == 3
    csv = client.download_artifacts(parent, "leaderboard.csv", str(tmp_path))
    assert pd.read_csv(csv)["value"].tolist() == [0.5, 1.5, 2.5]


def test_refresh_parent_never_fails_on_plots(tracker, caplog):
    """One trial, no F1 attr, a malformed attr: summaries that cannot be drawn are skipped."""
    exp, parent = create_study_run(tracker, "sparse", CONFIG)
    study = optuna.create_study()
    study.enqueue_trial({})
    trial = study.ask()
    trial.set_user_attr("f1_by_attribute", [0.1, 0.2])  # wrong length: the heatmap is skipped
    study.tell(trial, 1.0)
    written = refresh_parent(tracker, parent, study)
    assert "leaderboard.csv" in written
    assert "f1_by_attribute.png" not in written
    assert "param_importances.png" not in written
    assert "skipped f1_by_attribute.png" in caplog.text
    # a study without any finished trial refreshes too
    assert refresh_parent(tracker, parent, optuna.create_study()) == ["leaderboard.csv"]


def test_f1_by_attribute_prefers_tuned_column(tmp_path):
    report = make_fit(tmp_path).report
    assert f1_by_attribute(report)["Male"] == 0.65
    report.loc[1, "f1_tuned"] = np.nan  # no positives: F1 undefined
    assert json.dumps(f1_by_attribute(report)) == (
        '{"Eyeglasses": 0.75, "Male": null, "Smiling": 0.55}')  # strict JSON for Optuna
    assert f1_by_attribute(report.drop(columns="f1_tuned"))["Male"] == 0.6
    with pytest.raises(TrackingError, match="no F1 column"):
        f1_by_attribute(report[["attribute", "precision"]])


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_server_is_one_clear_error_with_masked_password():
    port = _closed_port()
    tracker = Tracker(f"http://bob:s3cret@127.0.0.1:{port}", retries=1, backoff=0.01, timeout=2)
    started = time.monotonic()
    with pytest.raises(TrackingError) as info:
        tracker.check()
    message = str(info.value)
    assert message.startswith(f"MLflow tracking store http://bob:***@127.0.0.1:{port} unreachable")
    assert message.endswith("start the server or pass --tracking-uri")
    assert "s3cret" not in message and "\n" not in message
    assert time.monotonic() - started < 60  # not MLflow's minutes of retries


def test_unreachable_database_is_a_tracking_error(tmp_path):
    # a SQLite "file" that is a folder cannot be opened
    (tmp_path / "taken.db").mkdir()
    tracker = Tracker(f"sqlite:///{tmp_path / 'taken.db'}", retries=0)
    with pytest.raises(TrackingError, match="unreachable"):
        tracker.check()
