"""Pruning a study of several metrics (issue 26, part 2): the shadow pruner (hpo/shadow.py)
judges a trial's curve of the study's epoch metric as Optuna's own pruner judges a study of
that metric alone. Real Optuna studies; the last test trains real tiny trials with real
MLflow."""

from __future__ import annotations

import io
import math

import optuna
import pandas as pd
import pytest
from click.testing import CliRunner

from celebhpo.cli import cli
from celebhpo.config import load_study_file
from celebhpo.errors import ConfigError
from celebhpo.hpo import create_study, leaderboard, load_study, optimize
from celebhpo.hpo.objective import TrialReporter
from celebhpo.hpo.shadow import CURVE_ATTR, RUNGS_ATTR, curve_of, shadow_pruner
from celebhpo.hpo.space import make_pruner
from tests.helpers import mlflow_runs, write_study

TS = optuna.trial.TrialState
EPOCHS = 9
# val_mean_acc curves in the order the trials run: references first, then mixed ones; None is
# a trial that fails (hyperband picks brackets by trial number: the numbers must line up)
CURVES = [
    [0.60, 0.70, 0.75, 0.80, 0.82, 0.84, 0.85, 0.86, 0.87],
    [0.55, 0.65, 0.72, 0.78, 0.80, 0.81, 0.83, 0.84, 0.85],
    [0.50, 0.50, 0.50, 0.50, 0.50, 0.50, 0.50, 0.50, 0.50],  # learns nothing
    None,
    [0.62, 0.72, 0.78, 0.81, 0.84, 0.86, 0.87, 0.88, 0.89],
    [0.58, 0.60, 0.61, 0.62, 0.63, 0.64, 0.64, 0.65, 0.65],
    [0.40, 0.45, 0.50, 0.52, 0.53, 0.54, 0.55, 0.55, 0.56],
    [0.61, 0.71, 0.76, 0.80, 0.83, 0.85, 0.86, 0.87, 0.88],
    [0.50, 0.52, 0.51, 0.53, 0.52, 0.53, 0.52, 0.53, 0.52],
]
SETTINGS = {"median": "n_startup_trials = 2\nn_warmup_steps = 0",
            "percentile": "n_startup_trials = 2\nn_warmup_steps = 1\npercentile = 40.0",
            "successive_halving": "min_resource = 1\nreduction_factor = 2",
            "hyperband": "min_resource = 1\nreduction_factor = 3"}


def _cfg(tmp_path, pruner: str, metric: str = '["val_mean_acc", "gflops"]'):
    return load_study_file(write_study(tmp_path / "s.toml", tmp_path / "data", pruner=pruner,
                                       epochs=EPOCHS, study_extra=f"metric = {metric}\n"
                                       f"{SETTINGS.get(pruner, '')}"))


def _native(pruner: optuna.pruners.BasePruner, direction: str, curves) -> list:
    """Each curve through Optuna's own report/should_prune in a study of one metric named
    "s": the epoch it was pruned at, None when it completed, "fail" for a failed trial."""
    study = optuna.create_study(study_name="s", direction=direction, pruner=pruner)
    out: list = []
    for curve in curves:
        trial = study.ask()
        if curve is None:
            study.tell(trial, state=TS.FAIL)
            out.append("fail")
            continue
        for epoch, value in enumerate(curve, start=1):
            trial.report(value, epoch)
            if epoch < len(curve) and trial.should_prune():  # as TrialReporter
                study.tell(trial, state=TS.PRUNED)
                out.append(epoch)
                break
        else:
            study.tell(trial, max(curve) if direction == "maximize" else min(curve))
            out.append(None)
    return out


