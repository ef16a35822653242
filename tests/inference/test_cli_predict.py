"""`celebhpo predict` output, whole and exact, one test per format (sqlite-utils style).

The model is a seeded, untrained tiny network saved as a real checkpoint; the expected text is
built here from the model's own probabilities (torch, on the same decoded pixels), not by the
formatter under test.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from celebhpo.cli import cli
from celebhpo.data import ATTRIBUTES, IMAGENET_MEAN, IMAGENET_STD, load_image, normalize
from celebhpo.training.checkpoint import save_checkpoint
from celebhpo.training.models import create_model

SIZE = 16
ATTRS = list(ATTRIBUTES)


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    """An export folder (model.pt only), three images, and the model's probabilities on them."""
    work = tmp_path_factory.mktemp("predict-cli")
    torch.manual_seed(0)
    model = create_model("tiny", num_labels=40, num_features=16, dropout=0.0).eval()
    thresholds = np.random.default_rng(0).uniform(0.35, 0.65, 40).round(3).tolist()
    save_checkpoint(work / "model" / "model.pt", {
        "arch": "tiny", "state_dict": model.state_dict(), "attributes": ATTRS,
        "config": {"data": {"image_size": SIZE, "crop": "squash"},
                   "train": {"arch": "tiny", "num_features": 16, "dropout": 0.0}},
        "normalization": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
        "thresholds": thresholds, "metrics": {}, "epoch": 1,
    })
    rng = np.random.default_rng(1)
    images = []
    for i, shape in enumerate([(40, 30), (24, 24), (50, 70)]):
        path = work / f"face{i}.png"
        Image.fromarray(rng.integers(0, 256, (*shape, 3), dtype=np.uint8)).save(path)
        images.append(path)
    # what the model says, in one batch as predict sends them
    x = torch.from_numpy(np.stack([load_image(p, SIZE, "squash") for p in images]))
    with torch.inference_mode():
        probs = torch.sigmoid(model(normalize(x, IMAGENET_MEAN, IMAGENET_STD)).float()).numpy()
    return {"model": work / "model", "images": images, "probs": probs,
            "thresholds": thresholds}


def _present(setup: dict, n: int) -> list[str]:
    return [a for a, p, t in zip(ATTRS, setup["probs"][n], setup["thresholds"], strict=True)
            if p > t]


def expected_json(setup: dict) -> str:
    records = [{"image": str(img), "present": _present(setup, n),
                "probabilities": {a: round(float(p), 6)
                                  for a, p in zip(ATTRS, setup["probs"][n], strict=True)}}
               for n, img in enumerate(setup["images"])]
    return json.dumps(records, indent=2) + "\n"


def expected_csv(setup: dict) -> str:
    rows = [",".join(["image", "present", *ATTRS])]
    rows += [",".join([str(img), ";".join(_present(setup, n)),
                       *(f"{p:.4f}" for p in setup["probs"][n])])
             for n, img in enumerate(setup["images"])]
    return "\n".join(rows) + "\n"


def expected_table(setup: dict) -> str:
    width = max(len(a) for a in ATTRS)
    blocks = []
    for n, img in enumerate(setup["images"]):
        present = _present(setup, n)
        by_prob = sorted(present, key=lambda a: -setup["probs"][n][ATTRS.index(a)])
        lines = [f"{img}  ({len(present)} of 40 present, tuned thresholds)"]
        lines += [f"  {a:<{width}}  {setup['probs'][n][ATTRS.index(a)]:.3f}" for a in by_prob]
        if not present:
            lines.append("  (no attribute above its threshold)")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


@pytest.mark.parametrize(("fmt", "expected"), [
    ("json", expected_json), ("csv", expected_csv), ("table", expected_table)])
def test_predict_output_is_exact(setup, fmt, expected):
    # the model says something worth printing: some attributes present, not all
    assert 0 < sum(len(_present(setup, n)) for n in range(3)) < 3 * 40
    result = CliRunner().invoke(
        cli, ["predict", str(setup["model"]), *map(str, setup["images"]), "--format", fmt])
    assert result.exit_code == 0, result.output
    assert result.stdout == expected(setup)
    assert result.stderr == ""


def test_predict_json_of_a_folder_lists_its_images_by_name(setup, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for img in reversed(setup["images"]):
        (folder / img.name).write_bytes(img.read_bytes())
    result = CliRunner().invoke(cli, ["predict", str(setup["model"]), str(folder),
                                      "--format", "json"])
    assert result.exit_code == 0, result.output
    moved = {**setup, "images": [folder / img.name for img in setup["images"]]}
    assert result.stdout == expected_json(moved)
