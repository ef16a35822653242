"""A study's MLflow side end to end (issue 14, cases 4, 5 and 7): its parent run is its own
whatever its name, its artifacts go where every worker writes, and it keeps no password.

Real Optuna storages, real MLflow stores (SQLite, PostgreSQL, a server behind a real
password-checking proxy) and real trials on tiny synthetic faces.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from celebhpo.cli import cli
from celebhpo.config import load_study_file
from celebhpo.errors import TrackingError
from celebhpo.hpo import StudyRecord, create_study, list_studies, load_study, optimize
from tests.helpers import write_study
from tests.tracking.http_proxy import HttpProxy


def _quiet(_: str) -> None:
    pass


def _children(client: MlflowClient, parent: str, exp: str) -> list:
    return client.search_runs([exp], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'")


def _leaderboard_lrs(client: MlflowClient, parent: str, tmp: Path) -> list[float]:
    path = client.download_artifacts(parent, "leaderboard.csv", str(tmp))
    return list(pd.read_csv(path)["lr"])


# -- case 4 -----------------------------------------------------------------------------------
def test_a_new_study_of_an_old_name_gets_a_parent_run_of_its_own(tmp_path, synth_root):
    tracking = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    storage = f"sqlite:///{tmp_path / 'studies' / 'optuna.db'}"
    client = MlflowClient(tracking)
    made = []
    for lr in (0.01, 0.03):
        # the second time, a fresh Optuna storage (the old file gone), the same tracking store
        Path(storage[len("sqlite:///"):]).unlink(missing_ok=True)
        cfg = load_study_file(write_study(tmp_path / "s.toml", synth_root, name="again",
                                          space=f"lr = [{lr}]"))
        assert create_study(cfg, storage=storage, grid=True, tracking_uri=tracking).created
        assert optimize(storage=storage, progress=False, echo=_quiet).ran == [0]
        made.append(StudyRecord.of(load_study("again", storage)[0]))
    first, second = made
    assert first.experiment_id == second.experiment_id  # one experiment per name
    assert first.parent_run_id != second.parent_run_id
    assert first.study_key != second.study_key
    exp = first.experiment_id
    for record, name, lr in ((first, "again", 0.01), (second, "again (2)", 0.03)):
        parent = client.get_run(record.parent_run_id)
        assert parent.info.run_name == name
        assert parent.data.tags["celebhpo.study_key"] == record.study_key
        # one t000 under each parent, and each parent's summary is its own study's
        children = _children(client, record.parent_run_id, exp)
        assert [r.info.run_name for r in children] == [f"t000 lr={lr}"]
        assert _leaderboard_lrs(client, record.parent_run_id, tmp_path / name) == [lr]


def test_a_replaced_study_supersedes_its_old_parent_run(tmp_path, synth_root):
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    cfg = load_study_file(write_study(tmp_path / "s.toml", synth_root, name="swap"))
    create_study(cfg, storage=storage, grid=True, tracking_uri=tracking)
    old = StudyRecord.of(load_study("swap", storage)[0])
    create_study(cfg.with_overrides(["train.epochs=2"]), storage=storage, grid=True,
                 replace=True, tracking_uri=tracking)
    new = StudyRecord.of(load_study("swap", storage)[0])
    client = MlflowClient(tracking)
    assert new.parent_run_id != old.parent_run_id
    assert client.get_run(old.parent_run_id).data.tags["superseded"] == "true"
    assert "superseded" not in client.get_run(new.parent_run_id).data.tags


# -- case 5 -----------------------------------------------------------------------------------
def test_a_database_tracking_uri_needs_artifacts_every_worker_reaches(
        tmp_path, synth_root, pg_url, monkeypatch):
    creator, worker = tmp_path / "creator", tmp_path / "worker"
    creator.mkdir()
    worker.mkdir()
    storage = str(tmp_path / "studies.log")
    cfg = load_study_file(write_study(tmp_path / "s.toml", synth_root, name="pgart",
                                      space="lr = [0.01]"))
    monkeypatch.chdir(creator)
    with pytest.raises(TrackingError) as info:
        create_study(cfg, storage=storage, grid=True, tracking_uri=pg_url)
    line = str(info.value)
    assert "is a database without an artifact location" in line and "\n" not in line
    assert f"{creator.as_uri()}/mlruns/artifacts on this machine only" in line
    assert "--artifacts-destination" in line
    assert list_studies(storage).empty  # nothing half-made
    assert MlflowClient(pg_url).get_experiment_by_name("pgart") is None

    # the command line says the same in one line, and takes the flag it names
    create = ["study", "create", str(tmp_path / "s.toml"), "--grid", "--storage", storage,
              "--tracking-uri", pg_url]
    refused = CliRunner().invoke(cli, create)
    assert refused.exit_code == 1 and refused.output.count("\n") == 1, refused.output
    assert "--artifacts-destination" in refused.output
    shared = tmp_path / "shared" / "artifacts"
    made = CliRunner().invoke(cli, [*create, "--artifacts-destination", str(shared)])
    assert made.exit_code == 0, made.output
    record = StudyRecord.of(load_study("pgart", storage)[0])
    client = MlflowClient(pg_url)
    assert client.get_experiment(record.experiment_id).artifact_location == shared.as_uri()
    # a worker started in another folder writes where the study said, not into its own cwd
    monkeypatch.chdir(worker)
    assert optimize(storage=storage, progress=False, echo=_quiet).ran == [0]
    run_id = load_study("pgart", storage)[0].trials[0].user_attrs["mlflow_run_id"]
    assert (shared / run_id / "artifacts" / "classification_report.csv").is_file()
    assert not (worker / "mlruns").exists() and not (creator / "mlruns").exists()


# -- case 7 -----------------------------------------------------------------------------------
def test_the_study_keeps_no_password_and_each_worker_brings_its_own(
        tmp_path, synth_root, tracking_server, monkeypatch, capfd):
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    cfg = load_study_file(write_study(tmp_path / "s.toml", synth_root, name="secret",
                                      space="lr = [0.01, 0.03]"))
    with HttpProxy(tracking_server, auth=("bob", "s3cret")) as proxy:
        with_password = proxy.url.replace("http://", "http://bob:s3cret@")
        created = create_study(cfg, storage=storage, grid=True, tracking_uri=with_password)
        assert "bob:***@" in created.message and "s3cret" not in created.message
        study, _ = load_study("secret", storage)
        assert study.user_attrs["tracking_uri"] == proxy.url
        assert b"s3cret" not in Path(storage[len("sqlite:///"):]).read_bytes()
        # the same study again is a no-op, with or without the password
        assert not create_study(cfg, storage=storage, grid=True,
                                tracking_uri=with_password).created

        # a worker without the password: one line saying where to give it, nothing run
        with pytest.raises(TrackingError, match="refused this process's credentials") as info:
            optimize(storage=storage, progress=False, echo=_quiet)
        assert "MLFLOW_TRACKING_USERNAME" in str(info.value)
        assert {t.state.name for t in load_study("secret", storage)[0].trials} == {"WAITING"}
        # ... with it in MLFLOW_TRACKING_URI (the same server), or in MLflow's own variables
        lines: list[str] = []
        monkeypatch.setenv("MLFLOW_TRACKING_URI", with_password)
        assert optimize(storage=storage, n_trials=1, progress=False, echo=lines.append).ran == [0]
        monkeypatch.delenv("MLFLOW_TRACKING_URI")
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "bob")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "s3cret")
        assert optimize(storage=storage, progress=False, echo=lines.append).ran == [1]
        assert "s3cret" not in "\n".join(lines)
        # nor in what MLflow prints itself ("View run ... at: URL" as a run ends)
        assert "s3cret" not in "".join(capfd.readouterr())

    study, _ = load_study("secret", storage)
    client = MlflowClient(tracking_server)
    for run_id in [study.user_attrs["parent_run_id"],
                   *(t.user_attrs["mlflow_run_id"] for t in study.trials)]:
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED"
        assert "s3cret" not in json.dumps([run.data.params, run.data.tags])


def test_optimize_tracking_uri_must_name_the_studys_store(tmp_path, synth_root):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = load_study_file(write_study(tmp_path / "s.toml", synth_root, name="flag",
                                      space="lr = [0.01]"))
    create_study(cfg, storage=storage, grid=True, tracking_uri=uri)
    other = CliRunner().invoke(cli, ["optimize", "--storage", storage, "--tracking-uri",
                                     f"sqlite:///{tmp_path / 'other.db'}"])
    assert other.exit_code == 1 and "is not this study's tracking store" in other.output
    assert load_study("flag", storage)[0].trials[0].state.name == "WAITING"
    same = CliRunner().invoke(cli, ["optimize", "--storage", storage, "--tracking-uri", uri])
    assert same.exit_code == 0, same.output
    assert load_study("flag", storage)[0].trials[0].state.name == "COMPLETE"
