"""A trained model, loaded for use: its metadata, and a forward pass from one of three backends.

Every path goes through the training-time preprocessing: `load_image(path, size, crop)` then
`normalize` with the checkpoint's mean/std; no flip; fp32 (TF32 on CUDA); a sigmoid per attribute (never a softmax
across them); per-attribute thresholds tuned on validation unless told otherwise.

`EXPORT_FILES` is the one table of what an export folder holds; export-best writes by it.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from celebhpo.config import StudySection
from celebhpo.data import normalize
from celebhpo.errors import CelebhpoError, CheckpointError
from celebhpo.training.amp import enable_fast_fp32
from celebhpo.training.checkpoint import Checkpoint
from celebhpo.training.devices import resolve_device

__all__ = ["BACKENDS", "EXPORT_FILES", "Predictor", "load_model"]

BACKENDS = ("torch", "torchscript", "onnx")
# backend -> its file in an export folder; model.pt (torch) also carries the metadata
EXPORT_FILES = {"torch": "model.pt", "torchscript": "model.ts", "onnx": "model.onnx"}

Forward = Callable[[torch.Tensor], torch.Tensor]  # (B, 3, S, S) normalized -> (B, 40) logits


@dataclass
class Predictor:
    """A loaded model and what it needs to see images the way it was trained."""

    source: Path  # what the user gave: an export folder or a checkpoint file
    checkpoint_path: Path  # the checkpoint the metadata (and the torch weights) came from
    backend: str
    device: torch.device
    attributes: list[str]
    thresholds: np.ndarray  # (40,) tuned on validation
    image_size: int
    crop: str
    normalization: dict[str, list[float]]  # {"mean": [3], "std": [3]}
    arch: str
    metrics: dict[str, Any]
    forward: Forward = field(repr=False)
    channels_last: bool = False  # feed the forward NHWC-strided batches (the torch backend)
    slices: list[str] = field(default_factory=list)  # its study's [study] slices

    @cached_property
    def model_hash(self) -> str:
        """sha256 of the checkpoint bytes and the backend: the model's identity for caches."""
        h = hashlib.sha256(self.backend.encode())
        with open(self.checkpoint_path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()

    def predict_uint8(self, batch: np.ndarray) -> np.ndarray:
        """(B, S, S, 3) uint8 images -> (B, 40) float32 probabilities (sigmoid per attribute)."""
        batch = np.asarray(batch)
        s = self.image_size
        if batch.dtype != np.uint8 or batch.ndim != 4 or batch.shape[1:] != (s, s, 3):
            raise CelebhpoError(
                f"expected a (B, {s}, {s}, 3) uint8 batch for {self.source}, "
                f"got {batch.dtype} {batch.shape}: load images with load_image(path, {s}, "
                f'"{self.crop}")'
            )
        if len(batch) == 0:
            return np.zeros((0, len(self.attributes)), dtype=np.float32)
        if not batch.flags.writeable:  # a read-only memmap: torch wants memory it may own
            batch = batch.copy()
        x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)  # (B,S,S,3) uint8
        x = normalize(x, self.normalization["mean"], self.normalization["std"],
                      channels_last=self.channels_last)  # (B, 3, S, S)
        with torch.inference_mode():
            logits = self.forward(x)  # (B, 40)
            return torch.sigmoid(logits.float()).cpu().numpy()


def load_model(path: str | Path, backend: str = "torch", device: str = "cpu") -> Predictor:
    """Load an export folder (model.pt [+ model.ts, model.onnx]) or a checkpoint file.

    The metadata (attributes, thresholds, size, crop, normalization) always comes from the
    checkpoint, loaded with `weights_only=True`; anything not ours raises CheckpointError.
    """
    path = Path(path)
    if backend not in BACKENDS:
        raise CelebhpoError(f"unknown backend {backend!r}: use one of {', '.join(BACKENDS)}")
    if not path.exists():
        raise CheckpointError(f"{path} does not exist: give an export-best folder or a checkpoint")
    ckpt = path / EXPORT_FILES["torch"] if path.is_dir() else path
    if path.is_dir() and not ckpt.is_file():
        raise CheckpointError(
            f"{path} is not a celebhpo model folder: it has no model.pt "
            "(make one with `celebhpo export-best --out DIR`, or give a checkpoint file)"
        )
    checkpoint = Checkpoint.load(ckpt)
    meta = _metadata(checkpoint, ckpt)
    dev = resolve_device(device, key="device")
    enable_fast_fp32(dev)  # CUDA: TF32 for this fp32 inference
    if backend == "torch":
        forward = _torch_forward(checkpoint, ckpt, dev)
    else:
        forward = _exported_forward(path, backend, dev)
    return Predictor(source=path, checkpoint_path=ckpt, backend=backend, device=dev,
                     forward=forward, channels_last=backend == "torch", **meta)


