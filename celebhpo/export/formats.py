"""The exported formats: TorchScript and ONNX, each kept only if it gives the PyTorch model's
logits on real and random inputs (within RTOL/ATOL). File names come from
`celebhpo.inference.EXPORT_FILES`, the one table of what an export folder holds.
"""

from __future__ import annotations

import copy
import io
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from celebhpo._io import atomic_path
from celebhpo.errors import CelebhpoError, CheckpointError, ConfigError, os_cause

__all__ = ["ATOL", "RTOL", "check_inputs", "export_onnx", "export_torchscript", "parse_formats",
           "require_onnx"]

# what the user may write -> the format; "pt" is the checkpoint (the torch backend's model.pt)
FORMATS = {"pt": "pt", "torch": "pt", "torchscript": "torchscript", "ts": "torchscript",
           "onnx": "onnx"}
# float32 through a different runtime: well under what could flip a thresholded attribute
RTOL, ATOL = 1e-3, 1e-4


def parse_formats(formats: tuple[str, ...] | list[str]) -> list[str]:
    """The formats asked for, "pt" first and always, each once, in the order given."""
    out = ["pt"]  # model.pt always: the card, predict and the other formats rely on it
    for f in formats:
        key = FORMATS.get(str(f).strip().lower())
        if key is None:
            raise ConfigError(f"--format {f!r} is not one of pt, torchscript, onnx")
        if key not in out:
            out.append(key)
    return out


def require_onnx() -> tuple[Any, Any]:
    """(onnx, onnxruntime), or an error naming the extra to install."""
    try:
        import onnx  # late: optional extra celebhpo[onnx]
        import onnxruntime
    except ImportError as e:
        raise CelebhpoError(f"--format onnx needs onnx and onnxruntime ({e.name} is missing): "
                            "pip install 'celebhpo[onnx]'") from None
    return onnx, onnxruntime


def check_inputs(batch: torch.Tensor | None, image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(trace example, check inputs): a fixed random batch of 2 to trace/export with, and a
    batch of another size (real test images and noise) to compare the outputs on."""
    gen = torch.Generator().manual_seed(0)
    example = torch.randn(2, 3, image_size, image_size, generator=gen)  # (2, 3, S, S)
    noise = torch.randn(3, 3, image_size, image_size, generator=gen)
    check = noise if batch is None else torch.cat([batch, noise])
    return example, check


def export_torchscript(model: torch.nn.Module, example: torch.Tensor, check: torch.Tensor,
                       path: str | Path) -> float:
    """Trace `model` (eval, CPU) on `example`, save it to `path` only if the saved module gives
    the same logits as `model` on `check`. Returns the max |diff|."""
    model = _cpu_copy(model)
    with atomic_path(path) as tmp, torch.no_grad(), warnings.catch_warnings():
        # torch marks jit deprecated; TorchScript is still what C++/mobile runtimes load
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, example, check_trace=False)
        # through bytes: torch's own file writer reports a full or read-only disk as a
        # RuntimeError without the file's name; a plain write raises the OSError that names it
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer)
        tmp.write_bytes(buffer.getbuffer())
        loaded = torch.jit.load(str(tmp), map_location="cpu").eval()
        return _same("torchscript", model(check), loaded(check))


def export_onnx(model: torch.nn.Module, example: torch.Tensor, check: torch.Tensor,
                path: str | Path) -> float:
    """Export `model` to ONNX (input `images` (B,3,S,S), output `logits` (B,40), dynamic batch)
    and keep it only if onnxruntime gives the same logits as `model` on `check`."""
    onnx, ort = require_onnx()
    model = _cpu_copy(model)
    with atomic_path(path) as tmp:
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                # the TorchScript-based exporter: the newer one needs onnxscript, not a dependency
                torch.onnx.export(model, (example,), str(tmp), input_names=["images"],
                                  output_names=["logits"], opset_version=17, dynamo=False,
                                  dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})
            onnx.checker.check_model(str(tmp))
            session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
            (got,) = session.run(["logits"], {"images": check.numpy()})  # (B, 40)
            with torch.no_grad():
                return _same("onnx", model(check), torch.from_numpy(np.asarray(got)))
        except CheckpointError:
            raise
        except Exception as e:  # torch.onnx/onnx raise many kinds; the user needs one line
            if os_cause(e) is not None:
                # a full or unwritable disk is no fault of the format: dropping it is not the
                # remedy. Raised as it is, so atomic_path names the file and callers their folder
                raise
            raise CheckpointError(f"ONNX export failed ({type(e).__name__}: "
                                  f"{str(e).splitlines()[0] if str(e) else ''}); export without "
                                  "--format onnx") from e


def _same(fmt: str, expected: torch.Tensor, got: torch.Tensor) -> float:
    """The max |diff| of two logit batches, or CheckpointError when they differ."""
    if got.shape != expected.shape or not torch.allclose(got.float(), expected.float(),
                                                        rtol=RTOL, atol=ATOL):
        diff = _max_diff(expected, got) if got.shape == expected.shape else math.inf
        raise CheckpointError(
            f"the {fmt} export gives different outputs than the PyTorch model (shape "
            f"{tuple(got.shape)} vs {tuple(expected.shape)}, max |diff| {diff:.2e} > "
            f"{ATOL} + {RTOL}*|x|); not written. Export without --format {fmt}"
        )
    return _max_diff(expected, got)


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


def _cpu_copy(model: torch.nn.Module) -> torch.nn.Module:
    return copy.deepcopy(model).to("cpu").float().eval()
