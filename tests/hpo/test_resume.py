"""Resume on retry (issue 14): a worker killed with SIGKILL after epoch 2 of 4; the next
`optimize` re-queues its trial, and the retry trains only the epochs after the last resume
state, yet ends with the value and best metrics of an uninterrupted run. Real processes,
SQLite Optuna storage, a real MLflow store, the tiny architecture on synthetic faces."""

from __future__ import annotations

import logging
import time

import optuna
import pytest
import torch
from mlflow import MlflowClient

from celebhpo.config import load_study_file
from celebhpo.hpo import create_study, load_study, optimize
from celebhpo.hpo.objective import RESUME_DIR, RESUME_TAG
from tests.helpers import logs, mlflow_runs, start, write_study

TS = optuna.trial.TrialState
EPOCHS = 4
SPACE = "lr = [0.01]"  # one grid point: the retry and the reference train the same config


@pytest.fixture
def tracking_uri(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture
def one_thread():
    """This process trains like the killed worker (OMP_NUM_THREADS=1), so the in-process
    retry and reference runs add up their floats in the same order."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _study(tmp_path, synth_root, tracking_uri, name, extra="", epochs=EPOCHS):
    storage = f"sqlite:///{tmp_path / f'{name}.db'}"
    path = write_study(tmp_path / f"{name}.toml", synth_root, name=name, space=SPACE,
                       epochs=epochs, study_extra=extra, train_size=240)
    # 32 px: epochs long enough (about half a second here) to kill the worker between two
    path.write_text(path.read_text().replace("image_size = 16", "image_size = 32"))
    create_study(load_study_file(path), storage=storage, grid=True, tracking_uri=tracking_uri)
    return storage


def _kill_after_epoch(tmp_path, storage, name, tracking_uri, epoch: int) -> tuple[str, int]:
    """Run a worker process and kill -9 it once its trial's run holds the resume state of
    `epoch`. Returns (that run's id, the resume epoch it holds after the kill)."""
    log = tmp_path / f"{name}.log"
    proc = start(["optimize", "--storage", storage], tmp_path, log)
    client = MlflowClient(tracking_uri)
    deadline = time.monotonic() + 300
    run_id, seen = None, 0
    while seen < epoch:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the worker ended before epoch {epoch}'s resume state:\n{logs(log)}")
        if run_id is None:
            study, _ = load_study(name, storage)
            run_id = next((t.user_attrs.get("mlflow_run_id") for t in study.trials), None)
        if run_id is not None:
            seen = int(client.get_run(run_id).data.tags.get(RESUME_TAG, 0))
        time.sleep(0.02)
    proc.kill()
    proc.wait(timeout=60)
    return run_id, int(client.get_run(run_id).data.tags[RESUME_TAG])


def _curve(client: MlflowClient, run_id: str, key: str) -> dict[int, float]:
    return {m.step: m.value for m in client.get_metric_history(run_id, key)}


def _resume_files(client: MlflowClient, run_id: str) -> list[str]:
    return [f.path for f in client.list_artifacts(run_id, RESUME_DIR)]


def test_a_killed_trial_resumes_after_its_last_epoch(tmp_path, synth_root, tracking_uri,
                                                     one_thread, caplog):
    storage = _study(tmp_path, synth_root, tracking_uri, "killed")
    dead_run, k = _kill_after_epoch(tmp_path, storage, "killed", tracking_uri, epoch=2)
    client = MlflowClient(tracking_uri)
    assert 2 <= k < EPOCHS, k  # killed during epoch 3 (4 only if the machine stalled)
    assert _resume_files(client, dead_run) == [f"{RESUME_DIR}/state.pt"]
    study, _ = load_study("killed", storage)
    assert study.trials[0].state == TS.RUNNING  # what kill -9 leaves behind

    # the next optimize finds the dead worker's trial, re-queues it, and the retry resumes
    lines: list[str] = []
    with caplog.at_level(logging.WARNING, logger="celebhpo.hpo.objective"):
        summary = optimize(storage=storage, progress=False, echo=lines.append)
    assert summary.counts == {"COMPLETE": 1, "FAIL": 1}, lines
    study, _ = load_study("killed", storage)
    dead, retry = study.trials
    assert "died while running it" in dead.user_attrs["fail_reason"]
    assert retry.system_attrs["failed_trial"] == 0 and retry.state == TS.COMPLETE
    assert retry.user_attrs["resumed_from_epoch"] == k and retry.user_attrs["epochs_run"] == 4
    # through the worker's echo, which adds its [gpuK] label under optimize --devices
    assert f"trial 1 resumed from epoch {k} of MLflow run {dead_run}" in lines

    runs = mlflow_runs(tracking_uri, "killed")
    new_run = runs[1].info.run_id
    assert new_run == retry.user_attrs["mlflow_run_id"] != dead_run
    tags = runs[1].data.tags
    assert tags["retry_of"] == tags["resumed_from_run"] == dead_run
    assert tags["resumed_from_epoch"] == str(k)
    # the whole curve, for Optuna and in the new run; the first k epochs are replayed (their
    # timings are the dead worker's), only the ones after were trained again
    assert sorted(retry.intermediate_values) == [1, 2, 3, 4]
    assert [retry.intermediate_values[e] for e in range(1, k + 1)] == [
        dead.intermediate_values[e] for e in range(1, k + 1)]
    old, new = _curve(client, dead_run, "epoch_seconds"), _curve(client, new_run, "epoch_seconds")
    assert sorted(new) == [1, 2, 3, 4]
    assert [new[e] for e in range(1, k + 1)] == [old[e] for e in range(1, k + 1)]
    assert all(new[e] != old.get(e) for e in range(k + 1, EPOCHS + 1))
    # finished for good: the resume states are deleted, the tag with them
    assert _resume_files(client, new_run) == _resume_files(client, dead_run) == []
    assert RESUME_TAG not in client.get_run(new_run).data.tags
    assert RESUME_TAG not in client.get_run(dead_run).data.tags

    # the same configuration, never interrupted, in a study of its own
    ref_storage = _study(tmp_path, synth_root, tracking_uri, "straight")
    optimize(storage=ref_storage, progress=False, echo=lambda _: None)
    ref_study, _ = load_study("straight", ref_storage)
    (ref,) = ref_study.trials
    assert retry.value == pytest.approx(ref.value, rel=1e-5)
    assert retry.intermediate_values == pytest.approx(ref.intermediate_values, rel=1e-5)
    for key in ("best_epoch", "val_loss", "val_mean_acc", "val_map"):
        assert retry.user_attrs[key] == pytest.approx(ref.user_attrs[key], rel=1e-5), key
    ref_best = mlflow_runs(tracking_uri, "straight")[0].data.metrics
    best = runs[1].data.metrics
    for key in ("best_epoch/epoch", "best_epoch/val_tuned_mean_acc",
                "best_epoch/val_macro_f1"):
        assert best[key] == pytest.approx(ref_best[key], rel=1e-5), key
    assert retry.user_attrs["f1_by_attribute"] == pytest.approx(
        ref.user_attrs["f1_by_attribute"], rel=1e-5)


def test_resume_off_keeps_no_state_and_a_retry_starts_over(tmp_path, synth_root, tracking_uri,
                                                            one_thread):
    # 8 epochs: under load the trial must not finish between the poll and the kill
    storage = _study(tmp_path, synth_root, tracking_uri, "noresume", extra="resume = false",
                     epochs=8)
    log = tmp_path / "noresume.log"
    proc = start(["optimize", "--storage", storage], tmp_path, log)
    client = MlflowClient(tracking_uri)
    deadline = time.monotonic() + 300
    while True:  # kill it after epoch 2: nothing to resume from
        study, _ = load_study("noresume", storage)
        if study.trials and len(study.trials[0].intermediate_values) >= 2:
            break
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the worker ended before epoch 2:\n{logs(log)}")
        time.sleep(0.02)
    proc.kill()
    proc.wait(timeout=60)
    dead_run = study.trials[0].user_attrs["mlflow_run_id"]
    assert _resume_files(client, dead_run) == []
    assert RESUME_TAG not in client.get_run(dead_run).data.tags

    optimize(storage=storage, progress=False, echo=lambda _: None)
    study, _ = load_study("noresume", storage)
    retry = study.trials[1]
    assert retry.state == TS.COMPLETE and "resumed_from_epoch" not in retry.user_attrs
    tags = client.get_run(retry.user_attrs["mlflow_run_id"]).data.tags
    assert "resumed_from_epoch" not in tags and tags["retry_of"] == dead_run
