"""Load: four real `celebhpo optimize` workers share one 16-point grid on PostgreSQL. Every
point runs exactly once, MLflow holds one parent and its 16 children, nothing is left RUNNING,
and the leaderboard says what Optuna says.

The wall-time comparison with one worker is benchmarks/load.py, not a test.
"""

from __future__ import annotations

import math

import optuna
import pytest
from mlflow import MlflowClient

from celebhpo.config import load_study_file
from celebhpo.hpo import create_study, leaderboard, load_study
from tests.helpers import assert_grid_done_once, logs, start, write_study

TS = optuna.trial.TrialState
GRID16 = ("lr = [0.001, 0.003, 0.01, 0.03]\ndropout = [0.1, 0.3]\n"
          "num_features = [8, 16]")
WORKERS = 4


@pytest.mark.slow  # long form: test_soak.py runs four PG workers through a grid, with kills
def test_four_workers_share_a_16_point_grid_on_postgresql(tmp_path, synth_root, pg_url):
    tracking_uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    cfg = load_study_file(write_study(tmp_path / "s.toml", synth_root, name="load16",
                                      space=GRID16, train_size=64))
    create_study(cfg, storage=pg_url, grid=True, tracking_uri=tracking_uri)
    paths = [tmp_path / f"w{i}.log" for i in range(WORKERS)]
    procs = [start(["optimize", "--storage", pg_url], tmp_path, p) for p in paths]
    for proc in procs:
        assert proc.wait(timeout=600) == 0, logs(*paths)
    assert "Traceback" not in logs(*paths)

    # Optuna: each of the 16 points COMPLETE once, nothing RUNNING or WAITING, no failures
    assert_grid_done_once(pg_url, "load16", tracking_uri, 16)
    study, _ = load_study("load16", pg_url)
    trials = study.get_trials()
    assert len(trials) == 16 and {t.state for t in trials} == {TS.COMPLETE}
    workers = {t.user_attrs["pid"] for t in trials}
    assert len(workers) >= 2, f"only {workers} ran trials: no concurrency was tested"
    assert workers <= {p.pid for p in procs}

    # MLflow: one parent, its 16 FINISHED children, nothing else in the experiment
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name("load16")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("role") == "study"]
    children = [r for r in runs if r.data.tags.get("role") == "trial"]
    assert len(parents) == 1 and len(children) == 16 and len(runs) == 17
    parent_id = parents[0].info.run_id
    assert parent_id == study.user_attrs["parent_run_id"]
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent_id}
    assert {r.info.status for r in runs} == {"FINISHED"}
    by_number = {int(r.data.tags["trial_number"]): r for r in children}
    assert sorted(by_number) == [t.number for t in trials]
    for t in trials:
        run = by_number[t.number]
        assert run.info.run_id == t.user_attrs["mlflow_run_id"]
        assert run.data.tags["state"] == "COMPLETE"
        for key, value in t.params.items():
            assert float(run.data.params[f"train.{key}"]) == value

    # the leaderboard is Optuna's view, best first
    board = leaderboard(study)
    assert len(board) == 16
    assert list(board["val_loss"]) == sorted(t.value for t in trials)
    view = {t.number: (t.state.name, t.value, dict(t.params)) for t in trials}
    for row in board.to_dict("records"):
        state, value, params = view[row["trial"]]
        assert row["state"] == state and math.isclose(row["val_loss"], value)
        assert {k: row[k] for k in params} == params
    assert board["trial"].iloc[0] == study.best_trial.number
