"""export-best writes back to MLflow (a real server, over REST): the model as an MLflow model
on the trial's run, its test metrics and export tag; `--register` versions whose alias
`best` moves only to a better model on the same test split."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from celebhpo.config import load_study_file
from celebhpo.export import export_best
from celebhpo.export.best import split_key
from celebhpo.hpo import create_study, optimize
from celebhpo.tracking import Tracker
from celebhpo.tracking.registry import SCORE_TAG, register_model
from tests.helpers import write_study


@pytest.fixture
def served(monkeypatch, tracking_server):
    # models:/ URIs resolve through MLflow's global URIs, as they do for a user
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_server)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", tracking_server)
    return tracking_server


def test_registered_model_loads_predicts_and_keeps_its_alias(tmp_path, synth_root, served):
    import mlflow
    import mlflow.pyfunc
    import mlflow.pytorch

    from celebhpo.data import load_image
    from celebhpo.inference import load_model, predict
    from celebhpo.training.checkpoint import Checkpoint

    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    cfg = load_study_file(write_study(tmp_path / "s.toml", synth_root, name="reg"))
    create_study(cfg, storage=storage, grid=True, tracking_uri=served)
    optimize(study_name="reg", storage=storage, device="cpu", progress=False,
             echo=lambda _: None)
    out = tmp_path / "best"
    result = export_best(study_name="reg", storage=storage, out=out, register="reg-model",
                         device="cpu", progress=False)
    assert result.registered == "reg-model version 1 (alias best)"

    # the trial's run: the MLflow model, the test metrics, the export tag
    tracker = Tracker(served, retries=1, backoff=0.1)
    run = tracker.client.get_run(result.run_id)
    assert run.data.tags["celebhpo.exported"] == str(out.resolve())
    test = result.metrics["test"]
    assert run.data.metrics["test/tuned/mean_acc"] == pytest.approx(test["tuned"]["mean_acc"])
    assert run.data.metrics["test/loss"] == pytest.approx(test["loss"])

    # models:/NAME@best loads, with the PyTorch flavor and as a pyfunc, and its outputs
    # equal predict's probabilities on the same images
    predictor = load_model(out)
    images = sorted((synth_root / "img_align_celeba" / "img_align_celeba").glob("*.jpg"))[-4:]
    probs = predict(predictor, images, progress=False).probs
    batch = np.stack([load_image(p, predictor.image_size, predictor.crop) for p in images])
    model = mlflow.pytorch.load_model("models:/reg-model@best")
    with torch.no_grad():
        np.testing.assert_allclose(model(torch.from_numpy(batch)).numpy(), probs, atol=1e-6)
    pyfunc = mlflow.pyfunc.load_model("models:/reg-model@best")
    np.testing.assert_allclose(np.asarray(pyfunc.predict(batch)), probs, atol=1e-6)
    assert pyfunc.metadata.get_input_schema() is not None  # a signature was logged

    # a worse model on the same test split does not take the alias; --force moves it
    client = tracker.client
    v1 = client.get_model_version("reg-model", "1")
    score = float(v1.tags[SCORE_TAG])
    split = split_key(Checkpoint.load(out / "model.pt"))
    assert v1.source.startswith("models:/m-") and v1.run_id == result.run_id
    same = {"model_uri": v1.source, "model_id": v1.source.removeprefix("models:/")}
    worse = register_model(tracker, "reg-model", result.run_id, **same,
                           score=score - 0.05, split=split)
    assert (worse.version, worse.moved) == ("2", False)
    assert "kept on version 1" in str(worse) and "--force" in str(worse)
    assert client.get_model_version_by_alias("reg-model", "best").version == "1"
    assert "celebhpo.alias.best" not in client.get_model_version("reg-model", "2").tags
    other = register_model(tracker, "reg-model", result.run_id, **same,
                           score=score + 0.05, split="another-split")
    assert not other.moved and "another test split" in other.note
    better = register_model(tracker, "reg-model", result.run_id, **same,
                            score=score + 0.01, split=split)
    assert better.moved and better.version == "4"
    assert client.get_model_version_by_alias("reg-model", "best").version == "4"
    assert client.get_model_version("reg-model", "4").tags["celebhpo.alias.best"].endswith(
        f"from version 1; {better.note}")
    forced = register_model(tracker, "reg-model", result.run_id, **same,
                            score=0.0, split=split, force=True)
    assert forced.moved and client.get_model_version_by_alias("reg-model", "best").version == "5"
