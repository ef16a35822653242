"""The MLflow model export-best logs, loaded back through MLflow (a SQLite store in tmp_path):
its signature and metadata say (B, S, S, 3) uint8 with S the study's image size, input of
another shape or dtype is refused before the model runs with the expected shape named, and
loading it needs no celebhpo (a torch.export program)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from mlflow.exceptions import MlflowException

from celebhpo.data import IMAGENET_MEAN, IMAGENET_STD
from celebhpo.export.mlflow_model import ImageAttributes, log_mlflow_model
from celebhpo.tracking import Tracker

SIZE = 16


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """(tracking URI, model URI, the module logged): a small conv net, 16x16 images."""
    root = tmp_path_factory.mktemp("mlflow-input")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    tracker = Tracker(uri, retries=0)
    experiment = tracker.client.create_experiment("inputs", artifact_location=str(root / "art"))
    run = tracker.client.create_run(experiment)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                              torch.nn.Linear(8, 40))
    info = log_mlflow_model(tracker, run.info.run_id, net, SIZE, IMAGENET_MEAN, IMAGENET_STD)
    return uri, info.model_uri, ImageAttributes(net.eval(), IMAGENET_MEAN, IMAGENET_STD)


@pytest.fixture
def pyfunc(logged, monkeypatch):
    import mlflow.pyfunc

    monkeypatch.setenv("MLFLOW_TRACKING_URI", logged[0])  # models:/ resolves through it
    return mlflow.pyfunc.load_model(logged[1])


def test_signature_and_metadata_name_the_input(pyfunc):
    [spec] = pyfunc.metadata.get_input_schema().inputs
    assert (spec.type, spec.shape) == (np.dtype("uint8"), (-1, SIZE, SIZE, 3))
    [out] = pyfunc.metadata.get_output_schema().inputs
    assert (out.type, out.shape) == (np.dtype("float32"), (-1, 40))
    meta = pyfunc.metadata.metadata
    assert f"(B, {SIZE}, {SIZE}, 3) uint8" in meta["input"] and "image size" in meta["input"]
    assert "(B, 40)" in meta["output"]


def test_right_input_gives_the_modules_probabilities(pyfunc, logged):
    images = np.random.default_rng(3).integers(0, 256, (3, SIZE, SIZE, 3), dtype=np.uint8)
    with torch.no_grad():
        expected = logged[2](torch.from_numpy(images)).numpy()
    np.testing.assert_allclose(pyfunc.predict(images), expected, atol=1e-6)
    assert pyfunc.predict(images[:1]).shape == (1, 40)  # any batch size


@pytest.mark.parametrize(("images", "named"), [
    (np.zeros((2, 32, 32, 3), np.uint8), f"expected shape (-1, {SIZE}, {SIZE}, 3)"),
    (np.zeros((SIZE, SIZE, 3), np.uint8), f"expected shape (-1, {SIZE}, {SIZE}, 3)"),
    (np.zeros((2, 3, SIZE, SIZE), np.uint8), f"expected shape (-1, {SIZE}, {SIZE}, 3)"),
    (np.zeros((2, SIZE, SIZE, 3), np.float32), "expected dtype uint8"),
], ids=["other-size", "no-batch", "channels-first", "float"])
def test_wrong_input_is_refused_naming_what_is_expected(pyfunc, images, named):
    with pytest.raises(MlflowException) as raised:
        pyfunc.predict(images)
    last = str(raised.value).splitlines()[-1]  # MLflow prints the input before its reason
    assert named in last and str(images.shape if "shape" in named else images.dtype) in last


def test_the_pytorch_flavor_guards_the_shape_and_loads_without_celebhpo(logged):
    """In a fresh interpreter where importing celebhpo fails: the program loads, predicts,
    and a wrong size stops at its guard, which names the size."""
    code = f"""
import sys, json
sys.modules["celebhpo"] = None  # any import of celebhpo now raises ImportError
import mlflow, mlflow.pytorch, torch
mlflow.set_tracking_uri({logged[0]!r})
model = mlflow.pytorch.load_model({logged[1]!r})
out = {{"shape": list(model(torch.zeros((2, {SIZE}, {SIZE}, 3), dtype=torch.uint8)).shape)}}
try:
    model(torch.zeros((2, 32, 32, 3), dtype=torch.uint8))
except Exception as e:
    out["error"] = f"{{type(e).__name__}}: {{e}}"
print(json.dumps(out))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["shape"] == [2, 40]
    assert f"== {SIZE}" in result["error"] and "\n" not in result["error"]
