"""The one batched inference path (parallel decode, whole batches, channels_last) gives what a
plain per-image loop gives: open one image, preprocess it, run the model on it alone."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from celebhpo.config import StudyConfig
from celebhpo.data import ATTRIBUTES, IMAGENET_MEAN, IMAGENET_STD, load_image, read_celeba
from celebhpo.inference import load_model
from celebhpo.inference.predict import predict_paths
from celebhpo.inference.retrieve import predict_folder
from celebhpo.training.checkpoint import Checkpoint
from celebhpo.training.models import create_model

SIZE = 32


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """The tiny arch with random weights (seeded) and random BatchNorm statistics, saved as
    fit saves a checkpoint."""
    cfg = StudyConfig.from_dict({"data": {"image_size": SIZE}, "train": {
        "arch": "tiny", "num_features": 16, "dropout": 0.0}}, source="test")
    torch.manual_seed(0)
    model = create_model("tiny", num_labels=40, num_features=16, dropout=0.0)
    for m in model.modules():  # non-trivial running statistics: eval mode uses them
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    path = tmp_path_factory.mktemp("model") / "best.pt"
    Checkpoint(
        arch="tiny", state_dict=model.state_dict(), config=cfg.to_dict(),
        attributes=list(ATTRIBUTES), mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD),
        thresholds=[0.5] * 40, metrics={}, epoch=1, image_size=SIZE, crop="squash",
    ).save(path)
    return path


@pytest.fixture(scope="module")
def images(synth_root, tmp_path_factory) -> list[Path]:
    """50 faces and one corrupt file among them (index 7)."""
    dst = tmp_path_factory.mktemp("faces")
    src = sorted(Path(read_celeba(synth_root).image_dir).glob("*.jpg"))[:50]
    paths = [Path(shutil.copy(f, dst / f.name)) for f in src]
    bad = dst / "000007-broken.jpg"
    bad.write_bytes(b"\xff\xd8 not a jpeg")
    paths.insert(7, bad)
    return paths


def _one_by_one(checkpoint: Path, paths: list[Path]) -> tuple[list[int], np.ndarray]:
    """The per-image loop: NCHW fp32 model, one image per forward."""
    from celebhpo.data import normalize

    model = Checkpoint.load(checkpoint).model().eval()
    kept, rows = [], []
    for i, p in enumerate(paths):
        try:
            img = load_image(p, SIZE, "squash")
        except Exception:  # noqa: BLE001 - the loop skips what it cannot open
            continue
        with torch.no_grad():
            x = normalize(torch.from_numpy(img[None].copy()))
            rows.append(torch.sigmoid(model(x)).numpy()[0])
        kept.append(i)
    return kept, np.stack(rows)


@pytest.mark.parametrize("workers", [1, 2])
def test_batched_inference_equals_the_per_image_loop(checkpoint, images, workers):
    predictor = load_model(checkpoint)
    assert predictor.channels_last  # the torch backend runs NHWC
    kept, probs, bad = predict_paths(predictor, images, batch_size=16, progress=False,
                                     workers=workers)
    want_kept, want = _one_by_one(checkpoint, images)
    assert kept == want_kept and len(kept) == 50
    assert [i for i, _ in bad] == [7] and bad[0][1]
    assert probs.dtype == np.float32 and probs.shape == (50, 40)
    np.testing.assert_allclose(probs, want, atol=1e-5, rtol=0)
    assert np.ptp(probs, axis=0).max() > 1e-3  # the images get different answers (100x atol)


def test_a_folder_is_predicted_in_order_with_the_pool(checkpoint, images, monkeypatch,
                                                      tmp_path):
    monkeypatch.setenv("CELEBHPO_CACHE_DIR", str(tmp_path / "cache"))
    predictor = load_model(checkpoint)
    got = predict_folder(predictor, images[0].parent, batch_size=8, progress=False)
    names = sorted(p.name for p in images)
    assert got.names == [n for n in names if n != "000007-broken.jpg"]
    assert [n for n, _ in got.skipped] == ["000007-broken.jpg"]
    _, want = _one_by_one(checkpoint, [images[0].parent / n for n in got.names])
    np.testing.assert_allclose(got.probs, want, atol=1e-5, rtol=0)
