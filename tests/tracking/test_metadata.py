"""Run metadata on a real `mlflow server`: Source, Created by, git commit, the data set."""

from __future__ import annotations

import hashlib
import json
import time

import pytest

from celebhpo.tracking import Tracker, create_study_run, start_trial
from celebhpo.tracking.metadata import git_commit, source_tags
from tests.helpers import CONFIG

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def test_git_commit_read_from_the_repository_files(tmp_path):
    repo = tmp_path / "repo"
    (repo / ".git" / "refs" / "heads").mkdir(parents=True)
    (repo / "src" / "deep").mkdir(parents=True)
    (repo / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (repo / ".git" / "refs" / "heads" / "main").write_text(COMMIT + "\n")
    assert git_commit(repo / "src" / "deep") == COMMIT
    (repo / ".git" / "refs" / "heads" / "main").unlink()  # packed, after a gc
    (repo / ".git" / "packed-refs").write_text(f"# pack-refs\n{COMMIT} refs/heads/main\n")
    assert git_commit(repo) == COMMIT
    (repo / ".git" / "HEAD").write_text("fedcba\n")  # detached
    assert git_commit(repo) == "fedcba"
    (repo / ".git" / "HEAD").write_text("ref: refs/heads/new\n")  # no commit yet
    assert git_commit(repo) is None


def test_trial_run_metadata_and_dataset(tracking_server, synth_root, tmp_path, monkeypatch):
    repo = tmp_path / "work"
    (repo / ".git" / "refs" / "heads").mkdir(parents=True)
    (repo / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (repo / ".git" / "refs" / "heads" / "main").write_text(COMMIT + "\n")
    monkeypatch.chdir(repo)
    assert source_tags()["mlflow.source.git.commit"] == COMMIT

    tracker = Tracker(tracking_server, retries=1, backoff=0.1)
    config = {**CONFIG, "data": {"root": str(synth_root), "image_size": 16, "train_size": 96,
                                 "val_size": 30, "test_size": 30}}
    exp, parent = create_study_run(tracker, "meta", config)
    run = start_trial(tracker, exp, parent, 0, {"lr": 1e-3}, config)
    got = tracker.client.get_run(run.run_id)
    tags = got.data.tags
    assert tags["mlflow.source.name"].startswith("celebhpo")
    assert tags["mlflow.source.type"] == "LOCAL"
    assert tags["mlflow.source.git.commit"] == COMMIT
    assert tags["mlflow.user"]
    assert tracker.client.get_run(parent).data.tags["mlflow.source.git.commit"] == COMMIT

    [used] = got.inputs.dataset_inputs
    labels = (synth_root / "list_attr_celeba.csv").read_bytes()
    assert used.dataset.digest == hashlib.sha256(labels).hexdigest()[:16]
    assert json.loads(used.dataset.source) == {"uri": str(synth_root)}
    profile = json.loads(used.dataset.profile)
    assert profile["layout"] == "kaggle" and profile["labels_sha256"] == hashlib.sha256(
        labels).hexdigest()
    assert (profile["train_size"], profile["val_size"], profile["test_size"]) == (96, 30, 30)
    assert {t.key: t.value for t in used.tags} == {"mlflow.data.context": "train"}

    # a root that is not there: the run starts all the same, without a dataset input
    missing = start_trial(tracker, exp, parent, 1, {"lr": 1e-3},
                          {**config, "data": {"root": str(tmp_path / "gone")}})
    assert tracker.client.get_run(missing.run_id).inputs.dataset_inputs == []


def test_system_metrics_when_the_study_asks(tracking_server):
    pytest.importorskip("psutil")
    tracker = Tracker(tracking_server, retries=1, backoff=0.1)
    config = {**CONFIG, "study": {**CONFIG["study"], "system_metrics": True}}
    exp, parent = create_study_run(tracker, "sysmetrics", config)
    run = start_trial(tracker, exp, parent, 0, {"lr": 1e-3}, config)
    assert run.monitor is not None
    run.monitor.sampling_interval = 0.1  # sample quickly; the first sample is logged at once
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not [
            k for k in tracker.client.get_run(run.run_id).data.metrics if k.startswith("system/")]:
        time.sleep(0.2)
    run.end("COMPLETE")
    assert run.monitor is None
    metrics = tracker.client.get_run(run.run_id).data.metrics
    assert "system/cpu_utilization_percentage" in metrics
    plain = start_trial(tracker, exp, parent, 1, {"lr": 1e-3}, CONFIG)  # not asked: none
    assert plain.monitor is None
    plain.end("COMPLETE")