def _metadata(checkpoint: Checkpoint, ckpt: Path) -> dict[str, Any]:
    """What a Predictor needs from a checkpoint, checked so a bad one fails here, by name."""
    try:
        attributes = [str(a) for a in checkpoint.attributes]
        image_size = checkpoint.decode_size
        crop = checkpoint.decode_crop
        mean = [float(v) for v in checkpoint.mean]
        std = [float(v) for v in checkpoint.std]
        thresholds = np.asarray(checkpoint.thresholds, dtype=np.float64).reshape(-1)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(
            f"{ckpt}: checkpoint metadata is incomplete ({type(e).__name__}: {e}); "
            "re-export the model with this version of celebhpo"
        ) from e
    if len(thresholds) != len(attributes) or len(mean) != 3 or len(std) != 3 or image_size < 1:
        raise CheckpointError(
            f"{ckpt}: inconsistent checkpoint ({len(attributes)} attributes, "
            f"{len(thresholds)} thresholds, mean {mean}, std {std}, size {image_size}); "
            "re-export the model"
        )
    return {"attributes": attributes, "thresholds": thresholds, "image_size": image_size,
            "crop": crop, "normalization": {"mean": mean, "std": std},
            "arch": checkpoint.arch, "metrics": dict(checkpoint.metrics),
            # a checkpoint from before [study] slices: the default
            "slices": list(checkpoint.section("study").get("slices", StudySection().slices))}


# -- backends ----------------------------------------------------------------------------------
def _torch_forward(checkpoint: Checkpoint, ckpt: Path, device: torch.device) -> Forward:
    try:
        model = checkpoint.model()
    except (RuntimeError, KeyError, ValueError) as e:
        raise CheckpointError(f"{ckpt}: weights do not fit the model ({e}); re-export it") from e
    # channels_last: oneDNN and cuDNN run NHWC convolutions natively (faster on both)
    return model.to(device, memory_format=torch.channels_last).eval()


def _exported_forward(path: Path, backend: str, device: torch.device) -> Forward:
    """The forward pass of the export folder's model.ts or model.onnx."""
    if not path.is_dir():
        raise CheckpointError(
            f"backend {backend} needs an export folder with {EXPORT_FILES[backend]}; {path} "
            f"is a file (export with `celebhpo export-best --format pt,{backend}`)"
        )
    artifact = path / EXPORT_FILES[backend]
    if not artifact.is_file():
        raise CheckpointError(
            f"{path} has no {EXPORT_FILES[backend]}: export with "
            f"`celebhpo export-best --format pt,{backend}`, or use --backend torch"
        )
    if backend == "torchscript":
        return _torchscript_forward(artifact, device)
    return _onnx_forward(artifact, device)


def _torchscript_forward(artifact: Path, device: torch.device) -> Forward:
    try:
        with warnings.catch_warnings():
            # torch marks jit.load deprecated; the user asked for this backend, so no noise
            warnings.simplefilter("ignore", FutureWarning)
            module = torch.jit.load(str(artifact), map_location=device)
    except (RuntimeError, ValueError, OSError) as e:
        raise CheckpointError(
            f"{artifact} is not a TorchScript model ({e}); re-export or use --backend torch"
        ) from e
    module.eval()
    return module


def _onnx_forward(artifact: Path, device: torch.device) -> Forward:
    try:
        import onnxruntime as ort  # late: optional extra celebhpo[onnx]
    except ImportError as e:
        raise CelebhpoError(
            "backend onnx needs onnxruntime: pip install 'celebhpo[onnx]' (or use --backend torch)"
        ) from e
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    # onnxruntime's errors derive from Exception only; name the ones it raises on a bad file
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_state  # late: as above

    ort_errors = tuple(getattr(ort_state, n) for n in (
        "Fail", "InvalidArgument", "NoSuchFile", "InvalidProtobuf", "InvalidGraph",
        "RuntimeException") if hasattr(ort_state, n))
    try:
        session = ort.InferenceSession(str(artifact), providers=providers)
    except (*ort_errors, RuntimeError, OSError) as e:
        raise CheckpointError(
            f"{artifact} is not a usable ONNX model ({type(e).__name__}); re-export it or use "
            "--backend torch"
        ) from e
    input_name = session.get_inputs()[0].name
    output = session.get_outputs()[0].name
    # an export may end in a sigmoid; then its outputs are probabilities, not logits
    outputs_probs = "prob" in output.lower()

    def forward(x: torch.Tensor) -> torch.Tensor:
        (y,) = session.run([output], {input_name: x.detach().cpu().numpy()})  # (B, 40)
        y = torch.from_numpy(np.asarray(y, dtype=np.float32))
        return torch.logit(y.clamp(1e-7, 1 - 1e-7)) if outputs_probs else y

    return forward
