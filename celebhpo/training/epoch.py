"""One training pass and one evaluation pass: `train_one_epoch`, `evaluate`, and the
`Callback` hooks they (and `fit`) call.

Speed without surprises:
- no host synchronisation inside the batch loop: the loss sum, and the index of the first
  non-finite batch, accumulate on the device and are read once per epoch. A NaN/inf loss is
  therefore detected at the end of the epoch it happened in (the rest of that epoch's steps
  are wasted, never reported);
- evaluation runs in large batches (`eval_batch_size`), without flips, under inference_mode.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from celebhpo.errors import DataError
from celebhpo.stopping import StopRequest

if TYPE_CHECKING:
    from celebhpo.data import BatchLoader

__all__ = ["Callback", "EpochStats", "EvalOutput", "StopCheck", "evaluate", "train_one_epoch"]


class Callback:
    """Hooks into `fit`. All no-ops; override what you need.

    `on_epoch_end` may raise to stop the run (e.g. optuna.TrialPruned): fit lets the exception
    through unchanged. Hooks get plain Python values, never device tensors.
    """

    def on_fit_start(self, info: dict[str, Any]) -> None:
        """Once, before the first epoch: device, arch, image counts, batches per epoch..."""

    def on_batch_end(self, epoch: int, batch: int, n_batches: int) -> None:
        """After each optimizer step (batch counts from 0). Must not sync the device."""

    def on_eval_batch_end(self, batch: int, n_batches: int) -> None:
        """After each batch of `evaluate` (from 0). Must not sync the device."""

    def on_epoch_end(self, epoch: int, metrics: dict[str, Any]) -> None:
        """After each epoch's validation; `metrics` is that epoch's history row."""


class StopCheck(Callback):
    """The safe points of a run: after every batch (training and validation) and every
    epoch, raise `Interrupted` once `stop` holds a request (celebhpo.stopping)."""

    def __init__(self, stop: StopRequest) -> None:
        self.stop = stop

    def on_batch_end(self, epoch: int, batch: int, n_batches: int) -> None:
        self.stop.check()

    def on_eval_batch_end(self, batch: int, n_batches: int) -> None:
        self.stop.check()

    def on_epoch_end(self, epoch: int, metrics: dict[str, Any]) -> None:
        self.stop.check()


@dataclass
class EpochStats:
    loss: float  # mean training loss over the epoch's images
    images: int
    seconds: float
    bad_batch: int  # index of the first batch whose loss was NaN/inf; -1 if none


@dataclass
class EvalOutput:
    loss: float  # mean `loss_fn` over every image and attribute of the split
    probs: np.ndarray  # (N, A) sigmoid(logits), float32
    targets: np.ndarray  # (N, A) 0/1, float32
    weighted_loss: float | None = None  # mean `weighted_loss_fn` likewise, when given


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


def evaluate(model: nn.Module, loader: BatchLoader, loss_fn: nn.Module | None = None, *,
             amp: bool = False, weighted_loss_fn: nn.Module | None = None,
             callbacks: Sequence[Callback] = ()) -> EvalOutput:
    """Loss, probabilities and targets of the WHOLE split (no flip: give a loader built with
    flip=False, shuffle=False). Predictions are `sigmoid(logits)`, per attribute; `amp` runs
    the forward under bf16 autocast (fit evaluates in fp32).

    `loss` is `loss_fn` (default: plain, unweighted BCE, the loss trials are compared by);
    `weighted_loss_fn`, when given, is computed on the same logits in the same pass (fit uses
    it to log the class-weighted training loss on validation too). `callbacks` get
    `on_eval_batch_end` after each batch."""
    model.eval()
    device = next(model.parameters()).device
    loss_fn = loss_fn if loss_fn is not None else nn.BCEWithLogitsLoss()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    weighted_sum = torch.zeros((), dtype=torch.float64, device=device)
    probs, targets = [], []
    n, n_batches = 0, len(loader)
    # a torch.compile'd model recompiles under inference_mode; no_grad keeps its graphs
    with torch.no_grad() if hasattr(model, "_orig_mod") else torch.inference_mode():
        for b, (x, y) in enumerate(loader):  # x (B, 3, S, S), y (B, A)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
                logits = model(x)  # (B, A)
            logits = logits.float()
            loss_sum += loss_fn(logits, y).double() * x.shape[0]
            if weighted_loss_fn is not None:
                weighted_sum += weighted_loss_fn(logits, y).double() * x.shape[0]
            probs.append(torch.sigmoid(logits))
            targets.append(y)
            n += x.shape[0]
            for cb in callbacks:
                cb.on_eval_batch_end(b, n_batches)
    if n == 0:
        raise DataError("evaluate: the split has no images")
    return EvalOutput(loss=float(loss_sum.item()) / n,
                      probs=torch.cat(probs).cpu().numpy(),
                      targets=torch.cat(targets).cpu().numpy(),
                      weighted_loss=(float(weighted_sum.item()) / n
                                     if weighted_loss_fn is not None else None))
