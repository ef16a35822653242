"""A trial's subgroup slices in its MLflow run: slices.csv and slices.png, no per-group
metrics; the worst group's accuracy is `best_epoch/val_tuned_worst_group_acc` (real MLflow,
SQLite in a temp folder)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from celebhpo.tracking import Tracker, create_study_run, start_trial
from celebhpo.training.slices import slice_metrics
from tests.helpers import ATTRS, CONFIG, make_fit


def test_slices_become_artifacts_not_metrics(tmp_path):
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", retries=0)
    exp, parent = create_study_run(tracker, "fair", CONFIG)
    fit = make_fit(tmp_path)
    rng = np.random.default_rng(0)
    t = (rng.random((60, 3)) < 0.5).astype(np.float32)
    p = rng.random((60, 3))
    fit.slices = slice_metrics(p, t, ATTRS, ["Male"], fit.thresholds)
    fit.best_metrics["val_tuned_worst_group_acc"] = fit.slices.worst_group_acc  # as fit does

    run = start_trial(tracker, exp, parent, 0, {"lr": 1e-3}, CONFIG)
    run.log_result(fit, CONFIG, log_checkpoint=False)
    run.end("COMPLETE")

    metrics = tracker.client.get_run(run.run_id).data.metrics
    assert metrics["best_epoch/val_tuned_worst_group_acc"] == pytest.approx(
        fit.slices.worst_group_acc)
    assert not [k for k in metrics if k.startswith("slice")]  # the tables are files

    names = {f.path for f in tracker.client.list_artifacts(run.run_id)}
    assert {"slices.csv", "slices.png"} <= names
    got = pd.read_csv(Path(tracker.client.download_artifacts(run.run_id, "slices.csv",
                                                             str(tmp_path))))
    expect = fit.slices.long()
    assert list(got.columns) == list(expect.columns) and len(got) == len(expect)
    assert np.allclose(got["value"], expect["value"], equal_nan=True)


def test_no_slices_no_slice_metrics(tmp_path):
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", retries=0)
    exp, parent = create_study_run(tracker, "plain", CONFIG)
    run = start_trial(tracker, exp, parent, 0, {"lr": 1e-3}, CONFIG)
    run.log_result(make_fit(tmp_path), CONFIG, log_checkpoint=False)  # slices None: off
    run.end("COMPLETE")
    assert not [k for k in tracker.client.get_run(run.run_id).data.metrics
                if k.startswith("slice")]
    assert not {"slices.csv", "slices.png"} & {
        f.path for f in tracker.client.list_artifacts(run.run_id)}
