"""export-best: format equivalence checks, the model card, choosing the trial, errors."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import torch
from torch import nn

from celebhpo.errors import CheckpointError, ConfigError, StudyError, TrackingError
from celebhpo.export.best import _publish, export_best
from celebhpo.export.card import model_card
from celebhpo.export.formats import export_onnx, export_torchscript, parse_formats
from celebhpo.hpo import require_best_trial

SECRET = "postgresql+psycopg2://alice:hunter2@db.example/optuna"


class Tiny(nn.Module):
    """(B, 3, 16, 16) -> (B, 40) logits, with dropout (must be off in eval) and a BatchNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 40))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class BatchDependent(Tiny):
    """Traces to a constant branch: the traced module disagrees on other inputs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        if x.shape[0] == 2:  # taken while tracing with a batch of 2, frozen into the trace
            return out
        return out + 1.0


def _model() -> nn.Module:
    torch.manual_seed(0)
    model = Tiny()
    with torch.no_grad():  # non-trivial running stats, so eval vs train mode would differ
        model.body[1].running_mean.uniform_(-0.5, 0.5)
        model.body[1].running_var.uniform_(0.5, 2.0)
    return model.eval()


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(2, 3, 16, 16, generator=gen), torch.randn(5, 3, 16, 16, generator=gen)


def test_torchscript_matches_pytorch(tmp_path):
    model = _model()
    example, check = _inputs()
    diff = export_torchscript(model, example, check, tmp_path / "model.ts")
    assert diff <= 1e-4
    with warnings.catch_warnings():  # torch marks jit.load deprecated
        warnings.simplefilter("ignore", FutureWarning)
        loaded = torch.jit.load(str(tmp_path / "model.ts"))
    with torch.no_grad():
        assert torch.allclose(loaded(check), model(check), atol=1e-5)
    assert [p.name for p in tmp_path.iterdir()] == ["model.ts"]  # no temp file left


def test_torchscript_that_differs_is_not_written(tmp_path):
    model = BatchDependent()
    model.load_state_dict(_model().state_dict())
    example, check = _inputs()
    with pytest.raises(CheckpointError, match="torchscript export gives different outputs"):
        export_torchscript(model.eval(), example, check, tmp_path / "model.ts")
    assert list(tmp_path.iterdir()) == []


def test_onnx_matches_pytorch_with_any_batch(tmp_path):
    pytest.importorskip("onnxruntime")
    model = _model()
    example, check = _inputs()
    diff = export_onnx(model, example, check, tmp_path / "model.onnx")
    assert diff <= 1e-4
    import onnxruntime as ort

    session = ort.InferenceSession(str(tmp_path / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    (out,) = session.run(["logits"], {"images": check[:1].numpy()})  # batch 1: dynamic axis
    with torch.no_grad():
        np.testing.assert_allclose(out, model(check[:1]).numpy(), atol=1e-4)


def test_onnx_that_differs_is_not_written(tmp_path):
    pytest.importorskip("onnxruntime")
    model = BatchDependent()
    model.load_state_dict(_model().state_dict())
    example, check = _inputs()
    with pytest.raises(CheckpointError, match="onnx export gives different outputs"):
        export_onnx(model.eval(), example, check, tmp_path / "model.onnx")
    assert list(tmp_path.iterdir()) == []


def test_formats():
    assert parse_formats(("torchscript", "onnx")) == ["pt", "torchscript", "onnx"]
    assert parse_formats(["pt", "ts", "torch"]) == ["pt", "torchscript"]
    with pytest.raises(ConfigError, match="'tflite' is not one of pt, torchscript, onnx"):
        parse_formats(["tflite"])


def test_publish_replaces_files_and_drops_stale_formats(tmp_path):
    out = tmp_path / "best"
    out.mkdir()
    for name in ("model.pt", "model.onnx", "notes.txt"):
        (out / name).write_text("old")
    build = tmp_path / "build"
    build.mkdir()
    for name in ("model.pt", "model.ts"):
        (build / name).write_text("new")
    files = _publish(build, out, ["model.pt", "model.ts"])
    assert files == [out / "model.pt", out / "model.ts"]
    assert sorted(p.name for p in out.iterdir()) == ["model.pt", "model.ts", "notes.txt"]
    assert (out / "model.pt").read_text() == "new"
    # a new folder is one rename
    build2 = tmp_path / "build2"
    build2.mkdir()
    (build2 / "model.pt").write_text("x")
    _publish(build2, tmp_path / "fresh", ["model.pt"])
    assert not build2.exists() and (tmp_path / "fresh" / "model.pt").read_text() == "x"


def _study_with(states_values: list[tuple[str, float | None]], direction: str,
                name: str | None = None) -> optuna.Study:
    study = optuna.create_study(direction=direction, study_name=name)
    dist = {"lr": optuna.distributions.FloatDistribution(1e-9, 1.0, log=True)}
    for i, (state, value) in enumerate(states_values):
        trial = optuna.trial.create_trial(
            params={"lr": 10.0 ** -(i + 1)}, distributions=dist,
            state=optuna.trial.TrialState[state], value=value,
            user_attrs={"mlflow_run_id": f"run{i}"})
        study.add_trial(trial)
    return study


def test_best_trial_follows_direction_and_skips_unfinished():
    trials = [("COMPLETE", 0.5), ("PRUNED", None), ("COMPLETE", 0.2), ("FAIL", None),
              ("COMPLETE", 0.9)]
    assert require_best_trial(_study_with(trials, "minimize"), "sqlite:///x.db").number == 2
    assert require_best_trial(_study_with(trials, "maximize"), "sqlite:///x.db").number == 4


def test_no_completed_trial_is_one_clear_error():
    study = _study_with([("PRUNED", None), ("FAIL", None), ("PRUNED", None)], "minimize",
                        name="grid")
    with pytest.raises(StudyError) as info:
        require_best_trial(study, SECRET)
    message = str(info.value)
    assert message == (
        "study 'grid' in postgresql+psycopg2://alice:***@db.example/optuna has no completed "
        "trial (1 FAIL, 2 PRUNED); run `celebhpo optimize --study grid` first")


def test_unknown_study_is_a_study_error(tmp_path):
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    optuna.create_study(study_name="other", storage=storage)
    with pytest.raises(StudyError, match="study 'nope' not found"):
        export_best(study_name="nope", storage=storage, out=tmp_path / "best")
    assert not (tmp_path / "best").exists()


def test_model_card_content_and_masking():
    study = _study_with([("COMPLETE", 0.31)], "minimize")
    trial = study.trials[0]
    attributes = ["Eyeglasses", "Male"]
    payload = {
        "arch": "tiny", "epoch": 3, "attributes": attributes, "thresholds": [0.3, 0.6],
        "normalization": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
        "metrics": {"val_loss": 0.31, "val_mean_acc": 0.8, "val_map": 0.7},
        "config": {"data": {"root": f"/data/{SECRET}", "image_size": 32, "crop": "squash",
                            "layout": "kaggle"},
                   "train": {"arch": "tiny", "lr": 0.1, "dropout": 0.3, "num_features": 64,
                             "pretrained": "none", "epochs": 3}},
    }
    report = pd.DataFrame({"attribute": attributes, "f1": [0.5, 0.9], "support": [3, 7]})
    md, card = model_card(
        payload=payload, study_name="grid", storage=SECRET, trial=trial, metric="val_loss",
        direction="minimize", run_id="abc123", tracking_uri="http://bob:pw123@mlflow:5000",
        test_metrics={"loss": 0.4, "tuned": {"mean_acc": 0.81, "map": 0.71},
                      "at_0.5": {"mean_acc": 0.79, "map": 0.71}},
        report=report, n_test=10, files=["model.pt", "model.ts"], checks={"torchscript": 1e-7},
    )
    everything = md + json.dumps(card)
    assert "hunter2" not in everything and "pw123" not in everything
    assert "alice:***@" in md and "bob:***@" in md
    assert card["architecture"] == "tiny"
    assert card["objective"] == {"metric": "val_loss", "direction": "minimize", "value": 0.31}
    assert card["thresholds"] == {"Eyeglasses": 0.3, "Male": 0.6}
    assert card["per_attribute"][1] == {"attribute": "Male", "f1": 0.9, "support": 7}
    assert card["test_metrics"]["tuned"]["mean_acc"] == 0.81
    assert card["normalization"]["std"] == [0.25, 0.25, 0.25]
    assert "| mean_acc | 0.8000 | 0.8100 | 0.7900 |" in md
    assert "| Male | 0.9000 | 7 |" in md
    assert "torch.jit.load('DIR/model.ts')" in md and "onnxruntime" not in md
    assert "resized to 32x32" in md


# -- end to end: a tiny real study, exported ---------------------------------------------------
def _tiny_study(tmp_path, synth_root, name: str, *, optimize_it: bool = True) -> tuple[str, str]:
    from celebhpo.config import load_study_file
    from celebhpo.hpo import create_study, optimize
    from tests.helpers import write_study

    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    tracking = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    cfg = load_study_file(write_study(tmp_path / f"{name}.toml", synth_root, name=name,
                                      space="lr = [0.003, 0.03]"))
    create_study(cfg, storage=storage, grid=True, tracking_uri=tracking)
    if optimize_it:
        optimize(study_name=name, storage=storage, device="cpu", progress=False,
                 echo=lambda _: None)
    return storage, tracking


def test_export_best_end_to_end(tmp_path, synth_root):
    from mlflow import MlflowClient

    from celebhpo.hpo.studies import load_study
    from celebhpo.inference import load_model, predict
    from celebhpo.training.checkpoint import load_checkpoint

    storage, tracking = _tiny_study(tmp_path, synth_root, "e2e")
    study, _ = load_study("e2e", storage)
    best = study.best_trial
    out = tmp_path / "best"
    result = export_best(study_name="e2e", storage=storage, out=out,
                         formats=("pt", "torchscript", "onnx"), register="celebhpo-e2e",
                         device="cpu", progress=False)
    assert result.trial_number == best.number
    assert result.run_id == best.user_attrs["mlflow_run_id"]
    assert result.n_test == 30
    assert sorted(p.name for p in out.iterdir()) == [
        "model.onnx", "model.pt", "model.ts", "model_card.json", "model_card.md"]
    assert [p.parent.name for p in tmp_path.iterdir() if p.name.startswith(".best.tmp")] == []
    ckpt = load_checkpoint(out / "model.pt")
    assert ckpt["export"]["trial_number"] == best.number
    assert 0.0 <= ckpt["test_metrics"]["tuned"]["mean_acc"] <= 1.0
    assert set(result.checks) == {"torchscript", "onnx"}
    card = json.loads((out / "model_card.json").read_text())
    assert card["trial_number"] == best.number and card["n_test"] == 30
    assert card["objective"]["metric"] == "val_loss"
    assert len(card["per_attribute"]) == 40 and len(card["thresholds"]) == 40
    assert "e2e" in result.summary() and "registered celebhpo-e2e version 1" in result.summary()

    # the registry: alias `best` on the version made from the trial's run
    client = MlflowClient(tracking, registry_uri=tracking)
    version = client.get_model_version_by_alias("celebhpo-e2e", "best")
    assert str(version.version) == "1" and version.run_id == result.run_id

    # every format predicts the same as the checkpoint
    image = sorted((synth_root / "img_align_celeba" / "img_align_celeba").glob("*.jpg"))[-1]
    probs = {b: predict(load_model(out, backend=b), [image], progress=False).probs
             for b in ("torch", "torchscript", "onnx")}
    np.testing.assert_allclose(probs["torchscript"], probs["torch"], atol=1e-5)
    np.testing.assert_allclose(probs["onnx"], probs["torch"], atol=1e-4)

    # exported again, pt only: the folder no longer holds the other formats of the old export
    export_best(study_name="e2e", storage=storage, out=out, device="cpu", progress=False)
    assert sorted(p.name for p in out.iterdir()) == [
        "model.pt", "model_card.json", "model_card.md"]

    # a checkpoint gone from the store: one TrackingError, the folder untouched
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    run = client.get_run(result.run_id)
    artifacts = Path(run.info.artifact_uri.removeprefix("file://"))
    (artifacts / "model.pt").unlink()
    with pytest.raises(TrackingError, match=f"MLflow run {result.run_id} .* has no model.pt"):
        export_best(study_name="e2e", storage=storage, out=out, device="cpu", progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_export_with_no_completed_trial(tmp_path, synth_root):
    storage, _ = _tiny_study(tmp_path, synth_root, "empty", optimize_it=False)
    with pytest.raises(StudyError, match="study 'empty' in .* has no completed trial "
                                         r"\(2 WAITING\); run `celebhpo optimize"):
        export_best(study_name="empty", storage=storage, out=tmp_path / "best")
    assert not (tmp_path / "best").exists()