def _shadowed(cfg, curves, cost: float = 1.0) -> tuple[list, optuna.Study]:
    """The same through TrialReporter in a study of the config's several metrics named "s"
    (each trial's second value `cost`)."""
    s = cfg.study
    study = optuna.create_study(study_name="s", directions=s.objective_directions(),
                                pruner=make_pruner(cfg))
    index = s.objective_names().index(s.metric)
    out: list = []
    for curve in curves:
        trial = study.ask()
        if curve is None:
            study.tell(trial, state=TS.FAIL)
            out.append("fail")
            continue
        reporter = TrialReporter(trial, s.metric, s.resolved_direction(), epochs=len(curve),
                                 objectives=s.objective_names())
        assert reporter.shadow is not None and not reporter.report
        try:
            for epoch, value in enumerate(curve, start=1):
                reporter.on_epoch_end(epoch, {"epoch": epoch, s.metric: value})
        except optuna.TrialPruned:
            study.tell(trial, state=TS.PRUNED)
            out.append(reporter.pruned_at)
            continue
        best = max(curve) if s.resolved_direction() == "maximize" else min(curve)
        values = [cost] * len(s.objective_names())
        values[index] = best
        study.tell(trial, values)
        out.append(None)
    return out, study


@pytest.mark.parametrize("pruner", list(SETTINGS))
def test_the_shadow_prunes_as_optuna_prunes_that_metric_alone(tmp_path, pruner):
    cfg = _cfg(tmp_path, pruner)
    native = _native(make_pruner(cfg), "maximize", CURVES)
    shadowed, study = _shadowed(cfg, CURVES)
    assert shadowed == native
    assert any(isinstance(p, int) for p in native), native  # something was judged and pruned
    assert native[2] is not None  # the trial that learns nothing never completes
    for t in study.get_trials(states=(TS.PRUNED, TS.COMPLETE)):  # the curve each one ran
        ran = CURVES[t.number][:shadowed[t.number] or EPOCHS]
        assert curve_of(t) == dict(enumerate(ran, start=1))
    if pruner in ("successive_halving", "hyperband"):  # the rungs went back to the trials
        assert any(t.user_attrs.get(RUNGS_ATTR) for t in study.trials)


@pytest.mark.parametrize("metric, pruned", [('["gflops", "val_loss"]', True),
                                            ('["gflops", "val_mean_acc"]', False)])
def test_the_shadow_judges_the_first_epoch_metric_in_its_direction(tmp_path, metric, pruned):
    # the references hold 0.3 at every epoch and the candidate 0.9: a bad val_loss (minimize)
    # but a good accuracy (maximize); the trials' first value (gflops) plays no part
    cfg = _cfg(tmp_path, "median", metric)
    assert cfg.study.metric == metric.split('"')[3]
    curves = [[0.3] * 3, [0.3] * 3, [0.9] * 3]
    out, study = _shadowed(cfg, curves, cost=0.001)
    assert out == [None, None, 1 if pruned else None]
    assert study.trials[0].values == [0.001, 0.3]


@pytest.mark.filterwarnings("ignore:All-NaN slice:RuntimeWarning")  # Optuna's, on the NaN
def test_a_nan_epoch_is_kept_and_stored_as_none(tmp_path):
    cfg = _cfg(tmp_path, "median")
    out, study = _shadowed(cfg, [[0.6, 0.7], [0.6, 0.7], [math.nan, 0.7]])
    assert out == [None, None, 1]  # Optuna's median pruner prunes a NaN
    assert study.trials[2].user_attrs[CURVE_ATTR] == {"1": None}
    assert math.isnan(curve_of(study.trials[2])[1])


def test_a_resumed_trial_replays_its_curve_and_a_stale_one_is_replaced(tmp_path):
    cfg = _cfg(tmp_path, "median")
    s = cfg.study
    study = optuna.create_study(study_name="s", directions=s.objective_directions(),
                                pruner=make_pruner(cfg))
    trial = study.ask()
    trial.set_user_attr(CURVE_ATTR, {"1": 0.1, "2": 0.1, "3": 0.1})  # an earlier attempt's
    reporter = TrialReporter(trial, s.metric, s.resolved_direction(), epochs=EPOCHS,
                             objectives=s.objective_names())
    reporter.resume = {"history": [{"epoch": 1, "val_mean_acc": 0.6},
                                   {"epoch": 2, "val_mean_acc": 0.7}]}
    reporter.on_fit_start({})
    assert study.trials[0].user_attrs[CURVE_ATTR] == {"1": 0.6, "2": 0.7}
    reporter.on_epoch_end(3, {"epoch": 3, "val_mean_acc": 0.75})
    assert curve_of(study.trials[0]) == {1: 0.6, 2: 0.7, 3: 0.75}


