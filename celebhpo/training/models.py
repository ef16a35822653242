"""Backbone registry + multi-label head, and pretrained-weight loading.

`create_model(name)` builds a torchvision backbone (or the tiny test net), optionally loads
weights, then replaces its classifier, wherever the backbone keeps it (`fc`, `classifier`,
`classifier[-1]`, `heads.head`, ...), with the head

    Linear(in, num_features) -> ReLU -> Dropout(p) -> Linear(num_features, num_labels)

The model outputs logits (B, num_labels); sigmoid is applied only at evaluation/inference.

Weights are loaded into the backbone as torchvision builds it (1000 ImageNet classes) BEFORE
the head is replaced, so ImageNet state_dicts fit key for key. A local state_dict is loaded
after the head is in place, by name and shape, so both plain backbone files and celebhpo
state_dicts (head included) load.

Imports no optuna/mlflow.
"""

from __future__ import annotations

import logging
import os
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn

from celebhpo.archs import is_known_arch, list_models, torchvision_names
from celebhpo.errors import ModelError, did_you_mean

__all__ = ["Head", "TinyNet", "create_model", "is_known_arch", "list_models", "make_head"]

log = logging.getLogger(__name__)

# Backbones whose auxiliary classifiers return a tuple in training mode: we drop them.
_AUX_MODULES = ("aux1", "aux2", "AuxLogits")


class TinyNet(nn.Module):
    """A few conv layers for fast tests (about 90k parameters before the head).

    Three stride-2 blocks, then average pooling to a 2x2 grid (not 1x1: a coarse "where" lets
    it tell a hat from a beard at 32 px). Works from 8x8 pixels up.
    """

    def __init__(self, num_classes: int = 1000, width: int = 32) -> None:
        super().__init__()
        w = width

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            )

        self.features = nn.Sequential(block(3, w), block(w, 2 * w), block(2 * w, 4 * w))
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(4 * w * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, 3, S, S)
        x = self.pool(self.features(x)).flatten(1)  # (B, 4w * 2 * 2)
        return self.fc(x)  # (B, num_classes)


class Head(nn.Sequential):
    """Our multi-label head; a Sequential (state_dict keys 0.*, 3.*) with a name to find it."""


def make_head(in_features: int, num_features: int, num_labels: int, dropout: float) -> Head:
    """Linear(in, F) -> ReLU -> Dropout(p) -> Linear(F, num_labels); logits out."""
    return Head(
        nn.Linear(in_features, num_features),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(num_features, num_labels),
    )


def create_model(
    name: str,
    num_labels: int = 40,
    num_features: int = 512,
    dropout: float = 0.3,
    pretrained: str = "none",
    *,
    allow_download: bool = True,
) -> nn.Module:
    """Build `name` with the multi-label head; `pretrained` is "none", "imagenet" or a path.

    "imagenet" uses the torchvision weight enum's DEFAULT weights, cached under TORCH_HOME
    (downloaded once unless `allow_download` is False). Raises ModelError for an unknown
    name, weights that cannot be had, or a local file that does not fit.
    """
    builder = _builder(name)
    pretrained = str(pretrained or "none")
    model = builder()
    if pretrained == "imagenet":
        _load_imagenet(model, name, allow_download)
    _drop_aux_heads(model)
    _replace_classifier(model, name, num_features, num_labels, dropout)
    if pretrained not in ("none", "imagenet"):
        _load_local(model, Path(pretrained).expanduser(), name)
    return model


# -- building ------------------------------------------------------------------------------
def _builder(name: str) -> Callable[[], nn.Module]:
    if name == "tiny":
        return TinyNet
    if not is_known_arch(name):
        known = list_models()
        close = did_you_mean(name, known + torchvision_names())
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ModelError(
            f"unknown architecture {name!r}{hint} (known: {', '.join(known)}, "
            "or any name in torchvision.models.list_models())"
        )
    return lambda: torchvision.models.get_model(name, weights=None)


def _drop_aux_heads(model: nn.Module) -> None:
    """googlenet/inception_v3 return (logits, aux) in training mode; we want logits only."""
    if hasattr(model, "aux_logits"):
        model.aux_logits = False
        for attr in _AUX_MODULES:
            if hasattr(model, attr):
                setattr(model, attr, None)


def _replace_classifier(model: nn.Module, name: str, num_features: int, num_labels: int,
                        dropout: float) -> None:
    """Swap the backbone's last Linear (its 1000-class classifier) for our head.

    torchvision registers the classifier last, so the last nn.Linear in module order is it
    (`fc`, `classifier`, `classifier.3`, `heads.head`, `head`). SqueezeNet has no Linear
    (a 1x1 conv classifier): its whole `classifier` becomes pool -> flatten -> head.
    """
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if linears:
        path, last = linears[-1]
        _set_submodule(model, path, make_head(last.in_features, num_features, num_labels,
                                              dropout))
        return
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if hasattr(model, "classifier") and convs and convs[-1][0].startswith("classifier"):
        in_ch = convs[-1][1].in_channels
        model.classifier = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(1),
            make_head(in_ch, num_features, num_labels, dropout),
        )
        return
    raise ModelError(f"architecture {name!r}: cannot find its classifier to replace; "
                     "choose another architecture")


