"""Studies of several metrics (an accuracy-latency front) and studies with constraints
(issue 17, parts 3 and 4): real Optuna studies, real MLflow, real tiny trials."""

from __future__ import annotations

import io

import optuna
import pandas as pd
import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from celebhpo.cli import cli
from celebhpo.config import load_study_file
from celebhpo.errors import DataError, StudyError
from celebhpo.export import export_best
from celebhpo.hpo import (
    create_study,
    leaderboard,
    load_study,
    optimize,
    pareto_board,
    require_best_trial,
)
from celebhpo.report import format_optimize_summary
from tests.helpers import mlflow_runs, write_study

TS = optuna.trial.TrialState


def _run(tmp_path, synth_root, name: str, *, sampler: str, space: str, study_extra: str,
         trials: int, grid: bool = False) -> tuple[optuna.Study, str, str]:
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    cfg = load_study_file(write_study(tmp_path / f"{name}.toml", synth_root, name=name,
                                      sampler=sampler, space=space, study_extra=study_extra))
    create_study(cfg, storage=storage, grid=grid, tracking_uri=uri)
    summary = optimize(study_name=name, storage=storage, n_trials=trials, tracking_uri=uri,
                       progress=False)
    study = load_study(name, storage)[0]
    if len(study.directions) > 1:  # optimize's last line names the front
        front = ", ".join(str(t.number) for t in sorted(study.best_trials, key=lambda t: t.number))
        assert f"Pareto front: trial(s) {front} (study show --pareto" in format_optimize_summary(summary)
    return study, storage, uri


def _dominated(a: list[float], b: list[float], directions: list[str]) -> bool:
    """Whether b dominates a."""
    sign = [1 if d == "minimize" else -1 for d in directions]
    at_least = all(s * vb <= s * va for s, va, vb in zip(sign, a, b, strict=True))
    return at_least and any(s * vb < s * va for s, va, vb in zip(sign, a, b, strict=True))


def test_a_two_metric_study_runs_tpe_unpruned_and_shows_only_its_front(tmp_path, synth_root):
    study, storage, uri = _run(
        tmp_path, synth_root, "front", sampler="tpe", trials=4,
        space="data.image_size = [16, 24]\nnum_features = [8, 64]\nlr = [0.003, 0.03]",
        study_extra='metric = ["val_mean_acc", "latency_ms"]')
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert isinstance(study.sampler, optuna.samplers.TPESampler)
    trials = study.get_trials(states=(TS.COMPLETE,))
    assert len(trials) == 4
    assert all(not t.intermediate_values for t in trials)  # nothing reported: no pruning
    dirs = ["maximize", "minimize"]
    expected = {t.number for t in trials
                if not any(_dominated(t.values, o.values, dirs) for o in trials if o is not t)}
    board = pareto_board(study)
    assert set(board["trial"]) == expected
    assert {"val_mean_acc", "latency_ms", "pareto"} <= set(board.columns)
    runs = mlflow_runs(uri, "front")
    assert all(r.data.metrics["latency_ms"] > 0 and r.data.metrics["params_m"] > 0
               for r in runs.values())
    # a latency is the size it was trained at
    assert {t.params["data.image_size"] for t in trials} <= {16, 24}
    with pytest.raises(StudyError, match=r"no single best trial; its Pareto front: trial \d+"):
        require_best_trial(study, storage)
    parent = MlflowClient(uri).get_run(study.user_attrs["parent_run_id"]).info.run_id
    drawn = [a.path for a in MlflowClient(uri).list_artifacts(parent, "summary")]
    assert "summary/pareto_front.png" in drawn
    pick = min(expected)
    result = export_best(study_name="front", storage=storage, out=tmp_path / "best",
                         tracking_uri=uri, trial=pick, progress=False)
    assert result.trial_number == pick and (tmp_path / "best" / "model.pt").is_file()
    # the same through the command line
    common = ["--storage", storage]
    shown = CliRunner().invoke(cli, ["study", "show", "front", "--pareto", "--format", "csv",
                                     *common])
    assert shown.exit_code == 0, shown.output
    assert set(pd.read_csv(io.StringIO(shown.output))["trial"]) == expected
    refused = CliRunner().invoke(cli, ["export-best", "--study", "front", "--tracking-uri", uri,
                                       "--out", str(tmp_path / "x"), *common])
    assert refused.exit_code == 1 and "export-best --trial N" in refused.output
    assert len(refused.output.strip().splitlines()) == 1 and not (tmp_path / "x").exists()
    sliced = CliRunner().invoke(cli, ["evaluate", str(tmp_path / "best"), str(synth_root),
                                      "--slices", "Male"])
    assert sliced.exit_code == 0, sliced.output
    assert "groups by true Male" in sliced.output and "worst group: Male=" in sliced.output
    plain = CliRunner().invoke(cli, ["evaluate", str(tmp_path / "best"), str(synth_root),
                                     "--slices", ""])
    assert plain.exit_code == 0 and "groups by" not in plain.output


