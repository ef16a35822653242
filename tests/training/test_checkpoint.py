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
    load_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
)
from celebhpo.training.models import create_model


def _payload(**over) -> dict:
    torch.manual_seed(0)
    cfg = StudyConfig.from_dict({"train": {"arch": "tiny", "num_features": 16, "dropout": 0.1}})
    model = create_model("tiny", num_features=16, dropout=0.1)
    payload = {
        "format": FORMAT, "version": 1, "arch": "tiny", "state_dict": model.state_dict(),
        "config": cfg.to_dict(), "attributes": list(ATTRIBUTES),
        "normalization": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
        "thresholds": np.linspace(0.2, 0.8, 40),  # numpy is converted on save
        "metrics": {"val_loss": np.float32(0.5)}, "epoch": 3, "image_size": 16,
        "crop": "squash",
    }
    payload.update(over)
    return payload


def test_round_trip_gives_the_same_model_and_plain_metadata(tmp_path):
    payload = _payload()
    path = save_checkpoint(tmp_path / "sub" / "model.pt", payload)
    loaded = load_checkpoint(path)
    assert loaded["thresholds"] == pytest.approx(list(np.linspace(0.2, 0.8, 40)))
    assert isinstance(loaded["thresholds"], list) and isinstance(loaded["metrics"]["val_loss"],
                                                                  float)
    assert loaded["config"] == payload["config"] and loaded["epoch"] == 3
    original = create_model("tiny", num_features=16, dropout=0.1)
    original.load_state_dict(payload["state_dict"])
    original.eval()
    model = model_from_checkpoint(loaded)
    assert not model.training
    x = torch.randn(4, 3, 16, 16)
    assert torch.equal(model(x), original(x))
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]  # no temp file left


def test_a_failed_save_leaves_the_previous_file_intact(tmp_path):
    path = save_checkpoint(tmp_path / "model.pt", _payload(epoch=1))
    before = path.read_bytes()
    with pytest.raises(CheckpointError, match=r"payload\['metrics'\]\['bad'\] is a object"):
        save_checkpoint(path, _payload(metrics={"bad": object()}))
    with pytest.raises(CheckpointError, match="thresholds must be 40 numbers"):
        save_checkpoint(path, _payload(thresholds=[0.5]))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]
    save_checkpoint(path, _payload(epoch=2))  # overwriting is fine
    assert load_checkpoint(path)["epoch"] == 2


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
        load_checkpoint(path)
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
        load_checkpoint(path)
    assert str(path) in str(e.value)


def test_damaged_missing_and_inconsistent_files(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x80\x04garbage")
    with pytest.raises(CheckpointError, match="junk.pt"):
        load_checkpoint(junk)
    truncated = tmp_path / "truncated.pt"
    good = save_checkpoint(tmp_path / "good.pt", _payload()).read_bytes()
    truncated.write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="truncated.pt"):
        load_checkpoint(truncated)
    # weights that do not fit the architecture the config describes
    wrong = _payload()
    wrong["config"]["train"]["num_features"] = 8
    with pytest.raises(CheckpointError, match="do not fit"):
        model_from_checkpoint(load_checkpoint(save_checkpoint(tmp_path / "w.pt", wrong)))
