"""export-best: format equivalence checks, the model card, choosing the trial, errors."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from torch import nn

from celebhpo.errors import CheckpointError, ConfigError, StudyError, TrackingError
from celebhpo.export.best import _publish, export_best
from celebhpo.export.card import model_card
from celebhpo.export.formats import export_onnx, export_torchscript, parse_formats
from celebhpo.hpo import require_best_trial
from celebhpo.inference.evaluate import majority_classes, score_split
from celebhpo.report import format_export
from celebhpo.training.checkpoint import Checkpoint

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
    # the cause and the fix, not "run optimize" (which would only say its grid is done: issue 24)
    assert message == (
        "no trial of study 'grid' completed (2 PRUNED, 1 FAIL), and a pruned trial keeps no "
        "model to export: create the study again without pruning (`celebhpo study create "
        "STUDY_FILE --replace --set study.pruner=none`) and optimize it, or run more trials "
        "(optimize --trials N)")


def test_unknown_study_is_a_study_error(tmp_path):
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    optuna.create_study(study_name="other", storage=storage)
    with pytest.raises(StudyError, match="study 'nope' not found"):
        export_best(study_name="nope", storage=storage, out=tmp_path / "best")
    assert not (tmp_path / "best").exists()


def _card(attributes: list[str], seed: int = 0, secret: str = SECRET,
          slices: tuple[str, ...] = ()) -> tuple[str, dict, dict]:
    """A model card from real scoring of random probabilities: (markdown, card, inputs)."""
    rng = np.random.default_rng(seed)
    n_attr = len(attributes)
    train = (rng.random((50, n_attr)) < np.linspace(0.2, 0.8, n_attr)).astype(np.float32)
    thresholds = rng.uniform(0.3, 0.7, n_attr).round(3)
    majority = majority_classes(train)
    splits = {}
    for k, split in enumerate(("val", "test")):
        targets = (rng.random((40 + 10 * k, n_attr)) < 0.4).astype(np.float32)
        probs = (0.3 * targets + 0.7 * rng.random(targets.shape)).astype(np.float32)
        splits[split] = (probs, targets)
    evaluations = {s: score_split(s, p, t, attributes, thresholds, majority, loss=0.25 + k,
                                  batch=torch.zeros(1, 3, 4, 4), slices=slices)
                   for k, (s, (p, t)) in enumerate(splits.items())}
    study = _study_with([("COMPLETE", 0.31)], "minimize")
    ckpt = Checkpoint(
        arch="tiny", epoch=3, attributes=attributes, state_dict={},
        thresholds=thresholds.tolist(), mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25],
        metrics={"val_loss": 0.31, "val_mean_acc": 0.8, "val_map": 0.7},
        config={"data": {"root": f"/data/{secret}", "image_size": 32, "crop": "squash",
                         "layout": "kaggle"},
                "train": {"arch": "tiny", "lr": 0.1, "dropout": 0.3, "num_features": 64,
                          "pretrained": "none", "epochs": 3, "threshold_metric": "accuracy"}},
    )
    md, card = model_card(
        ckpt=ckpt, study_name="grid", storage=secret, trial=study.trials[0],
        metric="val_loss", direction="minimize", run_id="abc123",
        tracking_uri="http://bob:pw123@mlflow:5000", evaluations=evaluations,
        files=["model.pt", "model.ts"], checks={"torchscript": 1e-7},
    )
    return md, card, {"splits": splits, "thresholds": thresholds, "majority": majority}


def test_model_card_content_and_masking():
    md, card, _ = _card(["Eyeglasses", "Male"])
    everything = md + json.dumps(card)
    assert "hunter2" not in everything and "pw123" not in everything
    assert "alice:***@" in md and "bob:***@" in md
    assert card["architecture"] == "tiny"
    assert card["objective"] == {"metric": "val_loss", "direction": "minimize", "value": 0.31}
    assert list(card["thresholds"]) == ["Eyeglasses", "Male"]
    assert card["normalization"]["std"] == [0.25, 0.25, 0.25]
    assert "torch.jit.load('DIR/model.ts')" in md and "onnxruntime" not in md
    assert "resized to 32x32" in md
    # the decision rule is the one predict uses: strictly above the threshold
    assert "`sigmoid(logits) > thresholds`" in md and ">=" not in md


def test_model_card_scores_val_and_test_at_both_thresholds_and_the_baseline():
    """Every number of model_card.json against sklearn on the same probabilities."""
    from sklearn.metrics import accuracy_score

    attributes = ["Eyeglasses", "Male", "Smiling", "Wavy_Hair"]
    md, card, given = _card(attributes, seed=3)
    th, majority = given["thresholds"], given["majority"]
    assert set(card["metrics"]) == {"val", "test"}
    rows = {r["attribute"]: r for r in card["per_attribute"]}
    for split, (probs, targets) in given["splits"].items():
        m = card["metrics"][split]
        assert set(m) == {"n_images", "loss", "tuned", "0.5", "baseline"}
        assert m["n_images"] == len(probs)
        acc = {label: [accuracy_score(targets[:, j], probs[:, j] > cut[j])
                       for j in range(len(attributes))]
               for label, cut in (("tuned", th), ("0.5", np.full(len(th), 0.5)))}
        acc["baseline"] = [accuracy_score(targets[:, j], np.full(len(probs), majority[j]))
                           for j in range(len(attributes))]
        for label, per_attr in acc.items():
            assert m[label]["mean_acc"] == pytest.approx(np.mean(per_attr), abs=1e-12), label
            for j, a in enumerate(attributes):
                assert rows[a][f"{split}_acc_{label}"] == pytest.approx(per_attr[j]), (a, label)
        # the three differ, so a mixed-up label would show
        assert len({round(m[c]["mean_acc"], 9) for c in ("tuned", "0.5", "baseline")}) == 3
    assert [rows[a]["threshold"] for a in attributes] == pytest.approx(th)
    test_targets = given["splits"]["test"][1]
    assert [rows[a]["test_positive_rate"] for a in attributes] == pytest.approx(
        test_targets.mean(0))
    # the markdown says split and thresholds in every column, loss on both splits
    assert ("| metric | val, tuned | val, 0.5 | val, baseline | test, tuned | test, 0.5 | "
            "test, baseline |") in md
    mean = card["metrics"]
    assert (f"| mean_acc | {mean['val']['tuned']['mean_acc']:.4f} | "
            f"{mean['val']['0.5']['mean_acc']:.4f} | {mean['val']['baseline']['mean_acc']:.4f} | "
            f"{mean['test']['tuned']['mean_acc']:.4f} | {mean['test']['0.5']['mean_acc']:.4f} | "
            f"{mean['test']['baseline']['mean_acc']:.4f} |") in md
    assert "| loss (BCE, unweighted) | 0.2500 | 1.2500 |" in md
    assert ("| attribute | labels | agreement | threshold (tuned) | val acc, tuned | val acc, 0.5 | "
            "test acc, tuned | test acc, 0.5 | test acc, baseline | test positive rate |") in md
    r = rows["Male"]
    assert (f"| Male | reliable | 97.7% | {r['threshold']:.4f} | {r['val_acc_tuned']:.4f} | "
            f"{r['val_acc_0.5']:.4f} "
            f"| {r['test_acc_tuned']:.4f} | {r['test_acc_0.5']:.4f} | "
            f"{r['test_acc_baseline']:.4f} | {r['test_positive_rate']:.4f} |") in md
    assert "tuned on validation for accuracy" in md


def test_model_card_flags_noisy_attributes_and_shows_the_slices():
    from celebhpo.data.quality import QUALITY_SOURCE, reliable_attributes
    from celebhpo.training.slices import slice_metrics

    attributes = ["Eyeglasses", "Male", "Oval_Face", "Smiling", "Young"]
    md, card, given = _card(attributes, seed=5, slices=("Male", "Young"))
    rows = {r["attribute"]: r for r in card["per_attribute"]}
    assert rows["Oval_Face"]["labels"] == "chance" and rows["Smiling"]["labels"] == "moderate"
    assert "| Oval_Face | **chance** | 53.4% |" in md and QUALITY_SOURCE in md
    assert card["label_quality"]["noisy"] == ["Oval_Face"]
    for split, (probs, targets) in given["splits"].items():
        m = card["metrics"][split]
        keep = [j for j, a in enumerate(attributes) if a in reliable_attributes()]
        assert [attributes[j] for j in keep] == ["Eyeglasses", "Male"]
        correct = (probs > given["thresholds"]) == (targets > 0.5)
        assert m["tuned"]["mean_acc_reliable"] == pytest.approx(correct[:, keep].mean())
        expect = slice_metrics(probs, targets, attributes, ["Male", "Young"],
                               given["thresholds"])
        sl = card["slices"][split]
        assert sl["worst_group_acc"] == pytest.approx(expect.worst_group_acc)
        assert m["tuned"]["worst_group_acc"] == pytest.approx(expect.worst_group_acc)
        assert [g["n"] for g in sl["groups"]] == list(expect.groups["n"])
        top = expect.attributes.sort_values("gap", ascending=False)["attribute"].iloc[0]
        assert sl["largest_gaps"][0]["attribute"] == top
    assert (f"| reliable12 | {card['metrics']['val']['tuned']['mean_acc_reliable']:.4f} |") in md
    assert (f"| mean_acc_reliable12 | {card['metrics']['val']['tuned']['mean_acc_reliable']:.4f} |"
            in md)
    assert "## Subgroups" in md and "true Male x Young labels" in md
    g = card["slices"]["test"]["groups"][2]
    assert f"| {g['group']} |" in md and g["group"] == "Male=1,Young=0"
    assert f"test {card['slices']['test']['worst_group']} (" in md
    # a study without slices: no subgroup section, and the card says nothing of groups
    md_off, card_off, _ = _card(attributes, seed=5)
    assert card_off["slices"] == {} and "## Subgroups" not in md_off
    assert "worst_group_acc" not in card_off["metrics"]["test"]["tuned"]


# -- end to end: a tiny real study, exported ---------------------------------------------------
def _tiny_study(tmp_path, synth_root, name: str, *, optimize_it: bool = True,
                space: str = "lr = [0.003, 0.03]") -> tuple[str, str]:
    from celebhpo.config import load_study_file
    from celebhpo.hpo import create_study, optimize
    from tests.helpers import write_study

    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    tracking = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    cfg = load_study_file(write_study(tmp_path / f"{name}.toml", synth_root, name=name,
                                      space=space))
    create_study(cfg, storage=storage, grid=True, tracking_uri=tracking)
    if optimize_it:
        optimize(study_name=name, storage=storage, device="cpu", progress=False,
                 echo=lambda _: None)
    return storage, tracking


def _independent_scores(out: Path) -> dict[str, dict]:
    """The exported model on the study's val and test subsets, scored here with numpy and
    sklearn: logits, per-attribute accuracy at its thresholds / 0.5 / train majority, BCE."""
    from sklearn.metrics import accuracy_score

    from celebhpo.config import StudyConfig
    from celebhpo.data import load_data, normalize, read_celeba, select_split
    from celebhpo.training.slices import slice_metrics

    ckpt = Checkpoint.load(out / "model.pt")
    cfg = StudyConfig.from_dict(ckpt.config, source="test")
    model = ckpt.model().eval()
    data = load_data(cfg.data, splits=("val", "test"), progress=False)
    ds = read_celeba(cfg.data.root)
    train = ds.labels[select_split(ds, "train", cfg.data.train_size)]
    majority = (train.mean(0) > 0.5).astype(int)
    th = np.asarray(ckpt.thresholds)
    norm = ckpt.normalization
    got = {}
    for split in ("val", "test"):
        x = normalize(torch.from_numpy(np.array(data[split].images)), norm["mean"], norm["std"])
        with torch.no_grad():
            z = model(x).double().numpy()  # (N, 40) logits
        y = data[split].labels.astype(np.float64)
        p = 1 / (1 + np.exp(-z))
        bce = np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))  # per element
        pos, neg = train.sum(0), len(train) - train.sum(0)
        weight = np.where((pos > 0) & (neg > 0), neg / np.maximum(pos, 1), 1.0)  # pos_weight
        weighted = weight * y * np.log1p(np.exp(-z)) + (1 - y) * np.log1p(np.exp(z))
        got[split] = {
            "n": len(y), "loss": bce.mean(), "weighted_loss": weighted.mean(),
            "tuned": [accuracy_score(y[:, j], p[:, j] > th[j]) for j in range(40)],
            "0.5": [accuracy_score(y[:, j], p[:, j] > 0.5) for j in range(40)],
            "baseline": [accuracy_score(y[:, j], np.full(len(y), majority[j]))
                         for j in range(40)],
            "worst_group_acc": slice_metrics(p, y, data.attributes, ["Male", "Young"],
                                             th).worst_group_acc,
        }
    return got


def test_export_best_end_to_end(tmp_path, synth_root):
    from click.testing import CliRunner
    from mlflow import MlflowClient

    from celebhpo.cli import cli
    from celebhpo.hpo.studies import load_study
    from celebhpo.inference import load_model, predict

    # trained with a weighted loss: the card's loss rows must still be plain BCE
    storage, tracking = _tiny_study(tmp_path, synth_root, "e2e",
                                    space='lr = [0.003, 0.03]\nclass_weighting = ["pos_weight"]')
    study, _ = load_study("e2e", storage)
    best = study.best_trial
    out = tmp_path / "best"
    result = export_best(study_name="e2e", storage=storage, out=out,
                         formats=("pt", "torchscript", "onnx"), register="celebhpo-e2e",
                         device="cpu", progress=False)
    assert result.trial_number == best.number
    assert result.run_id == best.user_attrs["mlflow_run_id"]
    assert result.metrics["test"]["n_images"] == 30 == result.metrics["val"]["n_images"]
    assert sorted(p.name for p in out.iterdir()) == [
        "model.onnx", "model.pt", "model.ts", "model_card.json", "model_card.md"]
    assert [p.parent.name for p in tmp_path.iterdir() if p.name.startswith(".best.tmp")] == []
    ckpt = Checkpoint.load(out / "model.pt")
    assert ckpt.export["trial_number"] == best.number
    assert ckpt.test_metrics == {k: v for k, v in result.metrics["test"].items()
                                 if k != "n_images"}
    assert set(result.checks) == {"torchscript", "onnx"}
    card = json.loads((out / "model_card.json").read_text())
    assert card["trial_number"] == best.number
    assert card["objective"]["metric"] == "val_loss"
    assert len(card["per_attribute"]) == 40 and len(card["thresholds"]) == 40
    summary = format_export(result)
    assert "\n" not in summary and "registered celebhpo-e2e version 1" in summary

    # the card's numbers, recomputed here from the exported model: same thresholds on both
    # splits, the train majority as baseline, plain (unweighted) BCE on both splits
    mine = _independent_scores(out)
    for split in ("val", "test"):
        m = card["metrics"][split]
        assert m["n_images"] == mine[split]["n"] == 30
        for label in ("tuned", "0.5", "baseline"):
            assert m[label]["mean_acc"] == pytest.approx(np.mean(mine[split][label]), abs=1e-9)
            assert [r[f"{split}_acc_{label}"] for r in card["per_attribute"]] == pytest.approx(
                mine[split][label], abs=1e-9)
        assert m["loss"] == pytest.approx(mine[split]["loss"], rel=1e-5)
        assert abs(m["loss"] - mine[split]["weighted_loss"]) > 1e-3  # not the training loss
        assert getattr(ckpt, f"{split}_metrics")["loss"] == m["loss"]
        # the default [study] slices, at the tuned thresholds
        assert card["slices"][split]["worst_group_acc"] == pytest.approx(
            mine[split]["worst_group_acc"], abs=1e-9)
    assert (f"test mean accuracy {np.mean(mine['test']['tuned']):.3f} (tuned thresholds) / "
            f"{np.mean(mine['test']['0.5']):.3f} (0.5) vs "
            f"{np.mean(mine['test']['baseline']):.3f} majority baseline") in summary

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

    # exported again from the command line, pt only: one line out; the folder no longer
    # holds the other formats of the old export
    run = CliRunner().invoke(cli, ["export-best", "--study", "e2e", "--storage", storage,
                                   "--tracking-uri", tracking, "--out", str(out),
                                   "--device", "cpu"])
    assert run.exit_code == 0, run.output
    test = card["metrics"]["test"]
    assert run.stdout == (
        f"trial {best.number} of study 'e2e': test mean accuracy "
        f"{test['tuned']['mean_acc']:.3f} (tuned thresholds) / {test['0.5']['mean_acc']:.3f} "
        f"(0.5) vs {test['baseline']['mean_acc']:.3f} majority baseline; exported to {out}/ "
        "(model.pt, model_card.md, model_card.json)\n")
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
