"""hpo.studies in one process: create / no-op / conflict / replace, storages, name inference,
optimize with budget and resume, leaderboard order, NaN trials, pruning.

Real Optuna, MLflow (SQLite in a temp dir) and training on tiny synthetic faces.
"""

from __future__ import annotations

import socket
import sqlite3
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient

from celebhpo.config import load_study_file
from celebhpo.errors import ConfigError, DataError, StudyError, TrackingError
from celebhpo.hpo import (
    StudyRecord,
    create_study,
    launch_workers,
    leaderboard,
    list_studies,
    load_study,
    open_storage,
    open_study,
    optimize,
    parse_storage,
)
from celebhpo.report import format_trial_line
from tests.helpers import mlflow_runs, write_study

TS = optuna.trial.TrialState


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('mlruns') / 'mlflow.db'}"


@pytest.fixture
def storage(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'studies' / 'optuna.db'}"


# -- create ----------------------------------------------------------------------------------
def test_create_noop_conflict_replace(tmp_path, synth_root, storage, tracking_uri):
    cfg = load_study_file(write_study(tmp_path / "s.toml", synth_root, name="create"))
    first = create_study(cfg, storage=storage, grid=True, tracking_uri=tracking_uri)
    assert first.created and "grid of 2 points" in first.message
    assert (tmp_path / "studies" / "optuna.db").is_file()  # the folder was made

    again = create_study(cfg, storage=storage, grid=True, tracking_uri=tracking_uri)
    assert not again.created and "nothing to do" in again.message

    other = cfg.with_overrides(["train.epochs=2"])
    with pytest.raises(StudyError, match=r"another config \(train.epochs: 1 -> 2\).*--replace"):
        create_study(other, storage=storage, grid=True, tracking_uri=tracking_uri)

    replaced = create_study(other, storage=storage, grid=True, replace=True,
                            tracking_uri=tracking_uri)
    assert replaced.created and "replaced" in replaced.message
    study, stored = load_study("create", storage)
    assert stored.train.epochs == 2
    assert Path(stored.data.root).is_absolute()
    record = StudyRecord.of(study)
    assert record.grid is True and record.tracking_uri == tracking_uri
    assert record.config == stored.to_dict() and record.metric == "val_loss"
    # the queued grid points, in the file's order, each tagged with its GridSampler grid_id
    waiting = study.get_trials(states=(TS.WAITING,))
    assert [t.params["lr"] for t in waiting] == [0.003, 0.03]
    assert sorted(t.system_attrs["grid_id"] for t in waiting) == [0, 1]
    client = MlflowClient(tracking_uri)
    parent = client.get_run(record.parent_run_id)
    assert parent.info.experiment_id == record.experiment_id
    assert parent.data.tags["celebhpo.study_key"] == record.study_key


def test_grid_with_a_range_is_an_error(tmp_path, synth_root, storage, tracking_uri):
    cfg = load_study_file(write_study(tmp_path / "s.toml", synth_root, name="ranged",
                                      space="lr = { low = 0.001, high = 0.1, log = true }"))
    with pytest.raises(ConfigError, match=r"\[space\] lr is a range; a grid needs a list"):
        create_study(cfg, storage=storage, grid=True, tracking_uri=tracking_uri)
    assert not (tmp_path / "studies").exists()  # nothing half-made, not even the storage
    # the same space is fine for a sampler that searches ranges
    cfg.study.sampler = "random"
    assert create_study(cfg, storage=storage, tracking_uri=tracking_uri).created


