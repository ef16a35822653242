"""The architecture names a study may use: the registered ones (the seed's pair first), the
tiny test net, and any torchvision classification model.

Kept apart from training.models (which builds them) so that config, below training, can
check a study file's `arch` without importing training; torchvision is imported only when
a name is not one of ours (it adds about a second).
"""

from __future__ import annotations

__all__ = ["REGISTERED", "TEST_ARCHS", "is_known_arch", "list_models", "torchvision_names"]

# Named here because the seed and the docs use them; any other torchvision classification
# model works by its torchvision name as well.
REGISTERED = [
    "resnet50", "densenet121", "resnet18", "resnet34", "resnet101", "densenet169",
    "efficientnet_b0", "mobilenet_v3_large", "convnext_tiny",
]
TEST_ARCHS = ["tiny"]


def list_models() -> list[str]:
    """The registered architecture names (the seed's pair first), then the test arch."""
    return REGISTERED + TEST_ARCHS


def torchvision_names() -> list[str]:
    """torchvision's classification models (detection/segmentation/video live in submodules)."""
    import torchvision

    return list(torchvision.models.list_models(module=torchvision.models))


def is_known_arch(name: object) -> bool:
    """True for a registered name or any torchvision classification model name."""
    return isinstance(name, str) and (name in list_models() or name in torchvision_names())
