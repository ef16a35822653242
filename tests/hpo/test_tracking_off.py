"""A study runs with tracking off (`[study] tracking = "off"`, `--no-tracking`): trials train
and are told to Optuna, and no MLflow store, experiment or run is made; export-best refuses
in one line. The tracker hpo talks to has a do-nothing twin with the same methods."""

from __future__ import annotations

import inspect

import optuna
import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from celebhpo.cli import cli
from celebhpo.config import load_study_file
from celebhpo.errors import ConfigError, StudyError
from celebhpo.export import export_best
from celebhpo.hpo import create_study, load_study, optimize
from celebhpo.tracking import NullTracker, NullTrialRun, RunHandle, StudyTracker, TrialRun
from tests.helpers import write_study

COMPLETE = optuna.trial.TrialState.COMPLETE


def _public(cls: type) -> dict[str, list[str]]:
    """Public method -> its parameter names."""
    return {name: list(inspect.signature(f).parameters) for name, f in vars(cls).items()
            if callable(f) and not name.startswith("_")}


def test_the_null_tracker_and_run_answer_every_call_of_the_real_ones():
    assert _public(NullTracker) == _public(StudyTracker)
    assert _public(NullTrialRun) == {**_public(RunHandle), **_public(TrialRun)}


def test_tracking_key_is_validated(tmp_path, synth_root):
    path = write_study(tmp_path / "s.toml", synth_root, study_extra='tracking = "of"')
    with pytest.raises(ConfigError, match=r"\[study\] tracking = 'of' is not one of 'on', "
                                          r"'off'; did you mean 'off'\?"):
        load_study_file(path)
    assert load_study_file(write_study(tmp_path / "t.toml", synth_root)).study.tracking == "on"


def test_a_study_with_tracking_off_runs_without_mlflow(tmp_path, synth_root, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where the default store, mlruns/mlflow.db, would go
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    cfg = load_study_file(write_study(tmp_path / "off.toml", synth_root, name="off",
                                      study_extra='tracking = "off"'))
    created = create_study(cfg, storage=storage, grid=True)
    assert "tracking off" in created.message
    notes: list[str] = []
    summary = optimize(study_name="off", storage=storage, device="cpu", progress=False,
                       echo=notes.append)
    study, stored = load_study("off", storage)
    assert [t.state for t in study.trials] == [COMPLETE, COMPLETE] and summary.ran == [0, 1]
    assert not [t for t in study.trials if "mlflow_run_id" in t.user_attrs]
    assert all(t.user_attrs["f1_by_attribute"] for t in study.trials)
    assert stored.study.tracking == "off"
    assert (study.user_attrs["experiment_id"], study.user_attrs["parent_run_id"]) == (None, None)
    assert any(n.startswith("MLflow tracking is off") for n in notes)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["off.toml", "studies.db"]

    with pytest.raises(StudyError) as refused:
        export_best(study_name="off", storage=storage, out=tmp_path / "best", device="cpu",
                    progress=False)
    assert "runs with tracking off" in str(refused.value) and "\n" not in str(refused.value)
    assert not (tmp_path / "best").exists()


def test_no_tracking_flags(tmp_path, synth_root, monkeypatch):
    """`study create --no-tracking` stores tracking off; `optimize --no-tracking` runs a
    tracked study's trial without MLflow (no child run, no run id)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    path = write_study(tmp_path / "s.toml", synth_root, name="flag", space="lr = [0.003]")
    runner = CliRunner()
    done = runner.invoke(cli, ["study", "create", str(path), "--storage", storage,
                               "--no-tracking"])
    assert done.exit_code == 0, done.output
    assert load_study("flag", storage)[1].study.tracking == "off"
    assert not (tmp_path / "mlruns").exists()

    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    cfg = load_study_file(path)
    create_study(cfg, storage=storage, name="tracked", tracking_uri=uri, grid=True)
    done = runner.invoke(cli, ["optimize", "--study", "tracked", "--storage", storage,
                               "--device", "cpu", "--no-tracking"])
    assert done.exit_code == 0, done.output
    [trial] = load_study("tracked", storage)[0].trials
    assert trial.state == COMPLETE and "mlflow_run_id" not in trial.user_attrs
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("tracked")
    assert [r.data.tags["role"] for r in client.search_runs([experiment.experiment_id])] == [
        "study"]
    assert not (tmp_path / "mlruns").exists()