def test_pruner_none_with_several_metrics_reports_nothing(tmp_path):
    cfg = _cfg(tmp_path, "none")
    s = cfg.study
    study = optuna.create_study(directions=s.objective_directions(), pruner=make_pruner(cfg))
    trial = study.ask()
    assert shadow_pruner(trial, s.objective_names(), s.metric, "maximize") is None
    reporter = TrialReporter(trial, s.metric, "maximize", objectives=s.objective_names())
    reporter.on_epoch_end(1, {"epoch": 1, "val_mean_acc": 0.5})
    assert CURVE_ATTR not in study.trials[0].user_attrs and not study.trials[0].intermediate_values


@pytest.mark.parametrize("pruner", list(SETTINGS))
def test_a_pruner_with_no_epoch_curve_to_prune_on_is_one_line(tmp_path, pruner):
    with pytest.raises(ConfigError) as e:
        _cfg(tmp_path, pruner, '["gflops", "latency_ms"]')
    assert str(e.value) == (
        f"{tmp_path / 's.toml'}: [study] pruner = '{pruner}' prunes on an epoch curve, and "
        "metric = ['gflops', 'latency_ms'] has none (gflops, latency_ms are measured once per "
        "trial); add a validation metric (val_loss, val_mean_acc, val_map, val_balanced_acc, "
        "val_mean_acc_reliable, val_worst_group_acc)")


def test_a_two_metric_study_prunes_the_trial_that_learns_nothing(tmp_path, synth_root):
    """Grid order: two learning rates that learn, then one so low that the model stays where
    it started; median pruner, 2 startup trials, no warmup: the third is pruned at epoch 1,
    shows as pruned everywhere and is never on the front."""
    storage, uri = f"sqlite:///{tmp_path / 's.db'}", f"sqlite:///{tmp_path / 'm.db'}"
    cfg = load_study_file(write_study(
        tmp_path / "p.toml", synth_root, name="mp", pruner="median", epochs=2,
        space="lr = [0.03, 0.01, 1e-9]", study_extra='metric = ["val_mean_acc", "gflops"]\n'
        "n_startup_trials = 2\nn_warmup_steps = 0"))
    create_study(cfg, storage=storage, grid=True, tracking_uri=uri)
    optimize(study_name="mp", storage=storage, tracking_uri=uri, progress=False)
    study = load_study("mp", storage)[0]
    by_lr = {t.params["lr"]: t for t in study.trials}
    bad = by_lr[1e-9]
    assert [by_lr[lr].state for lr in (0.03, 0.01, 1e-9)] == [TS.COMPLETE, TS.COMPLETE,
                                                              TS.PRUNED]
    assert bad.user_attrs["pruned_at"] == 1 and bad.user_attrs["epochs_run"] == 1
    assert list(curve_of(bad)) == [1] and bad.values is None
    assert all(list(curve_of(by_lr[lr])) == [1, 2] for lr in (0.03, 0.01))
    board = leaderboard(study).set_index("trial")
    assert board.loc[bad.number, "note"] == "pruned at epoch 1"
    assert board.loc[bad.number, "pareto"] == ""
    run = mlflow_runs(uri, "mp")[bad.number]
    assert run.info.status == "KILLED" and run.data.tags["state"] == "PRUNED"
    assert run.data.tags["pruned_at_epoch"] == "1"
    common = ["--storage", storage]
    front = CliRunner().invoke(cli, ["study", "show", "mp", "--pareto", "--format", "csv",
                                     *common])
    assert front.exit_code == 0, front.output
    shown = set(pd.read_csv(io.StringIO(front.output))["trial"])
    assert shown and bad.number not in shown
    assert shown == {t.number for t in study.best_trials}
    every = CliRunner().invoke(cli, ["study", "show", "mp", *common])
    assert every.exit_code == 0, every.output
    line = next(ln for ln in every.output.splitlines() if "PRUNED" in ln)
    assert "pruned at epoch 1" in line
