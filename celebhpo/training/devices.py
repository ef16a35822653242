"""Which torch device a name means: the one parser for `[train] device`, `--device` and the
inference backends."""

from __future__ import annotations

import torch

from celebhpo.errors import ConfigError

__all__ = ["resolve_device"]


def resolve_device(name: str = "auto", key: str = "[train] device") -> torch.device:
    """"auto" (or "") -> cuda if available, else mps, else cpu; or the device named, checked
    to be there (ConfigError naming `key`, where the name came from, otherwise)."""
    said = f"{key} {name}" if key.startswith("--") else f"{key} = {name!r}"
    if name in ("", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(f"{said} is not a device; use auto, cpu, cuda, "
                          "cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f'{said} but no CUDA GPU is visible; use "auto" or "cpu"')
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"{said} but only {torch.cuda.device_count()} GPU(s) are "
                              "visible")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None)
                                  and torch.backends.mps.is_available()):
        raise ConfigError(f'{said} but MPS is not available; use "auto"')
    return dev
