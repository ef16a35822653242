"""Train and evaluate one configuration: `train_one_epoch`, `evaluate`, `fit`.

No Optuna and no MLflow in here: a study plugs in through `Callback.on_epoch_end` (report the
epoch, raise TrialPruned) and a tracker through the same hook. Exceptions raised by a callback
propagate unchanged.

Speed without surprises:
- batches come from `celebhpo.data.BatchLoader` (decoded once, flipped/normalized as tensor
  ops on the device);
- on CUDA: bf16 autocast (`[train] amp`), channels_last (`[train] channels_last`), fused Adam,
  optional `torch.compile` (`[train] compile`);
- no host synchronisation inside the batch loop: the loss sum, and the index of the first
  non-finite batch, accumulate on the device and are read once per epoch. A NaN/inf loss is
  therefore detected at the end of the epoch it happened in (the rest of that epoch's steps
  are wasted, never reported) and raises TrainingError naming epoch, batch and lr;
- evaluation runs in large batches (`eval_batch_size`), without flips, under inference_mode.

The learning-rate schedule steps once per batch: linear warm-up over `warmup_epochs` epochs'
worth of steps, then constant (`scheduler = "none"`) or cosine decay to 0 over the remaining
steps (`scheduler = "cosine"`).

On the CPU a run is repeatable: same seed, same history (timings aside).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from celebhpo.errors import ConfigError, DataError, TrainingError
from celebhpo.training.devices import resolve_device

if TYPE_CHECKING:
    import pandas as pd

    from celebhpo.config import StudyConfig
    from celebhpo.data import BatchLoader, DataBundle

__all__ = [
    "Callback",
    "EpochStats",
    "EvalOutput",
    "FitResult",
    "class_weights",
    "evaluate",
    "fit",
    "make_loss",
    "make_optimizer",
    "make_scheduler",
    "summarize",
    "train_one_epoch",
]


# -- small types -----------------------------------------------------------------------------
class Callback:
    """Hooks into `fit`. All no-ops; override what you need.

    `on_epoch_end` may raise to stop the run (e.g. optuna.TrialPruned): fit lets the exception
    through unchanged. Hooks get plain Python values, never device tensors.
    """

    def on_fit_start(self, info: dict[str, Any]) -> None:
        """Once, before the first epoch: device, arch, image counts, batches per epoch..."""

    def on_batch_end(self, epoch: int, batch: int, n_batches: int) -> None:
        """After each optimizer step (batch counts from 0). Must not sync the device."""

    def on_epoch_end(self, epoch: int, metrics: dict[str, Any]) -> None:
        """After each epoch's validation; `metrics` is that epoch's history row."""


@dataclass
class EpochStats:
    loss: float  # mean training loss over the epoch's images
    images: int
    seconds: float
    bad_batch: int  # index of the first batch whose loss was NaN/inf; -1 if none


@dataclass
class EvalOutput:
    loss: float  # mean loss over every image and attribute of the split
    probs: np.ndarray  # (N, A) sigmoid(logits), float32
    targets: np.ndarray  # (N, A) 0/1, float32


@dataclass
class FitResult:
    history: list[dict[str, Any]]  # one row per epoch (keys: see fit)
    best_epoch: int  # from 1, by lowest val_loss
    best_metrics: dict[str, float]
    report: pd.DataFrame  # metrics.per_class_report on validation at the best epoch
    thresholds: np.ndarray  # (A,) tuned on validation at the best epoch
    checkpoint_path: Path | None
    stopped_early: bool
    device: str


# -- loss, optimizer -----------------------------------------------------------------
def class_weights(labels: np.ndarray, scheme: str) -> np.ndarray | None:
    """(A,) loss weights from the train split's (N, A) 0/1 labels.

    pos_weight: negatives/positives per attribute (BCE's `pos_weight`: scales positive terms);
    seed: n / (A * positives), the seed project's per-attribute `weight` (scales both terms);
    none: None. An attribute with no positive (or, for pos_weight, no negative) in the train
    split gets 1.0: there is no evidence to re-weight it by.
    """
    y = np.asarray(labels, dtype=np.float64)
    n, n_attr = y.shape
    pos = (y > 0.5).sum(0)
    neg = n - pos
    if scheme == "none":
        return None
    if scheme == "pos_weight":
        ok = (pos > 0) & (neg > 0)
        return np.where(ok, neg / np.maximum(pos, 1), 1.0)
    if scheme == "seed":
        return np.where(pos > 0, n / (n_attr * np.maximum(pos, 1)), 1.0)
    raise ConfigError(f"[train] class_weighting = {scheme!r}: use pos_weight, seed or none")


def make_loss(labels: np.ndarray, scheme: str, device: torch.device | str = "cpu"
              ) -> nn.BCEWithLogitsLoss:
    """BCEWithLogitsLoss (mean over images and attributes) weighted per `class_weights`."""
    w = class_weights(labels, scheme)
    if w is None:
        return nn.BCEWithLogitsLoss()
    t = torch.tensor(w, dtype=torch.float32, device=device)  # (A,)
    if scheme == "pos_weight":
        return nn.BCEWithLogitsLoss(pos_weight=t)
    return nn.BCEWithLogitsLoss(weight=t)


def make_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float,
                   device: torch.device) -> torch.optim.Optimizer:
    # fused kernels on CUDA: one launch per step instead of one per parameter tensor
    extra = {"fused": True} if device.type == "cuda" else {}
    params = [p for p in model.parameters() if p.requires_grad]
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, **extra)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, **extra)
    raise ConfigError(f"[train] optimizer = {name!r}: use adam or adamw")


def make_scheduler(optimizer: torch.optim.Optimizer, kind: str, warmup_steps: int,
                   total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step multiplier: linear warm-up to 1 over `warmup_steps`, then 1 ("none") or a
    cosine decay to 0 at `total_steps` ("cosine")."""
    if kind not in ("none", "cosine"):
        raise ConfigError(f"[train] scheduler = {kind!r}: use none or cosine")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if kind == "none":
            return 1.0
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# -- one epoch -------------------------------------------------------------------------------
def train_one_epoch(
    model: nn.Module,
    loader: BatchLoader,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    epoch: int = 1,
    grad_clip: float = 0.0,
    amp: bool = False,
    callbacks: Sequence[Callback] = (),
    max_batches: int | None = None,
) -> EpochStats:
    """One pass over `loader` (optimizer and scheduler step per batch). Reads the device once,
    at the end. `max_batches` stops early (benchmarks). Non-finite losses are counted, not
    raised: the caller decides (fit raises TrainingError)."""
    model.train()
    device = next(model.parameters()).device
    loss_sum = torch.zeros((), dtype=torch.float32, device=device)  # sum of loss * B
    bad = torch.full((), -1, dtype=torch.int64, device=device)  # first non-finite batch
    n_batches = len(loader) if max_batches is None else min(len(loader), max_batches)
    images = 0
    start = time.perf_counter()
    for b, (x, y) in enumerate(loader):  # x (B, 3, S, S) float32, y (B, A) on device
        if b >= n_batches:
            break
        # forward (bf16 autocast on CUDA); the loss in fp32
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(x)  # (B, A)
        loss = loss_fn(logits.float(), y)
        # backward + step
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        # bookkeeping on the device: no .item() here
        detached = loss.detach()
        loss_sum += detached * x.shape[0]
        bad = torch.where((bad < 0) & ~torch.isfinite(detached), torch.full_like(bad, b), bad)
        images += x.shape[0]
        for cb in callbacks:
            cb.on_batch_end(epoch, b, n_batches)
    # the one host sync of the epoch
    total, first_bad = loss_sum.item(), int(bad.item())
    return EpochStats(loss=total / max(images, 1), images=images,
                      seconds=time.perf_counter() - start, bad_batch=first_bad)


def evaluate(model: nn.Module, loader: BatchLoader, loss_fn: nn.Module, *,
             amp: bool = False) -> EvalOutput:
    """Loss, probabilities and targets of the WHOLE split (no flip: give a loader built with
    flip=False, shuffle=False). Predictions are `sigmoid(logits)`, per attribute."""
    model.eval()
    device = next(model.parameters()).device
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    probs, targets = [], []
    n = 0
    with torch.inference_mode():
        for x, y in loader:  # x (B, 3, S, S), y (B, A)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
                logits = model(x)  # (B, A)
            logits = logits.float()
            loss_sum += loss_fn(logits, y).double() * x.shape[0]
            probs.append(torch.sigmoid(logits))
            targets.append(y)
            n += x.shape[0]
    if n == 0:
        raise DataError("evaluate: the split has no images")
    return EvalOutput(loss=float(loss_sum.item()) / n,
                      probs=torch.cat(probs).cpu().numpy(),
                      targets=torch.cat(targets).cpu().numpy())


# -- fit one configuration -------------------------------------------------------------------
def fit(cfg: StudyConfig, data: DataBundle, callbacks: Iterable[Callback] = (),
        checkpoint_path: str | Path | None = None) -> FitResult:
    """Train `cfg` on `data.splits["train"]`, validate on `["val"]` every epoch, keep the best
    epoch (lowest val_loss) and write its checkpoint to `checkpoint_path` (if given).

    History rows: epoch, train_loss, val_loss, val_mean_acc, val_balanced_acc, val_map, lr,
    epoch_seconds, images_per_s (training images per second of the training phase).
    Raises TrainingError on a NaN/inf loss; callback exceptions propagate unchanged.
    """
    from celebhpo.data import IMAGENET_MEAN, IMAGENET_STD, BatchLoader
    from celebhpo.training.checkpoint import FORMAT, VERSION, save_checkpoint
    from celebhpo.training.metrics import compute_metrics, per_class_report, tune_thresholds
    from celebhpo.training.models import create_model

    tc = cfg.train
    callbacks = list(callbacks)
    for split in ("train", "val"):
        if split not in data.splits or len(data.splits[split].labels) == 0:
            raise DataError(f"{data.root}: fit needs a non-empty {split} split")
    train, val = data.splits["train"], data.splits["val"]
    attributes = list(data.attributes)

    # setup: seeds, device, model, loss, optimizer, loaders
    torch.manual_seed(tc.seed)  # model init and dropout; the loaders have their own seeds
    np.random.seed(tc.seed % 2**32)
    device = resolve_device(tc.device)
    on_cuda = device.type == "cuda"
    if on_cuda:
        # fixed input sizes: let cuDNN pick the fastest kernels once
        torch.backends.cudnn.benchmark = True
    amp = bool(tc.amp and on_cuda)
    channels_last = bool(tc.channels_last and on_cuda)
    model = create_model(tc.arch, num_labels=len(attributes), num_features=tc.num_features,
                         dropout=tc.dropout, pretrained=tc.pretrained).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    run_model: nn.Module = torch.compile(model) if tc.compile else model
    loss_fn = make_loss(train.labels, tc.class_weighting, device)
    mean = tuple(cfg.data.mean) if cfg.data.mean else IMAGENET_MEAN
    std = tuple(cfg.data.std) if cfg.data.std else IMAGENET_STD
    # drop a ragged last batch: a batch of one breaks BatchNorm, and the next epoch's shuffle
    # brings the dropped images back
    train_loader = BatchLoader(train.images, train.labels, tc.batch_size, shuffle=True,
                               flip=True, mean=mean, std=std, device=device, seed=tc.seed,
                               channels_last=channels_last,
                               drop_last=len(train.labels) > tc.batch_size)
    val_loader = BatchLoader(val.images, val.labels, tc.eval_batch_size, shuffle=False,
                             flip=False, mean=mean, std=std, device=device,
                             channels_last=channels_last)
    optimizer = make_optimizer(model, tc.optimizer, tc.lr, tc.weight_decay, device)
    steps = len(train_loader)
    scheduler = None
    if tc.scheduler != "none" or tc.warmup_epochs > 0:
        scheduler = make_scheduler(optimizer, tc.scheduler, tc.warmup_epochs * steps,
                                   tc.epochs * steps)
    info = {"device": str(device), "arch": tc.arch, "n_train": train_loader.num_images,
            "n_val": val_loader.num_images, "batches_per_epoch": steps, "amp": amp,
            "channels_last": channels_last, "compile": bool(tc.compile),
            "parameters": sum(p.numel() for p in model.parameters())}
    for cb in callbacks:
        cb.on_fit_start(dict(info))

    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {}
    stopped_early = False
    for epoch in range(1, tc.epochs + 1):
        started = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]  # the lr of this epoch's first step
        # train
        train_loader.set_epoch(epoch)
        stats = train_one_epoch(run_model, train_loader, loss_fn, optimizer,
                                scheduler=scheduler, epoch=epoch, grad_clip=tc.grad_clip,
                                amp=amp, callbacks=callbacks)
        if stats.bad_batch >= 0 or not math.isfinite(stats.loss):
            raise TrainingError(
                f"training loss became NaN/inf at epoch {epoch}, batch {stats.bad_batch + 1} "
                f"of {steps} (lr {lr:.3g}, arch {tc.arch}); lower [train] lr, set "
                "[train] grad_clip (e.g. 1.0) or check the data"
            )
        # validate on the whole split
        out = evaluate(run_model, val_loader, loss_fn, amp=amp)
        if not math.isfinite(out.loss):
            raise TrainingError(
                f"validation loss is NaN/inf after epoch {epoch} (lr {lr:.3g}, arch "
                f"{tc.arch}); lower [train] lr or set [train] grad_clip"
            )
        m = compute_metrics(out.probs, out.targets)
        row = {"epoch": epoch, "train_loss": stats.loss, "val_loss": out.loss,
               "val_mean_acc": m["mean_acc"], "val_balanced_acc": m["balanced_acc"],
               "val_map": m["map"], "lr": lr, "epoch_seconds": time.perf_counter() - started,
               "images_per_s": stats.images / max(stats.seconds, 1e-9)}
        history.append(row)
        # keep the best epoch's weights (a CPU copy) and validation outputs
        if not best or out.loss < best["row"]["val_loss"]:
            best = {"row": row, "metrics": m, "out": out,
                    "state": {k: v.detach().to("cpu", copy=True)
                              for k, v in model.state_dict().items()}}
        # report: callbacks may raise (pruning); let it through unchanged
        for cb in callbacks:
            cb.on_epoch_end(epoch, dict(row))
        # early stopping on val_loss
        if tc.patience > 0 and epoch - best["row"]["epoch"] >= tc.patience:
            stopped_early = epoch < tc.epochs
            break

    # after training: thresholds and per-class report at the best epoch, then the checkpoint
    out = best["out"]
    thresholds = tune_thresholds(out.probs, out.targets, metric=tc.threshold_metric)
    report = per_class_report(out.probs, out.targets, attributes, thresholds)
    tuned = compute_metrics(out.probs, out.targets, thresholds=thresholds)
    best_metrics: dict[str, float] = {k: float(v) for k, v in best["row"].items()}
    best_metrics.update({f"val_{k}": float(v) for k, v in best["metrics"].items()})
    best_metrics.update({f"val_tuned_{k}": float(tuned[k])
                         for k in ("mean_acc", "balanced_acc", "micro_f1", "macro_f1")})
    saved: Path | None = None
    if checkpoint_path is not None:
        saved = save_checkpoint(checkpoint_path, {
            "format": FORMAT, "version": VERSION, "arch": tc.arch, "state_dict": best["state"],
            "config": cfg.to_dict(), "attributes": attributes,
            "normalization": {"mean": [float(v) for v in mean], "std": [float(v) for v in std]},
            "thresholds": [float(t) for t in thresholds], "metrics": best_metrics,
            "epoch": int(best["row"]["epoch"]), "image_size": int(train.images.shape[1]),
            "crop": cfg.data.crop,
        })
    return FitResult(history=history, best_epoch=int(best["row"]["epoch"]),
                     best_metrics=best_metrics, report=report, thresholds=thresholds,
                     checkpoint_path=saved, stopped_early=stopped_early, device=str(device))


def summarize(result: FitResult) -> str:
    """A few lines for people: the epochs, then the best epoch's headline figures."""
    lines = ["epoch  train_loss  val_loss  val_mean_acc  val_map  images/s"]
    for h in result.history:
        lines.append(f"{h['epoch']:>5}  {h['train_loss']:>10.4f}  {h['val_loss']:>8.4f}  "
                     f"{h['val_mean_acc']:>12.4f}  {h['val_map']:>7.4f}  "
                     f"{h['images_per_s']:>8.0f}")
    b = result.best_metrics
    lines.append(f"best epoch {result.best_epoch}: val_loss {b['val_loss']:.4f}, mean acc "
                 f"{b['val_mean_acc']:.4f} (tuned {b['val_tuned_mean_acc']:.4f}), mAP "
                 f"{b['val_map']:.4f}" + (" (stopped early)" if result.stopped_early else ""))
    return "\n".join(lines)
