"""celebhpo checkpoints: `Checkpoint` owns the file format; written atomically, read with
`torch.load(weights_only=True)`.

On disk a checkpoint is one dict of plain values and tensors (no pickled classes, so it loads
without running code):

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
    val_metrics, test_metrics, export   added by export-best (optional)

Keys this version does not know are kept as they are (`Checkpoint.extra`).

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
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from celebhpo._io import atomic_path
from celebhpo.errors import CheckpointError

__all__ = ["FORMAT", "REQUIRED_KEYS", "RESUME_FORMAT", "RESUME_VERSION", "VERSION", "Checkpoint",
           "load_checkpoint", "load_resume_state", "model_from_checkpoint", "save_resume_state"]

FORMAT = "celebhpo-checkpoint"
VERSION = 1
RESUME_FORMAT = "celebhpo-resume"  # a run's per-epoch resume state (training.resume)
RESUME_VERSION = 1
REQUIRED_KEYS = ("state_dict", "config", "attributes", "normalization", "thresholds", "metrics",
                 "epoch", "arch")

_READ_ERRORS = (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError,
                zipfile.BadZipFile, AttributeError, TypeError, ImportError, KeyError, IndexError)


@dataclass(kw_only=True, eq=False)
class Checkpoint:
    """One checkpoint, field by field (the module docstring says what each is). An optional
    field that is None is no key in the file. (No `==`: tensors do not compare to a bool.)"""

    arch: str
    state_dict: dict[str, torch.Tensor] = field(repr=False)
    config: dict[str, Any]
    attributes: list[str]
    mean: list[float]  # normalization, per channel
    std: list[float]
    thresholds: list[float]
    metrics: dict[str, Any]
    epoch: int
    image_size: int | None = None
    crop: str | None = None
    val_metrics: dict[str, Any] | None = None
    test_metrics: dict[str, Any] | None = None
    export: dict[str, Any] | None = None  # where an exported model came from
    format: str = FORMAT
    version: int = VERSION
    extra: dict[str, Any] = field(default_factory=dict)  # keys this version does not know

    @classmethod
    def load(cls, path: str | Path) -> Checkpoint:
        """Read and validate a celebhpo checkpoint; CheckpointError naming the file otherwise.

        Loaded with weights_only=True: a pickle that would run code (or needs any class beyond
        tensors and plain containers) is refused, never executed."""
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"{path}: checkpoint file not found")
        payload = _torch_load(path, "checkpoint")
        _validate(payload, path)
        known = {f.name for f in fields(cls)} - {"mean", "std", "extra"}
        return cls(**{k: v for k, v in payload.items() if k in known},
                   mean=list(payload["normalization"]["mean"]),
                   std=list(payload["normalization"]["std"]),
                   extra={k: v for k, v in payload.items()
                          if k not in known and k != "normalization"})

    def save(self, path: str | Path) -> Path:
        """Write the checkpoint to `path` atomically and durably (a temp file in the same
        folder, fsynced, then renamed), so a reader never sees half a file. numpy values
        become lists/numbers and Paths strings, so the file stays loadable with
        weights_only=True. Returns `path`."""
        path = Path(path)
        clean = _plain(self.to_dict(), "payload")
        _validate(clean, path)
        # serialised in memory first: torch's own file writer reports a full disk as a
        # RuntimeError without the file's name, a plain write an OSError naming it
        buffer = io.BytesIO()
        torch.save(clean, buffer)
        with atomic_path(path, durable=True) as tmp:
            tmp.write_bytes(buffer.getbuffer())
        return path

    def to_dict(self) -> dict[str, Any]:
        """The dict the file holds."""
        out: dict[str, Any] = {
            "format": self.format, "version": self.version, "arch": self.arch,
            "state_dict": self.state_dict, "config": self.config,
            "attributes": self.attributes, "normalization": self.normalization,
            "thresholds": self.thresholds, "metrics": self.metrics, "epoch": self.epoch}
        for key in ("image_size", "crop", "val_metrics", "test_metrics", "export"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return {**out, **self.extra}

    @property
    def normalization(self) -> dict[str, list[float]]:
        """{"mean": [3], "std": [3]}, as the file holds it."""
        return {"mean": list(self.mean), "std": list(self.std)}

    def section(self, name: str) -> dict[str, Any]:
        """One section of the run's config ("data", "train", "study"); {} when absent."""
        return (self.config or {}).get(name) or {}

    @property
    def decode_size(self) -> int:
        """The image size the model was trained at: `image_size`, else the config's."""
        return int(self.image_size or self.section("data")["image_size"])

    @property
    def decode_crop(self) -> str:
        """How images were cropped in training: `crop`, else the config's (else squash)."""
        return str(self.crop or self.section("data").get("crop", "squash"))

    def model(self) -> nn.Module:
        """The checkpoint's model, weights loaded, in eval mode, on the CPU."""
        # late: torchvision adds ~1 s to the import (torch._dynamo), and the users of a
        # TorchScript or ONNX model never build one
        from celebhpo.training.models import create_model

        train = self.section("train")
        try:
            model = create_model(self.arch, num_labels=len(self.attributes),
                                 num_features=int(train.get("num_features", 512)),
                                 dropout=float(train.get("dropout", 0.0)), pretrained="none")
            model.load_state_dict(self.state_dict, strict=True)
        except (RuntimeError, KeyError, ValueError, TypeError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise CheckpointError(
                f"checkpoint of {self.arch!r}: its weights do not fit the model its config "
                f"describes ({first}); re-create the checkpoint"
            ) from None
        return model.eval()


# what the model cards of earlier exports show (`from celebhpo.training.checkpoint import ...`)
def load_checkpoint(path: str | Path) -> Checkpoint:
    """`Checkpoint.load(path)`."""
    return Checkpoint.load(path)


def model_from_checkpoint(ckpt: Checkpoint) -> nn.Module:
    """`ckpt.model()`."""
    return ckpt.model()


def save_resume_state(path: str | Path, state: dict[str, Any], *, durable: bool = True
                      ) -> Path:
    """Write a run's resume state (training.resume) to `path` like a checkpoint: atomically,
    plain values only (`durable=False` skips the fsyncs, for a file that is copied on at
    once). Returns `path`."""
    path = Path(path)
    clean = _plain(state, "state")
    if clean.get("format") != RESUME_FORMAT:
        raise CheckpointError(f"{path}: not a resume state (format {clean.get('format')!r})")
    buffer = io.BytesIO()  # in memory first, as in Checkpoint.save: a full disk names the file
    torch.save(clean, buffer)
    with atomic_path(path, durable=durable) as tmp:
        tmp.write_bytes(buffer.getbuffer())
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

