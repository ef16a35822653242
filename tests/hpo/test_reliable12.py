"""The mean accuracy over the 12 reliable attributes is shown and logged as `reliable12`:
a study file's `metric = "val_mean_acc_reliable"` still ranks trials by it, `study show`
heads its column `val_mean_acc_reliable12`, and MLflow (a real SQLite store) has it under
that name on the trial (per epoch and best epoch) and the parent (study_best/), never under
the old name, whose meaning was the mean over all but 3 attributes."""

from __future__ import annotations

import io

import optuna
import pandas as pd
import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from celebhpo.cli import cli
from celebhpo.hpo import leaderboard, load_study
from tests.helpers import mlflow_runs, write_study


def _cli(*args: object) -> str:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def test_a_reliable_study_shows_and_logs_reliable12(tmp_path, synth_root):
    storage, uri = f"sqlite:///{tmp_path / 's.db'}", f"sqlite:///{tmp_path / 'm.db'}"
    path = write_study(tmp_path / "rel.toml", synth_root, name="rel", space="lr = [0.03]",
                       epochs=2, study_extra='metric = "val_mean_acc_reliable"')
    _cli("study", "create", path, "--grid", "--storage", storage, "--tracking-uri", uri)
    _cli("optimize", "--study", "rel", "--storage", storage, "--tracking-uri", uri)
    study, _ = load_study("rel", storage)
    [trial] = study.trials
    value = trial.user_attrs["val_mean_acc_reliable"]
    assert trial.value == pytest.approx(value)  # the study file's key ranks by it

    shown = pd.read_csv(io.StringIO(_cli("study", "show", "rel", "--storage", storage,
                                         "--format", "csv")))
    assert "val_mean_acc_reliable12" in shown.columns
    assert "val_mean_acc_reliable" not in shown.columns
    assert shown["val_mean_acc_reliable12"].tolist() == pytest.approx([value])
    table = _cli("study", "show", "rel", "--storage", storage).splitlines()[0]
    assert "val_mean_acc_reliable12" in table.split()

    client = MlflowClient(uri)
    run = mlflow_runs(uri, "rel")[trial.number]
    assert "val_mean_acc_reliable" not in run.data.metrics
    curve = client.get_metric_history(run.info.run_id, "val_mean_acc_reliable12")
    assert [m.step for m in curve] == [1, 2]
    best = {m.step: m.value for m in curve}[trial.user_attrs["best_epoch"]]
    assert best == pytest.approx(value)
    assert "best_epoch/val_tuned_mean_acc_reliable12" in run.data.metrics
    assert not [n for n in run.data.metrics if n.endswith("mean_acc_reliable")]
    parent = client.get_run(study.user_attrs["parent_run_id"]).data.metrics
    assert parent["study_best/val_mean_acc_reliable12"] == pytest.approx(value)
    assert parent["study_best/value"] == pytest.approx(value)
    assert not [n for n in parent if n.endswith("mean_acc_reliable")]


def test_the_leaderboard_has_a_reliable12_column_beside_another_metric():
    study = optuna.create_study(study_name="board", direction="minimize",
                                storage=optuna.storages.InMemoryStorage())
    for value, reliable in ((0.4, 0.91), (0.3, 0.87)):
        study.add_trial(optuna.trial.create_trial(
            value=value, params={"lr": 0.1}, distributions={
                "lr": optuna.distributions.FloatDistribution(0.01, 1.0)},
            user_attrs={"val_loss": value, "val_mean_acc_reliable": reliable,
                        "best_epoch": 1, "epochs_run": 1}))
    board = leaderboard(study)
    assert list(board["val_mean_acc_reliable12"]) == [0.87, 0.91]  # best (lowest loss) first
    assert "val_mean_acc_reliable" not in board.columns
    cols = list(board.columns)
    assert cols.index("val_map") < cols.index("val_mean_acc_reliable12") < cols.index("epochs")