def _set_submodule(model: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, leaf = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    if isinstance(parent, nn.Sequential | nn.ModuleList) and leaf.isdigit():
        parent[int(leaf)] = module
    else:
        setattr(parent, leaf, module)


# -- pretrained weights ----------------------------------------------------------------------
_ALTERNATIVES = ('use pretrained = "none", or pretrained = "/path/to/state_dict.pth" '
                 "(a local file)")


def _load_imagenet(model: nn.Module, name: str, allow_download: bool) -> None:
    """Load torchvision's DEFAULT ImageNet weights, from TORCH_HOME or (once) the network."""
    if name == "tiny":
        raise ModelError(f'architecture "tiny" has no ImageNet weights; {_ALTERNATIVES}')
    try:
        weights = torchvision.models.get_model_weights(name).DEFAULT
    except (ValueError, KeyError, AttributeError):
        raise ModelError(f"architecture {name!r} has no ImageNet weights in torchvision; "
                         f"{_ALTERNATIVES}") from None
    cache_dir = Path(torch.hub.get_dir()) / "checkpoints"
    cached = cache_dir / os.path.basename(urlparse(weights.url).path)
    if cached.is_file():
        state = _read_state_file(cached)
    elif not allow_download:
        raise ModelError(
            f"ImageNet weights for {name} are not cached ({cached}) and downloading is off; "
            f"{_ALTERNATIVES}, or put the file there"
        )
    else:
        try:
            state = weights.get_state_dict(progress=True, check_hash=True)
        except (OSError, RuntimeError, ValueError) as e:  # URLError is an OSError
            raise ModelError(
                f"cannot download ImageNet weights for {name} ({type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else 'no detail'}) and none are cached in "
                f"{cache_dir}; {_ALTERNATIVES}"
            ) from None
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ModelError(f"{cached}: ImageNet weights do not fit {name} "
                         f"({str(e).splitlines()[0]}); delete the file to fetch it again") from None


def _read_state_file(path: Path) -> dict[str, torch.Tensor]:
    """A state_dict from `path`, loaded with weights_only=True (code in a pickle is refused).

    Accepts a bare state_dict or a dict holding one under "state_dict" / "model" (a celebhpo
    checkpoint, most training scripts); a DataParallel "module." prefix is removed.
    """
    if not path.is_file():
        raise ModelError(f"pretrained weights file {path} does not exist; "
                         'give an existing state_dict file, "imagenet" or "none"')
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError,
            zipfile.BadZipFile, AttributeError, TypeError, ImportError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"{path}: not a loadable state_dict ({first[:200]}); give a file saved "
                         'with torch.save(model.state_dict()), or pretrained = "none"') from None
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError(f"{path}: holds no state_dict (a dict of tensors); give a file saved "
                         'with torch.save(model.state_dict()), or pretrained = "none"')
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _load_local(model: nn.Module, path: Path, name: str) -> None:
    """Load the tensors of `path` that match the model by name and shape; say what did not."""
    state = _read_state_file(path)
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    head = _head_prefix(model)
    if not any(not k.startswith(head) for k in usable):  # a head alone is no backbone
        sample = ", ".join(list(state)[:3])
        raise ModelError(
            f"{path}: none of its {len(state)} tensors fit {name} (its keys look like "
            f"{sample}); give a state_dict of a torchvision {name}, or pretrained = \"none\""
        )
    model.load_state_dict(usable, strict=False)
    missing = [k for k in own if k not in usable]
    # the head is new by design: only a missing backbone tensor deserves a warning
    missing_backbone = [k for k in missing if not k.startswith(head)]
    unused = [k for k in state if k not in usable]
    msg = (f"{path}: loaded {len(usable)} of {len(own)} tensors into {name}; "
           f"{len(missing)} kept at random init ({len(missing_backbone)} outside the head"
           f"{': ' + ', '.join(missing_backbone[:5]) if missing_backbone else ''}), "
           f"{len(unused)} in the file unused"
           f"{': ' + ', '.join(unused[:5]) if unused else ''}")
    if missing_backbone:
        log.warning(msg)
    else:
        log.info(msg)


def _head_prefix(model: nn.Module) -> str:
    """The state_dict prefix of our head ("fc.", "classifier.3.", ...)."""
    return next((n + "." for n, m in model.named_modules() if isinstance(m, Head)), "")
