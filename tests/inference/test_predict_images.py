"""Prediction sees images as a viewer shows them: a photo stored sideways with an EXIF
orientation is predicted like the upright photo. A tiny model trained here on synthetic faces.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from celebhpo.inference import Predictor, load_model
from celebhpo.inference.predict import predict_paths

SIZE = 32
ORIENTATION = 0x0112
# the stored pixels for each orientation, given the upright picture (EXIF tag 274): 6 means
# "turn 90 degrees clockwise to view", so the camera stored it turned counter-clockwise
STORED = {6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}


@pytest.fixture(scope="module")
def predictor(synth_root, tmp_path_factory) -> Predictor:
    """The tiny arch, 3 epochs on the 240 synthetic training faces, as a Predictor."""
    from celebhpo.config import StudyConfig
    from celebhpo.data import load_data
    from celebhpo.training.loop import fit

    work = tmp_path_factory.mktemp("exif-model")
    cfg = StudyConfig.from_dict({
        "data": {"root": str(synth_root), "image_size": SIZE, "crop": "squash",
                 "cache_dir": str(work / "decoded")},
        "train": {"arch": "tiny", "epochs": 3, "batch_size": 32, "lr": 3e-3, "device": "cpu",
                  "num_features": 64, "dropout": 0.0, "seed": 0},
    }, source="test")
    torch.manual_seed(0)
    data = load_data(cfg.data, splits=("train", "val"), progress=False)
    return load_model(fit(cfg, data, checkpoint_path=work / "best.pt").checkpoint_path)


def write_views(src: Path, dst: Path, orientation: int) -> tuple[Path, Path, Path]:
    """The face upright, stored sideways with its EXIF tag, and stored sideways untagged.

    352 x 432: whole 16-px JPEG blocks in every orientation, so the three files differ only
    by how their pixels are stored, not by how JPEG re-encoding rounds them."""
    with Image.open(src) as im:
        upright = im.convert("RGB").resize((352, 432), Image.Resampling.BILINEAR)
    stored = upright.transpose(STORED[orientation])
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    paths = (dst / f"{src.stem}-upright.jpg", dst / f"{src.stem}-tagged{orientation}.jpg",
             dst / f"{src.stem}-sideways{orientation}.jpg")
    upright.save(paths[0], quality=95)
    stored.save(paths[1], quality=95, exif=exif)
    stored.save(paths[2], quality=95)
    return paths


@pytest.mark.parametrize("orientation", sorted(STORED))
def test_exif_rotated_photo_is_predicted_like_the_upright_one(predictor, synth_root, tmp_path,
                                                              orientation):
    faces = sorted((synth_root / "img_align_celeba" / "img_align_celeba").glob("*.jpg"))[-6:]
    views = [write_views(f, tmp_path, orientation) for f in faces]
    paths = [p for triple in views for p in triple]
    kept, probs, bad = predict_paths(predictor, paths, batch_size=64, progress=False)
    assert bad == [] and kept == list(range(len(paths)))
    upright, tagged, sideways = probs[0::3], probs[1::3], probs[2::3]  # (6, 40) each
    # the tagged file is the upright photo to the model
    assert np.abs(tagged - upright).max() < 0.02  # measured 0.0005-0.0007
    # ... and the same pixels without the tag are not: the model does tell them apart
    assert np.abs(sideways - upright).max() > 0.1  # measured 0.18-0.23
