"""Checkpoints: atomic writes, weights_only loads, and refusal of anything not ours."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from celebhpo.config import StudyConfig
from celebhpo.data import ATTRIBUTES
from celebhpo.errors import CheckpointError
from celebhpo.training.checkpoint import (
    FORMAT,
    Checkpoint,
    load_checkpoint,
    model_from_checkpoint,
)
from celebhpo.training.models import create_model


def _checkpoint(**over) -> Checkpoint:
    torch.manual_seed(0)
    cfg = StudyConfig.from_dict({"train": {"arch": "tiny", "num_features": 16, "dropout": 0.1}})
    model = create_model("tiny", num_features=16, dropout=0.1)
    fields = {
        "arch": "tiny", "state_dict": model.state_dict(), "config": cfg.to_dict(),
        "attributes": list(ATTRIBUTES), "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "thresholds": np.linspace(0.2, 0.8, 40),  # numpy is converted on save
        "metrics": {"val_loss": np.float32(0.5)}, "epoch": 3, "image_size": 16,
        "crop": "squash",
    }
    return Checkpoint(**{**fields, **over})


def test_round_trip_gives_the_same_model_and_plain_metadata(tmp_path):
    ckpt = _checkpoint()
    path = ckpt.save(tmp_path / "sub" / "model.pt")
    loaded = Checkpoint.load(path)
    assert loaded.thresholds == pytest.approx(list(np.linspace(0.2, 0.8, 40)))
    assert isinstance(loaded.thresholds, list) and isinstance(loaded.metrics["val_loss"], float)
    assert loaded.config == ckpt.config and loaded.epoch == 3
    assert (loaded.decode_size, loaded.decode_crop) == (16, "squash")
    original = create_model("tiny", num_features=16, dropout=0.1)
    original.load_state_dict(ckpt.state_dict)
    original.eval()
    model = loaded.model()
    assert not model.training
    x = torch.randn(4, 3, 16, 16)
    assert torch.equal(model(x), original(x))
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]  # no temp file left
    # what earlier model cards show still works
    assert torch.equal(model_from_checkpoint(load_checkpoint(path))(x), original(x))


def test_the_file_is_the_plain_dict_it_always_was(tmp_path):
    """Same keys, plain values, optional fields absent rather than None: files written before
    `Checkpoint` load, and what it writes loads as the plain dict earlier versions read."""
    path = _checkpoint(image_size=None, crop=None).save(tmp_path / "model.pt")
    on_disk = torch.load(path, weights_only=True)
    assert list(on_disk) == ["format", "version", "arch", "state_dict", "config", "attributes",
                             "normalization", "thresholds", "metrics", "epoch"]
    assert on_disk["format"] == FORMAT and on_disk["version"] == 1
    assert on_disk["normalization"] == {"mean": [0.485, 0.456, 0.406],
                                        "std": [0.229, 0.224, 0.225]}
    # an older file: no version, no image_size/crop (taken from its config), and a key this
    # version does not know, which a load and save keep
    old = {k: v for k, v in on_disk.items() if k != "version"}
    old["config"]["data"]["image_size"] = 24
    torch.save({**old, "note": "kept"}, path)
    loaded = Checkpoint.load(path)
    assert (loaded.image_size, loaded.decode_size, loaded.decode_crop) == (None, 24, "squash")
    assert loaded.extra == {"note": "kept"} and loaded.export is None
    loaded.save(path)
    again = torch.load(path, weights_only=True)
    assert again["note"] == "kept" and "image_size" not in again and again["version"] == 1


def test_a_failed_save_leaves_the_previous_file_intact(tmp_path):
    path = _checkpoint(epoch=1).save(tmp_path / "model.pt")
    before = path.read_bytes()
    with pytest.raises(CheckpointError, match=r"payload\['metrics'\]\['bad'\] is a object"):
        _checkpoint(metrics={"bad": object()}).save(path)
    with pytest.raises(CheckpointError, match="thresholds must be 40 numbers"):
        _checkpoint(thresholds=[0.5]).save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]
    _checkpoint(epoch=2).save(path)  # overwriting is fine
    assert Checkpoint.load(path).epoch == 2


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


def test_a_pickle_with_code_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pt"
    torch.save({"format": FORMAT, "state_dict": _Payload(marker)}, path)
    with pytest.raises(CheckpointError) as e:
        Checkpoint.load(path)
    assert str(path) in str(e.value) and "refused" in str(e.value) and "\n" not in str(e.value)
    assert not marker.exists()


@pytest.mark.parametrize("content, message", [
    ({"state_dict": {}}, "not a celebhpo checkpoint"),
    ([1, 2, 3], "not a celebhpo checkpoint"),
    ({"format": FORMAT, "version": 99}, "newer than this celebhpo"),
    ({"format": FORMAT, "version": 1, "arch": "tiny"}, "lacks state_dict, config"),
])
def test_files_that_are_not_ours_are_refused_by_name(tmp_path, content, message):
    path = tmp_path / "other.pt"
    torch.save(content, path)
    with pytest.raises(CheckpointError, match=message) as e:
        Checkpoint.load(path)
    assert str(path) in str(e.value)


def test_damaged_missing_and_inconsistent_files(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        Checkpoint.load(tmp_path / "nope.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x80\x04garbage")
    with pytest.raises(CheckpointError, match="junk.pt"):
        Checkpoint.load(junk)
    truncated = tmp_path / "truncated.pt"
    good = _checkpoint().save(tmp_path / "good.pt").read_bytes()
    truncated.write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="truncated.pt"):
        Checkpoint.load(truncated)
    # weights that do not fit the architecture the config describes
    wrong = _checkpoint()
    wrong.config["train"]["num_features"] = 8
    with pytest.raises(CheckpointError, match="do not fit"):
        Checkpoint.load(wrong.save(tmp_path / "w.pt")).model()
