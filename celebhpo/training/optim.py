"""The loss, optimizer and learning-rate schedule of one run.

The schedule steps once per batch: linear warm-up over `warmup_epochs` epochs' worth of steps,
then constant (`scheduler = "none"`) or cosine decay to 0 over the remaining steps
(`scheduler = "cosine"`).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from celebhpo.errors import ConfigError

__all__ = ["class_weights", "make_loss", "make_optimizer", "make_scheduler"]


def class_weights(labels: np.ndarray, scheme: str) -> np.ndarray | None:
    """(A,) loss weights from the train split's (N, A) 0/1 labels.

    none: None (the default: plain BCE serves mean accuracy, the field's headline metric);
    pos_weight: negatives/positives per attribute (BCE's `pos_weight`: scales positive terms);
    inverse_frequency (alias: seed): n / (A * positives), the seed project's per-attribute
    `weight` (scales both terms of an attribute by its inverse positive rate / A).
    An attribute with no positive (or, for pos_weight, no negative) in the train
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
    if scheme in ("inverse_frequency", "seed"):
        return np.where(pos > 0, n / (n_attr * np.maximum(pos, 1)), 1.0)
    raise ConfigError(f"[train] class_weighting = {scheme!r}: use none, pos_weight or "
                      "inverse_frequency")


def make_loss(labels: np.ndarray, scheme: str, device: torch.device | str = "cpu"
              ) -> nn.BCEWithLogitsLoss:
    """BCEWithLogitsLoss (mean over images and attributes) weighted per `class_weights`: the
    training loss. Trials are compared by the plain one (see training.epoch.evaluate)."""
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