def test_split_sizes_beyond_the_data_are_refused_at_create(tmp_path, synth_root, storage,
                                                            tracking_uri):
    """synth_root has 30 test images: asking for 50 fails now, not in the first trial (or
    at export), and nothing is made; data that is not reachable from here is not checked."""
    cfg = load_study_file(write_study(tmp_path / "s.toml", synth_root, name="sizes"),
                          overrides=["data.test_size=50"])
    with pytest.raises(DataError) as info:
        create_study(cfg, storage=storage, tracking_uri=tracking_uri)
    assert "asked for 50 test images but the split has 30; lower data.test_size" in str(info.value)
    assert not (tmp_path / "studies").exists()
    assert MlflowClient(tracking_uri).get_experiment_by_name("sizes") is None
    cfg.data.root = str(tmp_path / "on-the-workers-only")
    assert create_study(cfg, storage=storage, tracking_uri=tracking_uri).created


def test_storage_urls(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = parse_storage("studies/shared.log")
    assert spec.kind == "journal" and spec.target == str(tmp_path / "studies" / "shared.log")
    assert parse_storage(f"journal://{tmp_path}/x.journal").kind == "journal"
    assert parse_storage("postgresql+psycopg2://u:p@h/db").heartbeat
    assert not parse_storage("sqlite:///a.db").multiprocess
    with pytest.raises(StudyError, match=r"not a URL; use sqlite:///studies/x.db"):
        parse_storage("studies/x.db")
    with pytest.raises(StudyError, match="no study storage at"):
        open_storage("sqlite:///nothing/here.db", create=False)
    assert not (tmp_path / "nothing").exists()
    open_storage("deep/er/journal.log")
    assert (tmp_path / "deep" / "er" / "journal.log").is_file()


def test_unreachable_database_message_masks_the_password():
    url = "postgresql+psycopg2://alice:hunter2@127.0.0.1:1/nowhere"
    with pytest.raises(StudyError) as info:
        open_storage(url)
    text = str(info.value)
    assert "hunter2" not in text and "alice:***@127.0.0.1" in text
    assert "cannot open storage" in text and "\n" not in text


def test_study_name_inference(tmp_path, synth_root, storage, tracking_uri):
    empty = storage.replace("optuna.db", "empty.db")
    open_storage(empty)
    with pytest.raises(StudyError, match="no studies in .*empty.db; create one with"):
        load_study(None, empty)
    cfg = load_study_file(write_study(tmp_path / "s.toml", synth_root, name="only"))
    create_study(cfg, storage=storage, grid=True, tracking_uri=tracking_uri)
    study, _ = load_study(None, storage)
    assert study.study_name == "only"
    create_study(cfg, storage=storage, grid=True, name="second", tracking_uri=tracking_uri)
    with pytest.raises(StudyError, match=r"holds 2 studies \(only, second\); pick one"):
        load_study(None, storage)
    with pytest.raises(StudyError, match=r"study 'nope' not found .*studies there: only, second"):
        load_study("nope", storage)
    table = list_studies(storage)
    assert list(table["name"]) == ["only", "second"]
    assert list(table["waiting"]) == [2, 2]


def test_study_record_is_what_the_study_stores(tmp_path, synth_root, storage, tracking_uri):
    """The record is the study's user attrs, typed: read back as written, None for a study
    celebhpo did not make (which open_study refuses by name)."""
    cfg = load_study_file(write_study(tmp_path / "s.toml", synth_root, name="rec"))
    create_study(cfg, storage=parse_storage(storage), grid=True, tracking_uri=tracking_uri)
    study, stored, record = open_study("rec", parse_storage(storage))
    assert record == StudyRecord.read(study.user_attrs) == StudyRecord.of(study)
    assert StudyRecord.read(record.to_attrs()) == record
    assert set(record.to_attrs()) == {"config", "grid", "tracking_uri", "experiment_id",
                                      "parent_run_id", "study_key", "data_fingerprint",
                                      "warm_start"}
    assert (record.sampler, record.objectives) == ("grid", []) and stored.study.name == "rec"
    foreign = optuna.create_study(study_name="foreign", storage=storage)
    assert StudyRecord.of(foreign) is None
    with pytest.raises(StudyError, match="'foreign' .* was not created by celebhpo"):
        open_study("foreign", storage)
    assert list(list_studies(storage)["sampler"]) == ["?", "grid"]


def test_launch_workers_needs_a_shared_storage(tmp_path):
    with pytest.raises(StudyError, match="SQLite, which is for one process"):
        launch_workers(["0", "1"], ["optimize"], parse_storage(f"sqlite:///{tmp_path}/x.db"))
    with pytest.raises(StudyError, match="lists a device twice"):
        launch_workers(["0", "0"], ["optimize"], parse_storage(str(tmp_path / "x.log")))


def test_launched_workers_get_the_storage_by_environment(tmp_path, monkeypatch, capfd):
    """The launcher's storage reaches each worker as CELEBHPO_STORAGE (its --storage), never
    argv, and wins over a CELEBHPO_STORAGE the launcher itself was started with."""
    journal = tmp_path / "shared.log"
    optuna.create_study(study_name="by-env", storage=open_storage(str(journal)))
    monkeypatch.setenv("CELEBHPO_STORAGE", str(tmp_path / "elsewhere.log"))
    assert launch_workers(["0"], ["study", "list"], parse_storage(str(journal))) == 0
    out = capfd.readouterr().out
    assert "by-env" in out, out


# -- optimize ---------------------------------------------------------------------------------
def test_budget_resume_leaderboard_and_tracking(tmp_path, synth_root, storage, tracking_uri):
    cfg = load_study_file(write_study(tmp_path / "s.toml", synth_root, name="budget",
                                      space="lr = [0.0003, 0.003, 0.03]"))
    create_study(cfg, storage=storage, grid=True, tracking_uri=tracking_uri)
    lines: list[str] = []
    first = optimize(storage=storage, n_trials=2, progress=False, echo=lines.append,
                     on_trial=lambda t: lines.append(format_trial_line(t)))
    assert first.ran == [0, 1] and first.stopped == "the study holds 2 trials (--trials 2)"
    assert [line.split()[:3] for line in lines[:2]] == [["trial", "0", "COMPLETE"],
                                                        ["trial", "1", "COMPLETE"]]
    # budget shared: asking for 2 again runs nothing; without a budget, the grid's rest
    assert optimize(study_name="budget", storage=storage, n_trials=2, progress=False,
                    echo=lines.append).ran == []
    rest = optimize(storage=storage, progress=False, echo=lines.append)
    assert rest.ran == [2] and rest.stopped == "the grid is exhausted"
    assert rest.counts == {"COMPLETE": 3}

    study, _ = load_study("budget", storage)
    trials = study.get_trials()
    assert sorted(t.params["lr"] for t in trials) == [0.0003, 0.003, 0.03]
    board = leaderboard(study)
    assert list(board["val_loss"]) == sorted(t.value for t in trials)
    assert board["trial"].iloc[0] == study.best_trial.number == rest.best_trial
    assert list(board.columns[:3]) == ["trial", "state", "lr"]
    assert (board["epochs"] == 1).all()

    runs = mlflow_runs(tracking_uri, "budget")
    assert sorted(runs) == [0, 1, 2]
    for t in trials:
        run = runs[t.number]
        assert run.info.run_id == t.user_attrs["mlflow_run_id"]
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == study.user_attrs["parent_run_id"]
        assert len(t.user_attrs["f1_by_attribute"]) == 40
        assert t.user_attrs["device"] == "cpu" and t.user_attrs["duration_s"] > 0
        names = {a.path for a in MlflowClient(tracking_uri).list_artifacts(run.info.run_id)}
        # checkpoints = "best": logged only by a trial that was the best when it ended
        assert ("model.pt" in names) == t.user_attrs["checkpoint_logged"]
    assert study.best_trial.user_attrs["checkpoint_logged"]


def test_diverging_trial_fails_with_its_reason_and_study_goes_on(
        tmp_path, synth_root, storage, tracking_uri):
    cfg = load_study_file(write_study(tmp_path / "s.toml", synth_root, name="nan",
                                      space="lr = [1e12, 0.003]"))
    create_study(cfg, storage=storage, grid=True, tracking_uri=tracking_uri)
    summary = optimize(storage=storage, progress=False, echo=lambda _: None)
    assert summary.counts == {"FAIL": 1, "COMPLETE": 1}
    study, _ = load_study("nan", storage)
    failed = study.get_trials(states=(TS.FAIL,))[0]
    assert failed.params["lr"] == 1e12
    assert "nan" in failed.user_attrs["fail_reason"].lower()
    run = mlflow_runs(tracking_uri, "nan")[failed.number]
    assert run.info.status == "FAILED" and "nan" in run.data.tags["error"].lower()
    board = leaderboard(study)
    assert list(board["state"]) == ["COMPLETE", "FAIL"]
    assert "nan" in board["note"].iloc[1].lower()


def test_weak_trial_is_pruned(tmp_path, synth_root, storage, tracking_uri):
    # the first trial barely moves; the second's lr is too high, its val_loss jumps in the
    # first epoch above the first trial's, and the median pruner stops it there
    cfg = load_study_file(write_study(
        tmp_path / "s.toml", synth_root, name="prune", space="lr = [1e-7, 0.03]", epochs=3,
        pruner="median", study_extra="n_startup_trials = 1\nn_warmup_steps = 0"))
    create_study(cfg, storage=storage, grid=True, tracking_uri=tracking_uri)
    summary = optimize(storage=storage, progress=False, echo=lambda _: None)
    assert summary.counts == {"COMPLETE": 1, "PRUNED": 1}
    study, _ = load_study("prune", storage)
    pruned = study.get_trials(states=(TS.PRUNED,))[0]
    assert pruned.params["lr"] == 0.03
    assert pruned.user_attrs["pruned_at"] == 1 and pruned.user_attrs["epochs_run"] == 1
    run = mlflow_runs(tracking_uri, "prune")[pruned.number]
    assert run.info.status == "KILLED" and run.data.tags["state"] == "PRUNED"
    assert leaderboard(study)["note"].iloc[1] == "pruned at epoch 1"


def test_random_search_with_ranges(tmp_path, synth_root, storage, tracking_uri):
    cfg = load_study_file(write_study(
        tmp_path / "s.toml", synth_root, name="search", sampler="random",
        space="lr = { low = 0.001, high = 0.01, log = true }\n"
              "num_features = { low = 8, high = 32, step = 8 }"))
    create_study(cfg, storage=storage, tracking_uri=tracking_uri)
    summary = optimize(storage=storage, n_trials=2, progress=False, echo=lambda _: None)
    assert summary.counts == {"COMPLETE": 2}
    study, _ = load_study("search", storage)
    for t in study.trials:
        assert 0.001 <= t.params["lr"] <= 0.01 and t.params["num_features"] in (8, 16, 24, 32)
    # the stored db is a plain SQLite file holding our attrs
    with sqlite3.connect(storage[len("sqlite:///"):]) as db:
        keys = {k for (k,) in db.execute("select key from study_user_attributes")}
    assert {"config", "grid", "tracking_uri", "experiment_id", "parent_run_id",
            "study_key"} <= keys


def test_unreachable_tracking_store_stops_before_any_training(
        tmp_path, synth_root, storage, tracking_uri):
    cfg = load_study_file(write_study(tmp_path / "s.toml", synth_root, name="offline"))
    create_study(cfg, storage=storage, grid=True, tracking_uri=tracking_uri)
    study, _ = load_study("offline", storage)
    with socket.socket() as sock:  # a port nobody listens on: the server "went down"
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    study.set_user_attr("tracking_uri", f"http://alice:hunter2@127.0.0.1:{port}")
    with pytest.raises(TrackingError, match="unreachable") as info:
        optimize(storage=storage, progress=False, echo=lambda _: None)
    assert "hunter2" not in str(info.value)
    assert {t.state for t in study.get_trials()} == {TS.WAITING}  # no trial started
