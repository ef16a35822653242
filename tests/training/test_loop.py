"""train_one_epoch / evaluate / fit on the CPU: tiny arch, tiny images, real files."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from celebhpo.config import StudyConfig
from celebhpo.data import (
    ATTRIBUTES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    VISIBLE_ATTRIBUTES,
    BatchLoader,
    DataBundle,
    SplitData,
    load_data,
    normalize,
)
from celebhpo.errors import ConfigError, TrainingError
from celebhpo.report import format_training
from celebhpo.training.checkpoint import Checkpoint
from celebhpo.training.devices import resolve_device
from celebhpo.training.loop import (
    Callback,
    class_weights,
    evaluate,
    fit,
    make_loss,
    make_optimizer,
    make_scheduler,
)
from celebhpo.training.metrics import compute_metrics, per_class_report

TIMING = ("epoch_seconds", "images_per_s")
ROW_KEYS = {"epoch", "train_loss", "val_loss", "val_mean_acc", "val_balanced_acc", "val_map",
            "val_mean_acc_reliable", "val_worst_group_acc", "lr", *TIMING}


def _bundle(n_train: int = 64, n_val: int = 24, size: int = 16, seed: int = 0) -> DataBundle:
    """Random pixels, labels that follow the mean brightness of a quadrant (learnable)."""
    rng = np.random.default_rng(seed)

    def split(name: str, n: int) -> SplitData:
        images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
        labels = (rng.random((n, 40)) < 0.3).astype(np.float32)
        labels[:, 0] = images[:, : size // 2, : size // 2].mean((1, 2, 3)) > 127.5
        return SplitData(name, images, labels, [f"{name}{i:04d}.jpg" for i in range(n)])

    return DataBundle(list(ATTRIBUTES), {"train": split("train", n_train),
                                         "val": split("val", n_val)}, root=Path("memory"))


def _cfg(**train) -> StudyConfig:
    base = {"arch": "tiny", "epochs": 2, "batch_size": 16, "eval_batch_size": 10, "lr": 3e-3,
            "device": "cpu", "num_features": 16, "dropout": 0.0, "seed": 0,
            "amp": "off"}  # the same trajectories on CPUs with and without native bf16
    base.update(train)
    return StudyConfig.from_dict({"train": base}, source="test")


# -- loss weights ----------------------------------------------------------------------------
def test_class_weights_on_a_known_label_matrix():
    y = np.array([[1, 1, 0, 1], [0, 1, 0, 1], [0, 0, 0, 1], [0, 0, 0, 1]], dtype=np.float32)
    # column 0: 1 pos 3 neg; column 1: 2/2; column 2: no positive; column 3: no negative
    assert class_weights(y, "pos_weight").tolist() == [3.0, 1.0, 1.0, 1.0]
    assert class_weights(y, "seed").tolist() == pytest.approx([4 / 4, 4 / 8, 1.0, 4 / 16])
    assert class_weights(y, "inverse_frequency").tolist() == class_weights(y, "seed").tolist()
    assert class_weights(y, "none") is None
    assert make_loss(y, "pos_weight").pos_weight.tolist() == [3.0, 1.0, 1.0, 1.0]
    assert make_loss(y, "seed").weight.tolist() == pytest.approx([1.0, 0.5, 1.0, 0.25])
    assert make_loss(y, "none").weight is None and make_loss(y, "none").pos_weight is None
    # pos_weight scales the positive term only: a wrong positive costs 3x, a wrong negative 1x
    logits = torch.tensor([[-2.0, 0.0, 0.0, 0.0]])
    plain = nn.functional.binary_cross_entropy_with_logits(logits[:, :1], torch.ones(1, 1))
    per_elem = make_loss(y, "pos_weight")(logits, torch.tensor([[1.0, 0, 0, 0]])) * 4
    rest = 3 * nn.functional.binary_cross_entropy_with_logits(torch.zeros(1), torch.zeros(1))
    assert per_elem.item() == pytest.approx(3 * plain.item() + rest.item(), rel=1e-5)


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    auto = resolve_device("auto")
    assert auto.type == ("cuda" if torch.cuda.is_available() else auto.type)
    with pytest.raises(ConfigError, match="not a device"):
        resolve_device("banana")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA GPU"):
            resolve_device("cuda")


def test_cosine_schedule_with_linear_warmup_steps_per_batch():
    opt = make_optimizer(nn.Linear(2, 2), "adamw", 1.0, 0.01, torch.device("cpu"))
    assert isinstance(opt, torch.optim.AdamW)
    sched = make_scheduler(opt, "cosine", warmup_steps=4, total_steps=14)
    lrs = []
    for _ in range(14):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lrs[9] == pytest.approx(0.5)  # halfway through the decay
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:], strict=False)) and lrs[-1] < 0.03


# -- evaluate --------------------------------------------------------------------------------
class _Constant(nn.Module):
    """Logits that ignore the image: (B, 40) filled with `values`."""

    def __init__(self, values: torch.Tensor) -> None:
        super().__init__()
        self.values = nn.Parameter(values.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.values.expand(x.shape[0], -1) + 0 * x.mean()


def test_evaluate_uses_sigmoid_per_attribute_on_the_whole_split():
    data = _bundle(n_val=23)
    val = data.splits["val"]
    logits = torch.full((40,), 0.3)  # sigmoid 0.574: present. `logit > 0.5` would say absent
    logits[1] = 2.0  # every attribute high: softmax across them would say ~1/40 each
    model = _Constant(logits)
    loader = BatchLoader(val.images, val.labels, 10, shuffle=False, flip=False, device="cpu")
    out = evaluate(model, loader, nn.BCEWithLogitsLoss())
    assert out.probs.shape == (23, 40) and out.targets.shape == (23, 40)  # 3 batches, all rows
    assert np.allclose(out.probs, torch.sigmoid(logits).numpy()[None, :])
    assert np.array_equal(out.targets, val.labels)  # in split order, not shuffled
    assert compute_metrics(out.probs, out.targets)["micro_recall"] == 1.0  # all predicted present
    expected = nn.BCEWithLogitsLoss()(logits.expand(23, -1), torch.from_numpy(val.labels))
    assert out.loss == pytest.approx(expected.item(), rel=1e-5)  # mean over the whole split


def test_evaluate_is_deterministic_and_unflipped():
    data = _bundle()
    val = data.splits["val"]
    torch.manual_seed(0)
    from celebhpo.training.models import create_model

    model = create_model("tiny", num_features=16).eval()
    loader = BatchLoader(val.images, val.labels, 7, shuffle=False, flip=False, device="cpu")
    a = evaluate(model, loader, nn.BCEWithLogitsLoss())
    b = evaluate(model, loader, nn.BCEWithLogitsLoss())
    assert np.array_equal(a.probs, b.probs)
    x = normalize(torch.from_numpy(val.images), IMAGENET_MEAN, IMAGENET_STD)  # no flip
    with torch.no_grad():
        direct = torch.sigmoid(model(x)).numpy()
        flipped = torch.sigmoid(model(x.flip(3))).numpy()
    assert np.allclose(a.probs, direct, atol=1e-6)
    assert not np.allclose(a.probs, flipped, atol=1e-6)  # the check can tell


# -- fit -------------------------------------------------------------------------------------
class _Recorder(Callback):
    def __init__(self) -> None:
        self.info: dict = {}
        self.batches: list[tuple[int, int, int]] = []
        self.epochs: list[dict] = []

    def on_fit_start(self, info):
        self.info = info

    def on_batch_end(self, epoch, batch, n_batches):
        self.batches.append((epoch, batch, n_batches))

    def on_epoch_end(self, epoch, metrics):
        self.epochs.append(metrics)


def test_fit_history_callbacks_checkpoint_round_trip(tmp_path):
    data = _bundle()
    rec = _Recorder()
    cfg = _cfg(epochs=3, scheduler="cosine", warmup_epochs=1, grad_clip=1.0,
               class_weighting="seed")
    result = fit(cfg, data, callbacks=[rec], checkpoint_path=tmp_path / "best.pt")
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    # a weighted training loss: val_loss stays plain BCE, the weighted one is logged beside it
    assert all(set(h) == ROW_KEYS | {"val_loss_weighted"} for h in result.history)
    assert rec.epochs == result.history and rec.info["n_train"] == 64
    assert rec.batches == [(e, b, 4) for e in (1, 2, 3) for b in range(4)]  # 64 / 16
    assert result.history[0]["lr"] == pytest.approx(3e-3 / 4)  # first warm-up step
    assert result.device == "cpu" and not result.stopped_early
    best = min(result.history, key=lambda h: h["val_loss"])
    assert result.best_epoch == best["epoch"]
    assert result.best_metrics["val_loss"] == best["val_loss"]
    assert {"val_macro_f1", "val_tuned_mean_acc", "val_map"} <= set(result.best_metrics)
    assert len(result.thresholds) == 40 and len(result.report) == 40

    # the checkpoint holds the best epoch: its predictions reproduce the report and metrics
    ckpt = Checkpoint.load(result.checkpoint_path)
    assert ckpt.epoch == result.best_epoch and ckpt.arch == "tiny"
    assert ckpt.thresholds == pytest.approx(result.thresholds.tolist())
    assert ckpt.config == cfg.to_dict() and ckpt.image_size == 16
    assert ckpt.normalization == {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
    model = ckpt.model()
    val = data.splits["val"]
    loader = BatchLoader(val.images, val.labels, 100, shuffle=False, flip=False, device="cpu")
    out = evaluate(model, loader, weighted_loss_fn=make_loss(data.splits["train"].labels, "seed"))
    assert out.loss == pytest.approx(result.best_metrics["val_loss"], rel=1e-5)
    plain = nn.functional.binary_cross_entropy(torch.from_numpy(out.probs).double(),
                                               torch.from_numpy(out.targets).double())
    assert out.loss == pytest.approx(float(plain), rel=1e-4)  # unweighted, by hand
    assert out.weighted_loss == pytest.approx(result.best_metrics["val_loss_weighted"], rel=1e-5)
    assert out.weighted_loss != pytest.approx(out.loss, rel=1e-2)
    report = per_class_report(out.probs, out.targets, data.attributes, result.thresholds)
    assert np.allclose(report["f1_tuned"], result.report["f1_tuned"])
    assert "best epoch" in format_training(cfg, result)


def test_a_cpu_run_is_repeatable(tmp_path):
    data = _bundle()

    def run(seed: int, name: str):
        r = fit(_cfg(seed=seed, dropout=0.2), data, checkpoint_path=tmp_path / name)
        rows = [{k: v for k, v in h.items() if k not in TIMING} for h in r.history]
        return rows, Checkpoint.load(r.checkpoint_path).state_dict

    a, state_a = run(0, "a.pt")
    b, state_b = run(0, "b.pt")
    c, _ = run(1, "c.pt")
    assert a == b
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert a != c


class _Poison(Callback):
    """Turns one weight into NaN after the second step of epoch 1."""

    def __init__(self, model_param: list) -> None:
        self.seen = model_param

    def on_batch_end(self, epoch, batch, n_batches):
        if epoch == 1 and batch == 1:
            for p in self.seen:
                with torch.no_grad():
                    p.fill_(math.nan)


def test_nan_loss_stops_with_epoch_batch_and_lr(monkeypatch):
    from celebhpo.training import models

    params: list = []
    real = models.create_model

    def keep_params(*a, **k):  # the real model, with its parameters handed to the callback
        m = real(*a, **k)
        params.extend(list(m.parameters())[:1])
        return m

    monkeypatch.setattr(models, "create_model", keep_params)
    with pytest.raises(TrainingError) as e:
        fit(_cfg(lr=0.01), _bundle(), callbacks=[_Poison(params)])
    msg = str(e.value)
    assert "epoch 1, batch 3 of 4" in msg and "lr 0.01" in msg and "lower [train] lr" in msg


def test_nan_in_the_labels_is_caught_too():
    data = _bundle()
    data.splits["train"].labels[5, 3] = np.nan
    with pytest.raises(TrainingError, match="epoch 1, batch"):
        fit(_cfg(), data)


class _Pruned(Exception):
    pass


class _PruneAt(Callback):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self.raised: Exception | None = None

    def on_epoch_end(self, epoch, metrics):
        if epoch == self.epoch:
            self.raised = _Pruned(f"pruned at {epoch}")
            raise self.raised


def test_callback_exceptions_propagate_unchanged(tmp_path):
    cb = _PruneAt(2)
    with pytest.raises(_Pruned) as e:
        fit(_cfg(epochs=4), _bundle(), callbacks=[cb], checkpoint_path=tmp_path / "x.pt")
    assert e.value is cb.raised
    assert not (tmp_path / "x.pt").exists()  # a pruned run writes no checkpoint


def test_the_best_epoch_follows_the_study_metric(tmp_path):
    """metric = val_mean_acc: the best epoch, the value and the checkpoint are the epoch of
    highest validation accuracy, even where another epoch has the lowest val_loss."""
    data = _bundle()
    cfg = _cfg(epochs=6, lr=0.05)
    cfg.study.metric = "val_mean_acc"
    result = fit(cfg, data, checkpoint_path=tmp_path / "best.pt")
    accs = [h["val_mean_acc"] for h in result.history]
    losses = [h["val_loss"] for h in result.history]
    assert int(np.argmax(accs)) != int(np.argmin(losses))  # the case this test is about
    assert result.best_epoch == int(np.argmax(accs)) + 1  # the first of ties
    assert result.best_metrics["val_mean_acc"] == max(accs)
    ckpt = Checkpoint.load(result.checkpoint_path)
    assert ckpt.epoch == result.best_epoch
    val = data.splits["val"]
    loader = BatchLoader(val.images, val.labels, 100, shuffle=False, flip=False, device="cpu")
    out = evaluate(ckpt.model(), loader)
    assert compute_metrics(out.probs, out.targets)["mean_acc"] == pytest.approx(max(accs))


def test_early_stopping_on_val_loss():
    rec = _Recorder()
    # a learning rate far too high: val_loss stops improving within a few epochs
    cfg = _cfg(epochs=12, patience=2, lr=0.5)
    cfg.train.amp = "off"  # the fp32 trajectory this lr was chosen for (bf16 steps differ)
    result = fit(cfg, _bundle(), callbacks=[rec])
    assert result.stopped_early and len(result.history) < 12
    losses = [h["val_loss"] for h in result.history]
    best = int(np.argmin(losses)) + 1
    assert result.best_epoch == best and len(losses) == best + 2  # patience 2
    assert len(rec.epochs) == len(losses)
    assert "stopped early: no better val_loss for 2 epochs" in format_training(cfg, result)


def test_learns_visible_attributes_of_synthetic_faces(synth_root, tmp_path):
    cfg = StudyConfig.from_dict({
        "data": {"root": str(synth_root), "image_size": 32, "cache_dir": str(tmp_path / "c")},
        "train": {"arch": "tiny", "epochs": 6, "batch_size": 16, "lr": 3e-3, "device": "cpu",
                  "num_features": 64, "dropout": 0.0, "class_weighting": "none", "seed": 0},
    }, source="test")
    data = load_data(cfg.data, splits=("train", "val"), progress=False)
    result = fit(cfg, data)
    train, val = data.splits["train"].labels, data.splits["val"].labels
    cols = [data.attributes.index(a) for a in VISIBLE_ATTRIBUTES]
    majority = (train.mean(0) > 0.5).astype(np.float32)  # the train split's majority class
    baseline = float((val == majority).mean(0)[cols].mean())
    report = result.report.set_index("attribute").loc[VISIBLE_ATTRIBUTES]
    accuracy = float(report["accuracy"].mean())
    assert accuracy > baseline + 0.05, (accuracy, baseline)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
