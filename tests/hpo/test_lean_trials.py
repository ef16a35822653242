"""Lean trials (issue 26): a trial's resume states are written and uploaded in the
background, overlapping the next epoch; whatever way the trial ends, that work is done when
`optimize` hands back. Real Optuna studies on temporary SQLite storages, real MLflow, the tiny
architecture on synthetic faces."""

from __future__ import annotations

import signal
import threading

import optuna
import pytest
from mlflow import MlflowClient

from celebhpo.config import load_study_file
from celebhpo.hpo import create_study, load_study, optimize
from celebhpo.hpo.objective import RESUME_DIR, RESUME_FILE, RESUME_TAG
from celebhpo.stopping import Interrupted, StopRequest
from celebhpo.training.checkpoint import load_resume_state
from tests.helpers import mlflow_runs, write_study

TS = optuna.trial.TrialState


def _study(tmp_path, synth_root, name: str, epochs: int) -> tuple[str, str]:
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = load_study_file(write_study(tmp_path / "s.toml", synth_root, name=name,
                                      space="lr = [0.01]", epochs=epochs))
    create_study(cfg, storage=storage, grid=True, tracking_uri=uri)
    return storage, uri


def _files(client: MlflowClient, run_id: str, folder: str | None = None) -> list[str]:
    return sorted(f.path for f in client.list_artifacts(run_id, folder))


def test_a_finished_trial_hands_back_its_checkpoint_and_no_resume_state(tmp_path, synth_root):
    storage, uri = _study(tmp_path, synth_root, "lean", epochs=3)
    optimize(storage=storage, progress=False, echo=lambda _: None)
    (trial,) = load_study("lean", storage)[0].trials
    assert trial.state == TS.COMPLETE and trial.user_attrs["epochs_run"] == 3
    run = mlflow_runs(uri, "lean")[0]
    client = MlflowClient(uri)
    # the checkpoint is there, and every epoch's state, uploaded in the background, was
    # done before the end deleted the states: none came back after the delete
    assert "model.pt" in _files(client, run.info.run_id)
    assert _files(client, run.info.run_id, RESUME_DIR) == []
    assert RESUME_TAG not in client.get_run(run.info.run_id).data.tags
    assert run.info.status == "FINISHED"


def test_a_stop_request_leaves_the_state_of_the_last_epoch_logged(tmp_path, synth_root):
    # many short epochs: the request comes after epoch 1, long before the last
    storage, uri = _study(tmp_path, synth_root, "stopped", epochs=40)
    client = MlflowClient(uri)
    stop = StopRequest()

    def request_after_epoch_one() -> None:
        # a Ctrl-C as the trial's run shows its first epoch (no signal: this is pytest's
        # process; the request is what the handler would record)
        while not stop.requested:
            study = load_study("stopped", storage)[0]
            run_id = next((t.user_attrs.get("mlflow_run_id") for t in study.trials), None)
            if run_id and client.get_metric_history(run_id, "val_loss"):
                stop.request(signal.SIGINT)
            stop.wait(0.02)

    watcher = threading.Thread(target=request_after_epoch_one)
    watcher.start()
    try:
        with pytest.raises(Interrupted):
            optimize(storage=storage, progress=False, echo=lambda _: None, stop=stop)
    finally:
        stop.request(signal.SIGINT)
        watcher.join()
    trial = load_study("stopped", storage)[0].trials[0]
    assert trial.state == TS.FAIL  # failed and re-queued: a retry resumes from its state
    run_id = trial.user_attrs["mlflow_run_id"]
    logged = max(m.step for m in client.get_metric_history(run_id, "val_loss"))
    assert 1 <= logged < 40
    # the last epoch logged has its state in the run, complete and tagged, as optimize
    # hands back: its upload was joined, not cut off
    assert int(client.get_run(run_id).data.tags[RESUME_TAG]) == logged
    assert _files(client, run_id, RESUME_DIR) == [f"{RESUME_DIR}/{RESUME_FILE}"]
    path = client.download_artifacts(run_id, f"{RESUME_DIR}/{RESUME_FILE}", str(tmp_path))
    state = load_resume_state(path)
    assert state["epoch"] == logged and len(state["history"]) == logged
    assert [row["val_loss"] for row in state["history"]] == pytest.approx(
        [m.value for m in sorted(client.get_metric_history(run_id, "val_loss"),
                                 key=lambda m: m.step)])
