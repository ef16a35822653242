"""celebhpo checkpoints: written atomically, read with `torch.load(weights_only=True)`.

A checkpoint is one dict of plain values and tensors (no pickled classes, so it loads without
running code):

    format       "celebhpo-checkpoint"
    version      1
    arch         backbone name (models.create_model)
    state_dict   {name: tensor} on the CPU
    config       StudyConfig.to_dict() of the run
    attributes   [40 names], the order of the logits
    normalization {"mean": [3 floats], "std": [3 floats]}
    thresholds   [one float per attribute], tuned on validation
    metrics      {name: float}, validation at the best epoch
    epoch        the best epoch (from 1)
    image_size, crop   how images were decoded (optional; else from config.data)

Extra keys (export adds `val_metrics`, `test_metrics`, `export`) are kept as they are.

A run's resume state (format "celebhpo-resume", see training.resume) is written and read the
same way by `save_resume_state` / `load_resume_state`.
Imports no optuna/mlflow.
"""

from __future__ import annotations

import io
import math
import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from celebhpo._io import atomic_path
from celebhpo.errors import CheckpointError

__all__ = ["FORMAT", "REQUIRED_KEYS", "RESUME_FORMAT", "RESUME_VERSION", "VERSION",
           "load_checkpoint", "load_resume_state", "model_from_checkpoint", "save_checkpoint",
           "save_resume_state"]

FORMAT = "celebhpo-checkpoint"
VERSION = 1
RESUME_FORMAT = "celebhpo-resume"  # a run's per-epoch resume state (training.resume)
RESUME_VERSION = 1
REQUIRED_KEYS = ("state_dict", "config", "attributes", "normalization", "thresholds", "metrics",
                 "epoch", "arch")

_READ_ERRORS = (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError,
                zipfile.BadZipFile, AttributeError, TypeError, ImportError, KeyError, IndexError)


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write `payload` to `path` atomically and durably (a temp file in the same folder,
    fsynced, then renamed), so a reader never sees half a file. numpy values become
    lists/numbers and Paths strings, so the file stays loadable with weights_only=True.
    Returns `path`."""
    path = Path(path)
    payload = dict(payload)
    payload.setdefault("format", FORMAT)
    payload.setdefault("version", VERSION)
    clean = _plain(payload, "payload")
    _validate(clean, path)
    # serialised in memory first: torch's own file writer reports a full disk as a
    # RuntimeError without the file's name, a plain write an OSError naming it
    buffer = io.BytesIO()
    torch.save(clean, buffer)
    with atomic_path(path, durable=True) as tmp:
        tmp.write_bytes(buffer.getbuffer())
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read and validate a celebhpo checkpoint; CheckpointError naming the file otherwise.

    Loaded with weights_only=True: a pickle that would run code (or needs any class beyond
    tensors and plain containers) is refused, never executed."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    payload = _torch_load(path, "checkpoint")
    _validate(payload, path)
    return payload


def save_resume_state(path: str | Path, state: dict[str, Any], *, durable: bool = True
                      ) -> Path:
    """Write a run's resume state (training.resume) to `path` like a checkpoint: atomically,
    plain values only (`durable=False` skips the fsyncs, for a file that is copied on at
    once). Returns `path`."""
    path = Path(path)
    clean = _plain(state, "state")
    if clean.get("format") != RESUME_FORMAT:
        raise CheckpointError(f"{path}: not a resume state (format {clean.get('format')!r})")
    with atomic_path(path, durable=durable) as tmp:
        torch.save(clean, tmp)
    return path


def load_resume_state(path: str | Path) -> dict[str, Any]:
    """Read a resume state written by `save_resume_state` (weights_only=True); CheckpointError
    naming the file when it is missing, damaged, not one, or newer than this celebhpo."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: resume state not found")
    state = _torch_load(path, "resume state")
    if not isinstance(state, dict) or state.get("format") != RESUME_FORMAT:
        raise CheckpointError(f"{path}: not a celebhpo resume state")
    version = state.get("version")
    if not isinstance(version, int) or version > RESUME_VERSION:
        raise CheckpointError(f"{path}: resume state version {version!r} is newer than this "
                              f"celebhpo reads ({RESUME_VERSION}); upgrade celebhpo")
    return state