def test_a_pruner_with_two_metrics_loads(tmp_path, synth_root):
    # issue 26: it prunes on the epoch metric's curve (tests/hpo/test_multi_pruning.py)
    path = write_study(tmp_path / "s.toml", synth_root, pruner="median",
                       study_extra='metric = ["val_mean_acc", "latency_ms"]')
    cfg = load_study_file(path)
    assert (cfg.study.pruner, cfg.study.metric) == ("median", "val_mean_acc")


def test_constraints_pick_the_best_feasible_trial_and_tag_the_runs(tmp_path, synth_root):
    study, storage, uri = _run(
        tmp_path, synth_root, "small", sampler="grid", grid=True, trials=2,
        space="num_features = [8, 512]", study_extra="constraints = { max_params_m = 0.2 }")
    by_features = {t.params["num_features"]: t for t in study.get_trials(states=(TS.COMPLETE,))}
    small, big = by_features[8], by_features[512]
    assert small.user_attrs["params_m"] < 0.2 < big.user_attrs["params_m"]
    assert small.constraints["max_params_m"] <= 0 < big.constraints["max_params_m"]
    assert require_best_trial(study, storage).number == small.number
    board = leaderboard(study).set_index("trial")
    assert board.loc[small.number, "feasible"] == "yes"
    assert board.loc[big.number, "feasible"] == "no: max_params_m"
    # the default slices (Male x Young): the weakest group's accuracy beside the mean
    assert board["val_worst_group_acc"].notna().all()
    assert board["val_worst_group_acc"].between(0, 1).all()
    one = CliRunner().invoke(cli, ["study", "show", "small", "--pareto", "--storage", storage])
    assert one.exit_code == 1 and "has one metric (val_loss), so no front" in one.output
    tags = {n: r.data.tags for n, r in mlflow_runs(uri, "small").items()}
    assert tags[small.number]["feasible"] == "true"
    assert tags[big.number]["feasible"] == "false"
    assert tags[big.number]["violated"] == "max_params_m"


def test_a_constraint_nothing_meets_is_said_and_export_refuses(tmp_path, synth_root):
    study, storage, uri = _run(
        tmp_path, synth_root, "none", sampler="grid", grid=True, trials=2,
        space="num_features = [8, 16]", study_extra="constraints = { max_params_m = 0.00001 }")
    assert len(study.get_trials(states=(TS.COMPLETE,))) == 2
    with pytest.raises(StudyError, match=r"no completed trial of study 'none' meets its "
                       r"\[study\] constraints; the closest, trial \d+, misses max_params_m "
                       r"by [\d.e-]+\. .*--trial \d+"):
        export_best(study_name="none", storage=storage, out=tmp_path / "best",
                    tracking_uri=uri, progress=False)
    assert not (tmp_path / "best").exists()
    client = MlflowClient(uri)
    parent = client.get_run(study.user_attrs["parent_run_id"])
    assert "study_best/trial_number" not in parent.data.metrics  # no feasible best to show


def test_a_slice_that_is_not_an_attribute_is_refused_at_create(tmp_path, synth_root):
    cfg = load_study_file(write_study(tmp_path / "s.toml", synth_root, name="typo",
                                      study_extra='slices = ["Mail", "Young"]'))
    with pytest.raises(DataError, match=r"s\.toml: \[study\] slices names 'Mail', which is not "
                       r"an attribute of .*; did you mean 'Male'\?"):
        create_study(cfg, storage=f"sqlite:///{tmp_path / 'db.db'}",
                     tracking_uri=f"sqlite:///{tmp_path / 'm.db'}")
    assert not (tmp_path / "db.db").exists() or "typo" not in optuna.get_all_study_names(
        storage=f"sqlite:///{tmp_path / 'db.db'}")


def test_trials_that_miss_the_constraints_rank_after_those_that_meet_them():
    """Even with a better value (here the lower val_loss), an infeasible trial is listed after
    the feasible ones and is never the best."""
    study = optuna.create_study(direction="minimize")
    study.set_user_attr("config", {"study": {"metric": "val_loss"}})
    for value, violation in ((0.1, 1.0), (0.5, -1.0), (0.3, 0.0)):
        study.add_trial(optuna.trial.create_trial(
            value=value, system_attrs={"constraints:max_params_m": violation}))
    assert list(leaderboard(study)["trial"]) == [2, 1, 0]
    assert list(leaderboard(study)["feasible"]) == ["yes", "yes", "no: max_params_m"]
    assert require_best_trial(study, "memory").number == 2
