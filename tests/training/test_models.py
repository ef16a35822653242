"""The backbone registry, the head, and pretrained-weight loading (never the network)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from urllib.parse import urlparse

import pytest
import torch
import torchvision
from torch import nn

from celebhpo.errors import ModelError
from celebhpo.training.models import Head, create_model, is_known_arch, list_models


def _head(model: nn.Module) -> nn.Sequential:
    heads = [m for m in model.modules() if isinstance(m, Head)]
    assert len(heads) == 1
    return heads[0]


# the cheap registered ones, one big one (resnet50), and torchvision models that keep their
# classifier elsewhere (a 1x1 conv, `head`, aux heads); the rest are built, not run, below
FORWARD = ["tiny", "resnet18", "resnet50", "densenet121", "efficientnet_b0",
           "mobilenet_v3_large", "convnext_tiny", "squeezenet1_1", "googlenet", "regnet_y_400mf"]
BUILD_ONLY = [n for n in list_models() if n not in FORWARD]


def _check_head(model: nn.Module) -> None:
    head = _head(model)
    assert [type(m) for m in head] == [nn.Linear, nn.ReLU, nn.Dropout, nn.Linear]
    assert head[0].out_features == 32 and head[3].in_features == 32
    assert head[3].out_features == 40 and head[2].p == 0.25
    # the ImageNet classifier is gone: no 1000-way layer left anywhere
    assert not any(getattr(m, "out_features", None) == 1000 for m in model.modules())


@pytest.mark.filterwarnings("ignore:The default weight initialization:FutureWarning")
@pytest.mark.parametrize("name", FORWARD)
def test_models_build_and_forward_small_images(name):
    torch.manual_seed(0)
    model = create_model(name, num_labels=40, num_features=32, dropout=0.25)
    _check_head(model)
    model.train()  # googlenet would return a tuple here if its aux heads survived
    out = model(torch.randn(2, 3, 32, 32))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 40)


@pytest.mark.parametrize("name", BUILD_ONLY)
def test_other_registered_models_get_the_head(name):
    _check_head(create_model(name, num_labels=40, num_features=32, dropout=0.25))


def test_registry_names_and_torchvision_names():
    names = list_models()
    assert names[:2] == ["resnet50", "densenet121"] and "tiny" in names
    assert is_known_arch("resnet50") and is_known_arch("tiny") and is_known_arch("vgg11")
    assert not is_known_arch("resnet5") and not is_known_arch(3)
    assert not is_known_arch("fasterrcnn_resnet50_fpn")  # detection, not classification


def test_unknown_architecture_lists_the_known_ones_and_the_nearest():
    with pytest.raises(ModelError) as e:
        create_model("resnet5O")
    msg = str(e.value)
    assert "'resnet5O'" in msg and "did you mean 'resnet50'" in msg
    assert "densenet121" in msg and "\n" not in msg


def test_num_labels_and_features_are_honoured():
    model = create_model("tiny", num_labels=7, num_features=16, dropout=0.0)
    assert model(torch.randn(3, 3, 16, 16)).shape == (3, 7)
    assert _head(model)[0].out_features == 16


def _weights_file(name: str) -> str:
    url = torchvision.models.get_model_weights(name).DEFAULT.url
    return os.path.basename(urlparse(url).path)


def test_imagenet_offline_without_cache_is_one_line_naming_both_alternatives(tmp_path,
                                                                              monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(ModelError) as e:
        create_model("resnet18", pretrained="imagenet", allow_download=False)
    msg = str(e.value)
    assert "\n" not in msg
    assert 'pretrained = "none"' in msg and "local file" in msg
    assert str(tmp_path / "torch") in msg  # where it looked


def test_imagenet_weights_come_from_the_torch_home_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    torch.manual_seed(1)
    reference = torchvision.models.resnet18()
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(reference.state_dict(), cache / _weights_file("resnet18"))
    model = create_model("resnet18", pretrained="imagenet", allow_download=False)
    assert torch.equal(model.conv1.weight, reference.conv1.weight)
    assert torch.equal(model.layer4[1].bn2.running_var, reference.layer4[1].bn2.running_var)
    with pytest.raises(ModelError, match="no ImageNet weights"):
        create_model("tiny", pretrained="imagenet")


def test_local_backbone_state_dict_loads_by_name_and_shape(tmp_path, caplog):
    torch.manual_seed(2)
    reference = torchvision.models.resnet18()  # 1000-class fc: must not be forced in
    path = tmp_path / "backbone.pth"
    torch.save(reference.state_dict(), path)
    with caplog.at_level(logging.INFO, logger="celebhpo.training.models"):
        model = create_model("resnet18", pretrained=str(path))
    assert torch.equal(model.conv1.weight, reference.conv1.weight)
    assert isinstance(model.fc, nn.Sequential)  # our head, at random init
    assert "fc.weight" in caplog.text and "2 in the file unused" in caplog.text


def test_local_celebhpo_state_dict_restores_the_whole_model(tmp_path):
    torch.manual_seed(3)
    src = create_model("tiny", num_features=16).eval()
    path = tmp_path / "tiny.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in src.state_dict().items()}}, path)
    dst = create_model("tiny", num_features=16, pretrained=str(path)).eval()
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(src(x), dst(x))


def test_local_file_that_fits_nothing_or_is_not_weights(tmp_path):
    path = tmp_path / "densenet.pth"
    torch.save(create_model("tiny", num_features=8).state_dict(), path)
    with pytest.raises(ModelError, match="none of its .* tensors fit resnet18"):
        create_model("resnet18", pretrained=str(path))
    with pytest.raises(ModelError, match="does not exist"):
        create_model("tiny", pretrained=str(tmp_path / "missing.pth"))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(ModelError, match="not a loadable state_dict"):
        create_model("tiny", pretrained=str(junk))


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


def test_local_file_with_code_in_it_is_refused_not_run(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pth"
    torch.save({"conv": _Payload(marker)}, path)
    with pytest.raises(ModelError, match="not a loadable state_dict"):
        create_model("tiny", pretrained=str(path))
    assert not marker.exists()
