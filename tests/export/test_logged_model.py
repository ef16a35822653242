"""export-best logs its MLflow model into the study's own experiment and store, on the
trial's run, and the registered version points there: nothing goes to MLflow's Default
experiment (0), nor to a `mlruns/` in the current folder."""

from __future__ import annotations

import numpy as np
import torch
from mlflow import MlflowClient

from celebhpo.config import load_study_file
from celebhpo.export import export_best
from celebhpo.hpo import create_study, optimize
from tests.helpers import write_study


def test_logged_model_lives_in_the_study_experiment(tmp_path, synth_root, monkeypatch):
    import mlflow
    import mlflow.pytorch

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # where MLflow's Default experiment would put its files
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    cfg = load_study_file(write_study(tmp_path / "s.toml", synth_root, name="lm",
                                      space="lr = [0.003]"))
    create_study(cfg, storage=storage, grid=True, tracking_uri=uri)
    optimize(study_name="lm", storage=storage, device="cpu", progress=False,
             echo=lambda _: None)
    result = export_best(study_name="lm", storage=storage, out=tmp_path / "best",
                         register="lm-model", device="cpu", progress=False)

    # models:/ URIs and the fluent API resolve through MLflow's global URIs, as for a user
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", uri)
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("lm")
    [model] = mlflow.search_logged_models(experiment_ids=[experiment.experiment_id],
                                          output_format="list")
    assert model.source_run_id == result.run_id and model.name == "model"
    assert model.artifact_location.startswith(experiment.artifact_location)
    assert mlflow.search_logged_models(experiment_ids=["0"], output_format="list") == []
    # the run page lists it ("Logged models (1)")
    outputs = client.get_run(result.run_id).outputs.model_outputs
    assert [o.model_id for o in outputs] == [model.model_id]
    version = client.get_model_version_by_alias("lm-model", "best")
    assert version.source == f"models:/{model.model_id}" and version.run_id == result.run_id

    loaded = mlflow.pytorch.load_model("models:/lm-model@best")
    images = np.random.default_rng(1).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    with torch.no_grad():
        probs = loaded(torch.from_numpy(images)).numpy()
    assert probs.shape == (3, 40) and ((probs >= 0) & (probs <= 1)).all()
    assert list(cwd.iterdir()) == []  # no mlruns/ (nor anything else) where it ran
