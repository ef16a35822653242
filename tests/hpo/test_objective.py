"""What a trial's value is (issue 13): plain validation loss whatever the training loss is
weighted with, and the best epoch by the study's metric. Real studies on temporary storages,
real MLflow, the tiny architecture on synthetic faces."""

from __future__ import annotations

import csv
import logging
import shutil
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient

from celebhpo.config import load_study_file
from celebhpo.hpo import create_study, load_study, optimize
from tests.helpers import mlflow_runs, write_study


@pytest.fixture
def tracking_uri(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def _run(tmp_path, synth_root, tracking_uri, name, space, epochs, study_extra=""):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    cfg = load_study_file(write_study(tmp_path / "s.toml", synth_root, name=name, space=space,
                                      epochs=epochs, study_extra=study_extra))
    create_study(cfg, storage=storage, grid=True, tracking_uri=tracking_uri)
    optimize(storage=storage, progress=False, echo=lambda _: None)
    study, _ = load_study(name, storage)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * len(study.trials)
    return study, mlflow_runs(tracking_uri, name)


def test_a_study_that_searches_class_weighting_ranks_by_unweighted_loss(
        tmp_path, synth_root, tracking_uri):
    study, runs = _run(tmp_path, synth_root, tracking_uri, "weights",
                       'class_weighting = ["none", "inverse_frequency", "pos_weight"]', 2)
    client = MlflowClient(tracking_uri)
    for t in study.trials:
        run_id = runs[t.number].info.run_id
        plain = [m.value for m in client.get_metric_history(run_id, "val_loss")]
        weighted = [m.value for m in client.get_metric_history(run_id, "val_loss_weighted")]
        # the value is the best epoch's plain val_loss, and what Optuna was told each epoch
        assert t.value == pytest.approx(min(plain))
        assert list(t.intermediate_values.values()) == pytest.approx(plain)
        if t.params["class_weighting"] == "none":
            assert weighted == []  # nothing else to log
        else:
            assert len(weighted) == 2 and weighted != pytest.approx(plain, rel=1e-3)
    # comparable: plain BCE of these barely trained models sits near ln 2 for every scheme,
    # where the weighted losses differ by a factor (inverse_frequency's ~1/40 scale)
    values = [t.value for t in study.trials]
    assert max(values) / min(values) < 1.5, values


def test_the_trial_value_is_its_best_epoch_by_the_metric(tmp_path, synth_root, tracking_uri):
    study, runs = _run(tmp_path, synth_root, tracking_uri, "byacc", "lr = [0.05]", 4,
                       study_extra='metric = "val_mean_acc"')
    (t,) = study.trials
    reported = t.intermediate_values  # {epoch: val_mean_acc}
    best_epoch = max(reported, key=lambda e: (reported[e], -e))  # the first of ties
    assert t.value == max(reported.values())
    assert t.user_attrs["best_epoch"] == best_epoch
    run_id = runs[t.number].info.run_id
    assert runs[t.number].data.metrics["best_epoch/epoch"] == best_epoch
    curve = {m.step: m.value for m in MlflowClient(tracking_uri).get_metric_history(
        run_id, "val_mean_acc")}
    assert curve[best_epoch] == pytest.approx(t.value)  # the curve at the best epoch


def test_optimize_names_the_images_it_skipped(tmp_path, synth_root, tracking_uri, caplog):
    root = tmp_path / "celeba"
    shutil.copytree(synth_root, root)
    broken = sorted((root / "img_align_celeba" / "img_align_celeba").glob("*.jpg"))[:2]
    for path in broken:  # the first images are in the train split
        path.write_bytes(b"not a jpeg at all")
    with caplog.at_level(logging.WARNING, logger="celebhpo.hpo.objective"):
        study, runs = _run(tmp_path, root, tracking_uri, "skips", "lr = [0.003]", 1)
    said = caplog.text
    assert "skipped 2 unreadable images" in said
    assert all(p.name in said for p in broken)
    run = runs[0]
    assert run.data.tags["skipped_images"] == "2"
    local = MlflowClient(tracking_uri).download_artifacts(run.info.run_id,
                                                          "skipped_images.csv", str(tmp_path))
    rows = list(csv.reader(Path(local).read_text().splitlines()))
    assert rows[0] == ["image", "reason"]
    assert sorted(r[0] for r in rows[1:]) == sorted(p.name for p in broken)
