"""Which precision and memory format a run uses: `[train] amp` and `[train] channels_last`.

- `amp = "auto"` (default): bf16 autocast for the training steps on CUDA where
  `torch.cuda.is_bf16_supported()`, and on CPUs with native bf16 (the `avx512_bf16` or
  `amx_bf16` flag in /proc/cpuinfo; `torch.backends.cpu.get_cpu_capability()` says only
  "AVX512" on such a CPU, and bf16 emulated on plain AVX512 is slower than fp32); fp32 elsewhere
  (MPS, other CPUs). `"bf16"` forces it, `"off"` is fp32. The old booleans still work:
  true = "auto", false = "off".
- evaluation always runs in fp32 (TF32 matmuls on CUDA): the validation probabilities that the
  thresholds are tuned on, and the checkpoint's metrics, come from the same arithmetic as
  test-time inference. On the demo's shapes (val 1/8 of train) an fp32 validation pass costs
  about 3% of a bf16 epoch on the CPU (see benchmarks/train.py).
- channels_last on every device: on the CPU, oneDNN convolutions run NHWC natively (1.2-1.8x
  for ResNet50 at 64x64 measured on a 2-core CPU).
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from celebhpo.errors import ConfigError

__all__ = ["AMP_CHOICES", "cpu_has_native_bf16", "enable_fast_fp32", "resolve_amp"]

AMP_CHOICES = ("auto", "bf16", "off")
_NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """True when the CPU computes bf16 natively (AVX512-BF16 or AMX-BF16), read from the flags
    of /proc/cpuinfo. False where that file does not exist (macOS, Windows): fp32 is the safe
    choice there."""
    try:
        text = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags = set(value.split())
            return any(f in flags for f in _NATIVE_BF16_FLAGS)
    return False


def amp_mode(value: str | bool) -> str:
    """`[train] amp` as one of AMP_CHOICES (true -> "auto", false -> "off")."""
    if value is True:
        return "auto"
    if value is False:
        return "off"
    mode = str(value).strip().lower()
    if mode not in AMP_CHOICES:
        raise ConfigError(f"[train] amp = {value!r} is not valid; use one of "
                          f"{', '.join(AMP_CHOICES)}")
    return mode


def resolve_amp(value: str | bool, device: torch.device, *,
                native_cpu_bf16: bool | None = None) -> bool:
    """Whether the training steps run under bf16 autocast on `device` for `[train] amp`.

    `native_cpu_bf16` overrides the CPU detection (tests give both answers)."""
    mode = amp_mode(value)
    if mode == "off":
        return False
    if device.type == "cuda":
        supported = torch.cuda.is_bf16_supported()
        if mode == "bf16" and not supported:
            raise ConfigError(f'[train] amp = "bf16" but {torch.cuda.get_device_name(device)} '
                              'has no bf16; use "auto" or "off"')
        return supported
    if device.type == "cpu":
        if mode == "bf16":
            return True
        return cpu_has_native_bf16() if native_cpu_bf16 is None else native_cpu_bf16
    if mode == "bf16":
        raise ConfigError(f'[train] amp = "bf16" is not supported on {device.type}; '
                          'use "auto" or "off"')
    return False


def enable_fast_fp32(device: torch.device) -> None:
    """On CUDA: TF32 matmuls and convolutions for the fp32 passes (evaluation, inference), and
    cuDNN autotuning for fixed input sizes. Nothing elsewhere."""
    if device.type != "cuda":
        return
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
