"""`celebhpo demo --quick` end to end: faces, study, optimize, export, predict, retrieve."""

from __future__ import annotations

import optuna
from click.testing import CliRunner
from mlflow import MlflowClient

from celebhpo.cli import cli


def test_quick_demo_runs_everything_and_a_second_run_starts_a_fresh_study(tmp_path,
                                                                          monkeypatch):
    elsewhere = tmp_path.parent / f"{tmp_path.name}-cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the demo writes only into --workdir
    runner = CliRunner()
    result = runner.invoke(cli, ["demo", "--workdir", str(tmp_path), "--quick"])
    assert result.exit_code == 0, result.output
    out = result.output
    for n in range(1, 7):
        assert f"[{n}/6]" in out
    assert "mean accuracy (40 attributes)   tuned    0.5  majority baseline" in out
    assert 'retrieve --where "Eyeglasses and not Male"' in out
    assert "mlflow ui --backend-store-uri sqlite:///" in out and "--host 127.0.0.1" in out
    for name in ("model.pt", "model_card.md", "model_card.json"):
        assert (tmp_path / "best" / name).is_file()
    assert (tmp_path / "mlruns" / "mlflow.db").is_file()
    storage = f"sqlite:///{tmp_path / 'studies' / 'celebhpo.db'}"
    study = optuna.load_study(study_name="demo-quick", storage=storage)
    assert len(study.trials) == 2  # the whole grid
    assert "registered celebhpo-demo version 1 (alias best)" in out
    # the last lines land on the study's runs table, not MLflow's GenAI overview
    experiment = study.user_attrs["experiment_id"]
    lines = out.rstrip().splitlines()
    assert lines[-1].startswith("done in") and lines[-3].endswith(
        f"then open http://127.0.0.1:5000/#/experiments/{experiment}/runs"
        "?workflowType=machine_learning")
    assert all(t.state.is_finished() for t in study.trials)
    # the exported model is logged in the demo's experiment, not MLflow's Default one
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    assert len(client.search_logged_models([experiment])) == 1
    assert not client.search_logged_models(["0"]) and list(elsewhere.iterdir()) == []

    again = runner.invoke(cli, ["demo", "--workdir", str(tmp_path), "--quick"])
    assert again.exit_code == 0, again.output
    assert "already there: reusing them" in again.output
    assert "this run is 'demo-quick-2'" in again.output
    names = {s.study_name for s in optuna.get_all_study_summaries(storage)}
    assert names == {"demo-quick", "demo-quick-2"}
