"""`celebhpo predict` output, whole and exact, one test per format (sqlite-utils style); the
`--threshold` option of predict and evaluate.

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
from celebhpo.training.checkpoint import Checkpoint
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
    Checkpoint(
        arch="tiny", state_dict=model.state_dict(), attributes=ATTRS,
        config={"data": {"image_size": SIZE, "crop": "squash"},
                "train": {"arch": "tiny", "num_features": 16, "dropout": 0.0}},
        mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD), thresholds=thresholds, metrics={},
        epoch=1,
    ).save(work / "model" / "model.pt")
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


def _at(setup: dict, threshold: float) -> dict:
    """The same model and images, expected at `threshold` for every attribute."""
    return {**setup, "thresholds": [threshold] * len(ATTRS), "label": f"{threshold:g}"}


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
        lines = [f"{img}  ({len(present)} of 40 present, {setup.get('label', 'tuned')} "
                 "thresholds)"]
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


@pytest.mark.parametrize("value", ["0.5", "0.45"])
def test_predict_threshold_option(setup, value):
    expected = _at(setup, float(value))
    # the tuned thresholds and this one disagree somewhere on these images
    assert [_present(expected, n) for n in range(3)] != [_present(setup, n) for n in range(3)]
    result = CliRunner().invoke(cli, ["predict", str(setup["model"]), *map(str, setup["images"]),
                                      "--threshold", value])
    assert result.exit_code == 0, result.output
    assert result.stdout == expected_table(expected)


@pytest.mark.parametrize("command", ["predict", "evaluate", "retrieve"])
@pytest.mark.parametrize("value", ["abc", "0", "1", "-0.2", "nan", ""])
def test_bad_threshold_is_one_line(setup, synth_root, command, value):
    args = {"predict": [str(setup["images"][0])],
            "evaluate": [str(synth_root)],
            "retrieve": [str(setup["images"][0].parent), "--where", "Male"]}[command]
    result = CliRunner().invoke(cli, [command, str(setup["model"]), *args,
                                      "--threshold", value])
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == (f"Error: threshold {value!r} is not valid: use tuned, 0.5, or a "
                             "number between 0 and 1\n")


def _evaluation_rows(text: str) -> dict[str, list[float]]:
    """metric -> its numbers, from the metrics block of `celebhpo evaluate`'s output."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("metric"))
    rows = {}
    for line in lines[start + 1:]:
        if not line or line.startswith("("):
            break
        name, *values = line.split()
        rows[name] = [float(v) for v in values]
    return rows


@pytest.mark.parametrize(("option", "head"), [
    ([], "at tuned    at 0.5"), (["--threshold", "0.45"], "at 0.45    at 0.5"),
    (["--threshold", "0.5"], "at 0.5")])
def test_evaluate_threshold_option(setup, synth_root, option, head):
    """The metrics at --threshold beside those at 0.5, against sklearn on the same images."""
    from sklearn.metrics import accuracy_score

    from celebhpo.data import read_celeba, select_split
    from celebhpo.inference import load_model
    from celebhpo.inference.predict import predict_paths

    result = CliRunner().invoke(cli, ["evaluate", str(setup["model"]), str(synth_root),
                                      "--split", "test", *option])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == f"test split of {synth_root}: 30 images, the whole split"
    assert lines[1].split("  ", 1)[1].strip() == head
    ds = read_celeba(synth_root)
    rows = select_split(ds, "test")
    _, probs, _ = predict_paths(load_model(setup["model"]), ds.paths(rows), 64, False)
    targets = ds.labels[rows]
    cuts = {"tuned": np.asarray(setup["thresholds"]), "0.45": 0.45, "0.5": 0.5}
    labels = [h.removeprefix("at ") for h in head.split("    ")]
    mean_acc = [np.mean([accuracy_score(targets[:, j], probs[:, j] > np.broadcast_to(
        cuts[label], (40,))[j]) for j in range(40)]) for label in labels]
    assert _evaluation_rows(result.stdout)["mean_acc"] == pytest.approx(mean_acc, abs=5e-5)
