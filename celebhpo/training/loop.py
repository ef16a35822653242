"""Train and evaluate one configuration: `fit`, over `train_one_epoch` and `evaluate`.

No Optuna and no MLflow in here: a study plugs in through `Callback.on_epoch_end` (report the
epoch, raise TrialPruned) and a tracker through the same hook. Exceptions raised by a callback
propagate unchanged.

Speed without surprises:
- batches come from `celebhpo.data.BatchLoader` (decoded once, flipped/normalized as tensor
  ops on the device);
- channels_last on every device; bf16 autocast for the training steps where the device has
  native bf16 (`[train] amp`, see training.amp); validation always in fp32, so the thresholds
  are tuned on the probabilities inference sees; fused Adam on CUDA; optional `torch.compile`;
- a NaN/inf loss is found at the end of its epoch (see training.epoch) and raises
  TrainingError naming epoch, batch and lr.

On the CPU a run is repeatable: same seed, same history (timings aside); and resumable after
any epoch (training.resume) with the same result.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from celebhpo.data import IMAGENET_MEAN, IMAGENET_STD, BatchLoader
from celebhpo.errors import ConfigError, DataError, TrainingError
from celebhpo.training import models
from celebhpo.training.amp import enable_fast_fp32, resolve_amp
from celebhpo.training.checkpoint import Checkpoint
from celebhpo.training.devices import resolve_device
from celebhpo.training.epoch import Callback, EpochStats, EvalOutput, evaluate, train_one_epoch
from celebhpo.training.metrics import better_row, compute_metrics, per_class_report, tune_thresholds
from celebhpo.training.optim import class_weights, make_loss, make_optimizer, make_scheduler
from celebhpo.training.resume import BestEpoch, capture_state, data_shape, restore_state
from celebhpo.training.slices import SliceResult, resolve_slices, slice_metrics, worst_group_acc

if TYPE_CHECKING:
    import pandas as pd

    from celebhpo.config import StudyConfig, TrainConfig
    from celebhpo.data import DataBundle

# the loop's parts are imported from here by the rest of celebhpo
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
    "train_one_epoch",
]


@dataclass
class FitResult:
    history: list[dict[str, Any]]  # one row per epoch (keys: see fit)
    best_epoch: int  # from 1, by the study's metric (lowest val_loss, highest accuracy...)
    best_metrics: dict[str, float]
    report: pd.DataFrame  # metrics.per_class_report on validation at the best epoch
    thresholds: np.ndarray  # (A,) tuned on validation at the best epoch
    checkpoint_path: Path | None
    stopped_early: bool
    device: str
    resumed_from: int = 0  # the resume state's epoch; 0 when the run started from scratch
    slices: SliceResult | None = None  # validation, best epoch, tuned thresholds; None: off


@dataclass
class _Run:
    """What the setup phase builds for the epochs and the final phase."""

    device: torch.device
    amp: bool
    model: nn.Module  # the weights that are kept
    run_model: nn.Module  # `model`, or its torch.compile wrapper: what runs the batches
    loss_fn: nn.Module  # the training loss (class-weighted per [train] class_weighting)
    weighted: bool  # whether it is weighted: then validation logs it as val_loss_weighted
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR | None
    train_loader: BatchLoader
    val_loader: BatchLoader
    mean: tuple[float, ...]
    std: tuple[float, ...]
    info: dict[str, Any]  # what Callback.on_fit_start gets
    shape: dict[str, int]  # data_shape(data): what a resume state checks
    slices: list[int]  # the [study] slices' attribute columns ([] = off)
    attributes: list[str]


def fit(cfg: StudyConfig, data: DataBundle, callbacks: Iterable[Callback] = (),
        checkpoint_path: str | Path | None = None, *,
        on_state: Callable[[dict[str, Any]], None] | None = None,
        resume: dict[str, Any] | None = None) -> FitResult:
    """Train `cfg` on `data.splits["train"]`, validate on `["val"]` every epoch, keep the best
    epoch by the study's metric (`[study] metric`, in its direction) and write its checkpoint
    to `checkpoint_path` (if given). Early stopping (`[train] patience`) uses the same metric.

    Resuming (training.resume): `on_state(state)` gets the run's resume state after each
    epoch, once the callbacks have seen it (it holds live tensors: save it before
    returning); `resume=state` goes on after that state's epoch, and the result equals an
    uninterrupted run's (exactly on the CPU). Its earlier epochs are in the history but are
    not passed to the callbacks again. CheckpointError when the state belongs to another
    configuration or data.

    History rows: epoch, train_loss, val_loss (plain BCE, whatever the training loss is
    weighted with), val_loss_weighted (only when it is weighted), val_mean_acc,
    val_balanced_acc, val_map, val_mean_acc_reliable (training.metrics), val_worst_group_acc
    (only with [study] slices; training.slices) (all at 0.5), lr, epoch_seconds, images_per_s
    (training images per second of the training phase).
    Raises TrainingError on a NaN/inf loss; callback exceptions propagate unchanged.
    """
    callbacks = list(callbacks)
    # setup: seeds, device, model, loss, optimizer, loaders
    run = _setup(cfg, data)
    done: tuple[list[dict[str, Any]], BestEpoch] | None = None
    if resume is not None:
        done = restore_state(resume, cfg.to_dict(), run.shape, run.model, run.optimizer,
                             run.scheduler)
    for cb in callbacks:
        cb.on_fit_start(dict(run.info))
    # the epochs: train, validate, keep the best, report (callbacks may stop the run)
    history, best, stopped_early = _epochs(cfg, run, callbacks, done, on_state)
    # after training: thresholds and per-class report at the best epoch, then the checkpoint
    thresholds, report, best_metrics, slices = _tune(cfg.train, run, best)
    saved: Path | None = None
    if checkpoint_path is not None:
        saved = Checkpoint(
            arch=cfg.train.arch, state_dict=best.state, config=cfg.to_dict(),
            attributes=list(data.attributes), mean=[float(v) for v in run.mean],
            std=[float(v) for v in run.std], thresholds=[float(t) for t in thresholds],
            metrics=best_metrics, epoch=int(best.row["epoch"]),
            image_size=int(data.splits["train"].images.shape[1]), crop=cfg.data.crop,
        ).save(checkpoint_path)
    return FitResult(history=history, best_epoch=int(best.row["epoch"]),
                     best_metrics=best_metrics, report=report, thresholds=thresholds,
                     checkpoint_path=saved, stopped_early=stopped_early, device=str(run.device),
                     resumed_from=len(done[0]) if done else 0, slices=slices)


def _setup(cfg: StudyConfig, data: DataBundle) -> _Run:
    tc = cfg.train
    for split in ("train", "val"):
        if split not in data.splits or len(data.splits[split].labels) == 0:
            raise DataError(f"{data.root}: fit needs a non-empty {split} split")
    train, val = data.splits["train"], data.splits["val"]
    # a missing slice attribute fails before any work
    slices = resolve_slices(cfg.study.slices, data.attributes)
    torch.manual_seed(tc.seed)  # model init and dropout; the loaders have their own seeds
    np.random.seed(tc.seed % 2**32)
    device = resolve_device(tc.device)
    enable_fast_fp32(device)  # CUDA: TF32 for the fp32 passes, cuDNN autotuning
    amp = resolve_amp(tc.amp, device)  # bf16 training steps where native
    channels_last = bool(tc.channels_last)
    model = models.create_model(tc.arch, num_labels=len(data.attributes),
                                num_features=tc.num_features, dropout=tc.dropout,
                                pretrained=tc.pretrained).to(device)
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
    return _Run(device=device, amp=amp, model=model, run_model=run_model, loss_fn=loss_fn,
                weighted=tc.class_weighting != "none", optimizer=optimizer, scheduler=scheduler,
                train_loader=train_loader, val_loader=val_loader, mean=mean, std=std, info=info,
                shape=data_shape(data), slices=slices, attributes=list(data.attributes))


def _epochs(cfg: StudyConfig, run: _Run, callbacks: Sequence[Callback],
            done: tuple[list[dict[str, Any]], BestEpoch] | None,
            on_state: Callable[[dict[str, Any]], None] | None
            ) -> tuple[list[dict[str, Any]], BestEpoch, bool]:
    """Run the epochs after those `done` (a resumed run's); returns (history, the best epoch,
    whether it stopped early)."""
    tc = cfg.train
    better = better_row(cfg.study.metric, cfg.study.resolved_direction())
    history, best = (list(done[0]), done[1]) if done else ([], None)
    for epoch in range(len(history) + 1, tc.epochs + 1):
        # early stopping on the study's metric, after the previous epoch
        if best is not None and tc.patience > 0 and epoch - 1 - best.row["epoch"] >= tc.patience:
            return history, best, True
        row, m, out = _one_epoch(tc, run, epoch, callbacks)
        history.append(row)
        # keep the best epoch's weights (a CPU copy) and validation outputs
        if best is None or better(row, best.row):
            best = BestEpoch(row=row, metrics=m, out=out,
                             state={k: v.detach().to("cpu", copy=True)
                                    for k, v in run.model.state_dict().items()})
        # report: callbacks may raise (pruning); let it through unchanged
        for cb in callbacks:
            cb.on_epoch_end(epoch, dict(row))
        # the resume state of this epoch, for a run that dies later
        if on_state is not None:
            on_state(capture_state(epoch, history, run.model, run.optimizer, run.scheduler,
                                   best, cfg.to_dict(), run.shape))
    if best is None:  # only a config that skipped validation gets here
        raise ConfigError(f"[train] epochs = {tc.epochs} must be > 0")
    return history, best, False


def _one_epoch(tc: TrainConfig, run: _Run, epoch: int, callbacks: Sequence[Callback]
               ) -> tuple[dict[str, Any], dict[str, float], EvalOutput]:
    """Train and validate one epoch: (its history row, metrics at 0.5, validation outputs)."""
    started = time.perf_counter()
    lr = run.optimizer.param_groups[0]["lr"]  # the lr of this epoch's first step
    # train
    run.train_loader.set_epoch(epoch)
    stats = train_one_epoch(run.run_model, run.train_loader, run.loss_fn, run.optimizer,
                            scheduler=run.scheduler, epoch=epoch, grad_clip=tc.grad_clip,
                            amp=run.amp, callbacks=callbacks)
    _check_finite(tc, epoch, lr, stats=stats, steps=len(run.train_loader))
    # validate on the whole split: plain BCE (comparable across weightings), and the
    # training loss too when it is weighted
    out = evaluate(run.run_model, run.val_loader, amp=False,  # fp32: see training.amp
                   weighted_loss_fn=run.loss_fn if run.weighted else None, callbacks=callbacks)
    _check_finite(tc, epoch, lr, out=out)
    m = compute_metrics(out.probs, out.targets, attributes=run.attributes)
    row = {"epoch": epoch, "train_loss": stats.loss, "val_loss": out.loss,
           "val_mean_acc": m["mean_acc"], "val_balanced_acc": m["balanced_acc"],
           "val_map": m["map"], "val_mean_acc_reliable": m["mean_acc_reliable"], "lr": lr,
           "epoch_seconds": time.perf_counter() - started,
           "images_per_s": stats.images / max(stats.seconds, 1e-9)}
    if run.slices:
        row["val_worst_group_acc"] = worst_group_acc(out.probs, out.targets, run.slices)
    if out.weighted_loss is not None:
        row["val_loss_weighted"] = out.weighted_loss
    return row, m, out


def _check_finite(tc: TrainConfig, epoch: int, lr: float, *, stats: EpochStats | None = None,
                  steps: int = 0, out: EvalOutput | None = None) -> None:
    """TrainingError naming the epoch (and batch) when the training or validation loss of
    `epoch` is NaN/inf."""
    if stats is not None and (stats.bad_batch >= 0 or not math.isfinite(stats.loss)):
        raise TrainingError(
            f"training loss became NaN/inf at epoch {epoch}, batch {stats.bad_batch + 1} "
            f"of {steps} (lr {lr:.3g}, arch {tc.arch}); lower [train] lr, set "
            "[train] grad_clip (e.g. 1.0) or check the data"
        )
    if out is not None and not math.isfinite(out.loss):
        raise TrainingError(
            f"validation loss is NaN/inf after epoch {epoch} (lr {lr:.3g}, arch "
            f"{tc.arch}); lower [train] lr or set [train] grad_clip"
        )


def _tune(tc: TrainConfig, run: _Run, best: BestEpoch
          ) -> tuple[np.ndarray, pd.DataFrame, dict[str, float], SliceResult | None]:
    """Thresholds tuned on validation at the best epoch, the per-class report at them, the
    best epoch's metrics (its history row, its metrics at 0.5, the tuned headline ones) and
    its slice metrics at the tuned thresholds (None when [study] slices is off)."""
    out, attributes = best.out, run.attributes
    thresholds = tune_thresholds(out.probs, out.targets, metric=tc.threshold_metric)
    report = per_class_report(out.probs, out.targets, attributes, thresholds)
    tuned = compute_metrics(out.probs, out.targets, thresholds=thresholds, attributes=attributes)
    best_metrics: dict[str, float] = {k: float(v) for k, v in best.row.items()}
    best_metrics.update({f"val_{k}": float(v) for k, v in best.metrics.items()})
    best_metrics.update({f"val_tuned_{k}": float(tuned[k]) for k in (
        "mean_acc", "mean_acc_reliable", "balanced_acc", "micro_f1", "macro_f1")})
    slices = None
    if run.slices:
        slices = slice_metrics(out.probs, out.targets, attributes,
                               [attributes[j] for j in run.slices], thresholds)
        best_metrics["val_tuned_worst_group_acc"] = slices.worst_group_acc
    return thresholds, report, best_metrics, slices
