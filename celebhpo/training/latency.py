"""How fast a trained model answers, and how big it is: what a constraint or an
accuracy-latency front compares across trials.

`measure_latency` times whole forwards (fp32, eval mode, inference_mode) at batch 1 and batch 64
and reports milliseconds per image, the median of a few timed forwards after untimed warm-up
ones. It is cheap on purpose (2 + 5 forwards per batch size): a study measures every completed
trial. The input carries the memory format (channels_last by default, as training and the
torch predictor use it); the model's weights are left exactly as they are, so measuring never
changes the model (oneDNN and cuDNN run a convolution NHWC when its input is NHWC).

Imports torch only.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["count_params_m", "latency_key", "measure_latency"]


def latency_key(batch_size: int) -> str:
    """The result key for `batch_size`: "latency_ms" at 1, "latency_ms_b{n}" otherwise."""
    return "latency_ms" if batch_size == 1 else f"latency_ms_b{batch_size}"


def count_params_m(model: nn.Module) -> float:
    """All parameters (trainable or not, shared ones once), in millions."""
    return sum(p.numel() for p in model.parameters()) / 1e6


def measure_latency(model: nn.Module, image_size: int, device: torch.device | str, *,
                    batch_sizes: Sequence[int] = (1, 64), channels_last: bool = True,
                    warmup: int = 2, repeats: int = 5) -> dict[str, float]:
    """Milliseconds per image of `model` on `device` at each batch size, e.g.
    {"latency_ms": 1.9, "latency_ms_b64": 0.21}: the median of `repeats` timed forwards of a
    random (B, 3, image_size, image_size) fp32 batch, after `warmup` untimed ones, divided by B.

    The model must already be on `device` (it is not moved). It runs in eval mode under
    torch.inference_mode (no_grad for a torch.compile'd one); its train/eval mode is restored
    afterwards.
    """
    device = torch.device(device)
    _check_args(model, image_size, device, batch_sizes, warmup, repeats)
    was_training = model.training
    model.eval()
    try:
        # a torch.compile'd model recompiles under inference_mode (as in training.epoch)
        with torch.no_grad() if hasattr(model, "_orig_mod") else torch.inference_mode():
            return {latency_key(b): _median_ms(model, _batch(b, image_size, device, channels_last),
                                               warmup, repeats) / b
                    for b in batch_sizes}
    finally:
        model.train(was_training)


def _median_ms(model: nn.Module, x: torch.Tensor, warmup: int, repeats: int) -> float:
    """Median wall time of one forward of `x`, in ms; the device is synchronized around each
    timing, so queued GPU work is neither charged to it nor left out."""
    for _ in range(warmup):
        model(x)
    times = []
    for _ in range(repeats):
        _synchronize(x.device)
        start = time.perf_counter()
        model(x)
        _synchronize(x.device)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def _batch(batch_size: int, image_size: int, device: torch.device,
           channels_last: bool) -> torch.Tensor:
    # a fixed generator: every trial is timed on the same numbers (on the CPU, then moved, so
    # it does not depend on the device's generator)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, 3, image_size, image_size, generator=gen)  # (B, 3, S, S)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    return x.to(device).contiguous(memory_format=memory_format)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def _check_args(model: nn.Module, image_size: int, device: torch.device,
                batch_sizes: Sequence[int], warmup: int, repeats: int) -> None:
    if not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    if not batch_sizes or any(not isinstance(b, int) or b < 1 for b in batch_sizes):
        raise ValueError(f"batch_sizes must be positive ints, got {batch_sizes!r}")
    if len(set(batch_sizes)) != len(batch_sizes):
        raise ValueError(f"batch_sizes has a size twice: {batch_sizes!r}")
    if warmup < 0 or repeats < 1:
        raise ValueError(f"need warmup >= 0 and repeats >= 1, got {warmup} and {repeats}")
    for name, t in (*model.named_parameters(), *model.named_buffers()):
        if t.device.type != device.type or (device.index is not None
                                            and t.device.index != device.index):
            raise ValueError(f"model tensor {name} is on {t.device}, not {device}: move the "
                             "model first (measure_latency never moves it)")
        if t.is_floating_point() and t.dtype != torch.float32:
            raise ValueError(f"model tensor {name} is {t.dtype}; latency is measured in fp32")
