"""The MLflow shape a user compares (issue 23, items 1-7), read through MLflow's API from a
real SQLite store: the quick demo's study (`celebhpo demo --quick`'s grid and config, on its
400 synthetic faces, optimized on the CPU as the demo does, export aside).

"One meaning per metric name", precisely:
- a trial's metric is either a curve (one point per epoch it ran, steps 1..N) or a single
  value (one point, step 0): `best_epoch/*` (its best epoch's figures) and the measured
  model figures (objectives.MEASURED); a name is the same kind on every trial;
- no quantity has two names on a trial: `best_epoch/<x>` never repeats a curve `<x>`;
- the parent's metrics are `study_best/*` (the best trial so far) and `trials/*` (counts),
  each point at step = trials finished; no trial has any of them and the parent has none of
  the trials' (the names both may share, MLflow's `system/*`, same on any run, are off here).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from mlflow import MlflowClient

from celebhpo.config import load_study_file
from celebhpo.data.synth import synthesize
from celebhpo.demo import packaged_study
from celebhpo.hpo import create_study, load_study, optimize
from celebhpo.objectives import MEASURED
from celebhpo.tracking import Tracker, create_study_run
from celebhpo.tracking.names import param_name
from celebhpo.tracking.trial_files import headline_test_metrics
from tests.helpers import CONFIG, mlflow_runs

TS = optuna.trial.TrialState
KIND = ("mlflow.experimentKind", "custom_model_development")


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("shape")
    data = synthesize(root / "data", n=400, seed=0, progress=False)
    cfg = load_study_file(packaged_study("demo-quick.toml"), data_root=data)
    storage, uri = f"sqlite:///{root / 'optuna.db'}", f"sqlite:///{root / 'mlflow.db'}"
    create_study(cfg, storage=storage, grid=True, tracking_uri=uri)
    optimize(study_name=cfg.study.name, storage=storage, device="cpu", progress=False,
             echo=lambda _: None)
    study, _ = load_study(cfg.study.name, storage)
    client = MlflowClient(uri)
    runs = mlflow_runs(uri, cfg.study.name)
    return SimpleNamespace(
        cfg=cfg, study=study, client=client, tmp=root,
        parent=client.get_run(study.user_attrs["parent_run_id"]),
        trials=[(t, runs[t.number]) for t in study.trials])


def _history(client: MlflowClient, run_id: str, name: str) -> list[int]:
    return [m.step for m in client.get_metric_history(run_id, name)]


def _kinds(client: MlflowClient, run, epochs: int) -> dict[str, str]:
    """Each metric of a trial's run: "curve" (steps 1..epochs) or "single" (step 0 once)."""
    out = {}
    for name in run.data.metrics:
        steps = _history(client, run.info.run_id, name)
        out[name] = ("curve" if steps == list(range(1, epochs + 1))
                     else "single" if steps == [0] else f"steps {steps}")
    return out


def test_the_experiment_keeps_the_model_training_view(demo, tmp_path):
    exp = demo.client.get_experiment(demo.study.user_attrs["experiment_id"])
    assert exp.tags[KIND[0]] == KIND[1]
    # an experiment celebhpo reuses gets the tag when it lacks it; a kind set by hand stays
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", retries=0)
    old = tracker.client.create_experiment("old")
    mine = tracker.client.create_experiment("mine", tags={KIND[0]: "genai_development"})
    assert create_study_run(tracker, "old", CONFIG)[0] == old
    create_study_run(tracker, "mine", CONFIG)
    assert tracker.client.get_experiment(old).tags[KIND[0]] == KIND[1]
    assert tracker.client.get_experiment(mine).tags[KIND[0]] == "genai_development"


def test_no_metric_name_carries_two_meanings(demo):
    kinds: dict[str, set[str]] = {}
    trial_names: set[str] = set()
    for trial, run in demo.trials:
        got = _kinds(demo.client, run, trial.user_attrs["epochs_run"])
        for name, kind in got.items():
            kinds.setdefault(name, set()).add(kind)
            single = name.startswith("best_epoch/") or name in MEASURED
            assert kind == ("single" if single else "curve"), (trial.number, name, kind)
        curves = {n for n, k in got.items() if k == "curve"}
        # one quantity, one name: the best epoch's figures never repeat a curve
        assert not {n.removeprefix("best_epoch/") for n in got if n.startswith("best_epoch/")
                    } & curves
        trial_names |= set(got)
    assert all(len(k) == 1 for k in kinds.values()), kinds  # the same kind on every trial
    assert not [n for n in trial_names if n.startswith(("best/", "slice/", "study_best/"))]
    # the threshold is in the name: `tuned`, or 0.5 (every curve); one worst-group figure each
    assert {n for n in trial_names if n.endswith("worst_group_acc")} == {
        "val_worst_group_acc", "best_epoch/val_tuned_worst_group_acc"}

    parent = demo.parent.data.metrics
    assert parent and all(n.startswith(("study_best/", "trials/")) for n in parent)
    assert not set(parent) & trial_names
    finished = len([t for t in demo.study.trials if t.state.is_finished()])
    for name in parent:
        steps = _history(demo.client, demo.parent.info.run_id, name)
        assert steps == sorted(set(steps)) and steps[-1] == finished, (name, steps)
    best = demo.study.best_trial
    assert parent["study_best/trial_number"] == best.number
    assert parent["study_best/value"] == pytest.approx(best.value)
    assert parent["study_best/val_loss"] == pytest.approx(best.user_attrs["val_loss"])