def model_from_checkpoint(payload: dict[str, Any]) -> nn.Module:
    """The checkpoint's model, weights loaded, in eval mode, on the CPU."""
    # late: torchvision adds ~1 s to the import (torch._dynamo), and load_checkpoint's users
    # with a TorchScript or ONNX model never build one
    from celebhpo.training.models import create_model

    train = (payload.get("config") or {}).get("train") or {}
    arch = str(payload["arch"])
    try:
        model = create_model(
            arch,
            num_labels=len(payload["attributes"]),
            num_features=int(train.get("num_features", 512)),
            dropout=float(train.get("dropout", 0.0)),
            pretrained="none",
        )
        model.load_state_dict(payload["state_dict"], strict=True)
    except (RuntimeError, KeyError, ValueError, TypeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise CheckpointError(
            f"checkpoint of {arch!r}: its weights do not fit the model its config describes "
            f"({first}); re-create the checkpoint"
        ) from None
    return model.eval()


# -- helpers ---------------------------------------------------------------------------------
def _torch_load(path: Path, what: str) -> Any:
    """torch.load(weights_only=True) on the CPU; CheckpointError naming `path` otherwise."""
    try:
        with warnings.catch_warnings():
            # torch warns about odd pickle protocols before failing; our error says it all
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = (str(e).strip().splitlines() or [""])[0][:160]
        raise CheckpointError(
            f"{path}: refused to load: not a celebhpo {what}, or it holds objects other "
            f"than tensors and plain values ({first}); only load files you trust, and "
            "re-create it with celebhpo"
        ) from None
    except _READ_ERRORS as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise CheckpointError(
            f"{path}: not a readable {what} ({type(e).__name__}: {first}); the file is "
            "damaged or not a torch file: re-create it"
        ) from None


def _validate(payload: Any, path: Path) -> None:
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path}: not a celebhpo checkpoint (holds a "
                              f"{type(payload).__name__}, not a dict)")
    if payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a celebhpo checkpoint (format "
                              f"{payload.get('format')!r}, expected {FORMAT!r})")
    version = payload.get("version", VERSION)
    if not isinstance(version, int) or version > VERSION:
        raise CheckpointError(f"{path}: checkpoint version {version!r} is newer than this "
                              f"celebhpo reads ({VERSION}); upgrade celebhpo")
    missing = [k for k in REQUIRED_KEYS if k not in payload]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {', '.join(missing)}; re-create it")
    state = payload["state_dict"]
    if not isinstance(state, dict) or not state or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise CheckpointError(f"{path}: state_dict must be a non-empty dict of tensors")
    attrs = payload["attributes"]
    if not isinstance(attrs, list | tuple) or not attrs or not all(
        isinstance(a, str) for a in attrs
    ):
        raise CheckpointError(f"{path}: attributes must be a non-empty list of names")
    norm = payload["normalization"]
    if not (isinstance(norm, dict) and all(
        isinstance(norm.get(k), list | tuple) and len(norm[k]) == 3
        and all(isinstance(v, int | float) and math.isfinite(v) for v in norm[k])
        for k in ("mean", "std")
    )):
        raise CheckpointError(f"{path}: normalization must be {{'mean': [3 numbers], "
                              "'std': [3 numbers]}")
    th = payload["thresholds"]
    if not isinstance(th, list | tuple) or len(th) != len(attrs) or not all(
        isinstance(v, int | float) for v in th
    ):
        raise CheckpointError(f"{path}: thresholds must be {len(attrs)} numbers, one per "
                              "attribute")
    for key, kind in (("config", dict), ("metrics", dict), ("arch", str), ("epoch", int)):
        if not isinstance(payload[key], kind) or isinstance(payload[key], bool):
            raise CheckpointError(f"{path}: {key} must be a {kind.__name__}, got "
                                  f"{type(payload[key]).__name__}")


def _plain(value: Any, where: str) -> Any:
    """Only what weights_only=True can read back: tensors, str/int/float/bool/None, and
    dicts/lists/tuples of them. numpy and Path values are converted; anything else refused."""
    if isinstance(value, np.generic):  # before float: np.float64 is a float subclass
        return value.item()
    if isinstance(value, torch.Tensor | str | bool | int | float) or value is None:
        return value
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {k: _plain(v, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_plain(v, f"{where}[{i}]") for i, v in enumerate(value))
    raise CheckpointError(f"checkpoint value {where} is a {type(value).__name__}; only tensors, "
                          "numbers, strings, lists and dicts can be saved")

