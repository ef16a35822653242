"""A run's resume state: what `fit` needs to go on after a finished epoch exactly as if it had
never stopped (on the CPU: the same history, best epoch, thresholds and weights).

`fit(on_state=...)` is handed one after every epoch; `fit(resume=...)` starts from one.
`checkpoint.save_resume_state` / `load_resume_state` write it atomically and read it with
`torch.load(weights_only=True)`, so it holds only tensors and plain values:

    format     "celebhpo-resume"
    version    1
    epoch      the last finished epoch (from 1): a resumed fit goes on with epoch + 1
    history    fit's history rows of epochs 1..epoch
    model      the model's state_dict (weights and BatchNorm statistics)
    optimizer  the optimizer's state_dict (Adam/AdamW: two moments per weight)
    scheduler  the learning-rate schedule's state_dict, or None
    rng        {"torch": the CPU generator, "cuda": the run's GPU generator or None,
               "numpy": numpy's global generator as plain values}
    best       the best epoch so far: "row", "metrics" (at 0.5), "weights", and its
               validation "loss", "weighted_loss", "probs", "targets" (the thresholds are
               tuned on them at the end)
    config     the settings that shape the run (`fingerprint`)
    data       {"n_train", "n_val", "image_size"}

A state resumes only the configuration and data it was made with (`check_state`). Its size is
about 4x the model's weights (weights, Adam's two moments, the best epoch's weights) plus the
best epoch's validation probabilities and targets. The batch order and flips need no state:
they depend only on (seed, epoch) (data.loader). Imports no optuna/mlflow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from celebhpo.errors import CheckpointError
from celebhpo.training.checkpoint import RESUME_FORMAT, RESUME_VERSION
from celebhpo.training.epoch import EvalOutput

if TYPE_CHECKING:
    from celebhpo.data import DataBundle

__all__ = ["BestEpoch", "capture_state", "check_state", "data_shape", "fingerprint",
           "restore_state"]

# settings that do not change what a run computes (on the same device kind)
_FREE = {"train": {"device", "compile"}, "data": {"root", "layout", "cache_dir"}}


@dataclass
class BestEpoch:
    """The best epoch so far, as fit keeps it."""

    row: dict[str, Any]  # the epoch's history row
    metrics: dict[str, float]  # compute_metrics at 0.5
    out: EvalOutput  # its validation outputs
    state: dict[str, torch.Tensor]  # a CPU copy of its weights


def fingerprint(config: dict[str, Any]) -> dict[str, Any]:
    """The parts of a StudyConfig.to_dict() that shape a run's numbers: [train] and [data]
    (less where files live and the device), and the metric that picks the best epoch."""
    out: dict[str, Any] = {"study.metric": config["study"]["metric"],
                           "study.direction": config["study"]["direction"]}
    for section in ("train", "data"):
        for key, value in config[section].items():
            if key not in _FREE[section]:
                out[f"{section}.{key}"] = value
    return out


def data_shape(data: DataBundle) -> dict[str, int]:
    """What a resume state checks of the data: image counts and size."""
    train = data.splits["train"]
    return {"n_train": len(train.labels), "n_val": len(data.splits["val"].labels),
            "image_size": int(train.images.shape[1])}


def capture_state(epoch: int, history: list[dict[str, Any]], model: nn.Module,
                  optimizer: torch.optim.Optimizer,
                  scheduler: torch.optim.lr_scheduler.LRScheduler | None, best: BestEpoch,
                  config: dict[str, Any], data: dict[str, int]) -> dict[str, Any]:
    """The state after `epoch`. It holds the live model and optimizer tensors (no copy):
    save it before training goes on."""
    device = next(model.parameters()).device
    return {
        "format": RESUME_FORMAT, "version": RESUME_VERSION, "epoch": int(epoch),
        "history": [dict(r) for r in history],
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng": _capture_rng(device),
        "best": {"row": dict(best.row), "metrics": dict(best.metrics), "weights": best.state,
                 "loss": best.out.loss, "weighted_loss": best.out.weighted_loss,
                 "probs": torch.from_numpy(best.out.probs),
                 "targets": torch.from_numpy(best.out.targets)},
        "config": fingerprint(config), "data": dict(data),
    }


def check_state(state: dict[str, Any], config: dict[str, Any], data: dict[str, int]) -> None:
    """CheckpointError unless `state` was made by a run of this configuration on this data,
    naming the first setting that differs."""
    epoch = state.get("epoch")
    history = state.get("history")
    if not (isinstance(epoch, int) and epoch >= 1 and isinstance(history, list)
            and len(history) == epoch):
        raise CheckpointError(f"resume state: epoch {epoch!r} does not match its "
                              f"{len(history) if isinstance(history, list) else 0} history rows")
    epochs = config["train"]["epochs"]
    if epoch > epochs:
        raise CheckpointError(f"resume state is at epoch {epoch}, past [train] epochs = {epochs}")
    theirs, ours = {**state.get("config", {}), **state.get("data", {})}, {**fingerprint(config),
                                                                          **data}
    for key in sorted(set(theirs) | set(ours)):
        if theirs.get(key) != ours.get(key):
            raise CheckpointError(
                f"resume state (epoch {epoch}) was made with {key} = {theirs.get(key)!r}, this "
                f"run has {ours.get(key)!r}: it resumes only the same configuration and data"
            )


def restore_state(state: dict[str, Any], config: dict[str, Any], data: dict[str, int],
                  model: nn.Module, optimizer: torch.optim.Optimizer,
                  scheduler: torch.optim.lr_scheduler.LRScheduler | None
                  ) -> tuple[list[dict[str, Any]], BestEpoch]:
    """Check `state` against the run (`check_state`), then load it into the run's model,
    optimizer, schedule and random generators; returns its (history, best epoch).
    CheckpointError when it does not fit them."""
    check_state(state, config, data)
    device = next(model.parameters()).device
    try:
        model.load_state_dict(state["model"], strict=True)
        optimizer.load_state_dict(state["optimizer"])
        if (scheduler is None) != (state["scheduler"] is None):
            raise ValueError("the learning-rate schedule differs")
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
        _restore_rng(state["rng"], device)
        b = state["best"]
        best = BestEpoch(row=dict(b["row"]), metrics=dict(b["metrics"]),
                         out=EvalOutput(loss=float(b["loss"]), probs=b["probs"].numpy(),
                                        targets=b["targets"].numpy(),
                                        weighted_loss=b["weighted_loss"]),
                         state=dict(b["weights"]))
        history = [dict(r) for r in state["history"]]
    except (RuntimeError, KeyError, ValueError, TypeError, AttributeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise CheckpointError(f"resume state of epoch {state.get('epoch')!r} does not fit "
                              f"this run ({first})") from None
    return history, best


def _capture_rng(device: torch.device) -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
    }


def _restore_rng(rng: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(rng["torch"])
    if device.type == "cuda" and rng.get("cuda") is not None:
        torch.cuda.set_rng_state(rng["cuda"], device)
    n = rng["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached"]))