def test_a_finished_trial_fits_on_one_screen_with_one_point_per_epoch(demo):
    [(trial, run)] = [(t, r) for t, r in demo.trials if t.state == TS.COMPLETE]
    metrics = run.data.metrics
    assert len(metrics) <= 40, sorted(metrics)
    epochs = demo.cfg.train.epochs
    for name in ("train_loss", "val_loss", "val_mean_acc", "val_map", "lr"):
        assert _history(demo.client, run.info.run_id, name) == list(range(1, epochs + 1))
    assert metrics["best_epoch/epoch"] == trial.user_attrs["best_epoch"]
    curve = demo.client.get_metric_history(run.info.run_id, "val_loss")
    assert {m.step: m.value for m in curve}[trial.user_attrs["best_epoch"]] == pytest.approx(
        trial.value)
    files = {f.path for f in demo.client.list_artifacts(run.info.run_id)}
    assert {"classification_report.csv", "classification_report.png", "slices.csv",
            "slices.png", "best_epoch.json", "config.json", "curves.png"} <= files
    best = json.loads(Path(demo.client.download_artifacts(
        run.info.run_id, "best_epoch.json", str(demo.tmp / "dl"))).read_text())
    assert best["epoch"] == trial.user_attrs["best_epoch"] and "val_macro_precision" in best


def test_parent_and_trials_name_params_alike(demo):
    parent = demo.parent.data.params
    assert not [k for k in parent if k == "space" or k.startswith("space.")]
    for key, choices in demo.cfg.to_dict()["space"].items():
        assert json.loads(parent[param_name(key)]) == choices
    searched = {param_name(k) for k in demo.cfg.space}
    for trial, run in demo.trials:
        params = run.data.params
        assert set(params) == set(parent), set(params) ^ set(parent)  # the same names
        assert {k for k in params if params[k] != parent[k]} <= searched
        for key, value in trial.params.items():
            assert params[param_name(key)] == str(value)
        # the device: the study's setting as a param on both, where it ran as a tag
        assert params["train.device"] == parent["train.device"] == "auto"
        assert run.data.tags["device"] == "cpu"
        assert set(run.data.tags["searched"].split(",")) == searched


def test_a_pruned_trial_keeps_its_config_and_curves(demo, tmp_path):
    [(trial, run)] = [(t, r) for t, r in demo.trials if t.state == TS.PRUNED]
    epochs = trial.user_attrs["pruned_at"]
    assert _history(demo.client, run.info.run_id, "val_loss") == list(range(1, epochs + 1))
    files = {f.path for f in demo.client.list_artifacts(run.info.run_id)}
    assert {"config.json", "curves.png"} <= files and "model.pt" not in files
    config = json.loads(Path(demo.client.download_artifacts(
        run.info.run_id, "config.json", str(tmp_path))).read_text())
    assert config["train"]["lr"] == trial.params["lr"]


def test_the_parent_records_the_data_set(demo):
    [used] = demo.parent.inputs.dataset_inputs
    for _, run in demo.trials:
        [theirs] = run.inputs.dataset_inputs
        assert theirs.dataset.digest == used.dataset.digest
        assert theirs.dataset.name == used.dataset.name


def test_only_the_headline_test_figures_are_metrics():
    scoring = {"mean_acc": 0.9, "macro_f1": 0.5, "micro_precision": 0.7,
               "worst_group_acc": float("nan")}
    got = headline_test_metrics({"loss": 0.3, "n_images": 40, "tuned": scoring,
                                 "0.5": scoring, "baseline": scoring})
    assert got == {"test/loss": 0.3, "test/tuned/mean_acc": 0.9, "test/0.5/mean_acc": 0.9,
                   "test/baseline/mean_acc": 0.9, "test/tuned/macro_f1": 0.5}
