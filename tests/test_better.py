"""One "better in this direction" (objectives.better) and the places that rank by it: the
best epoch (training), the best trial (hpo and the MLflow parent run), the best reported
value of a pruned trial and the leaderboard's order, the per-trial best epoch."""

from __future__ import annotations

import math

import optuna
import pytest

from celebhpo.hpo import best_trial, leaderboard
from celebhpo.hpo.objective import TrialReporter
from celebhpo.objectives import best_of, better
from celebhpo.tracking.summary import best_trial as parent_best_trial
from celebhpo.training.metrics import better_row

NAN = math.nan


@pytest.mark.parametrize(("a", "b", "direction", "expected"), [
    (0.1, 0.2, "minimize", True), (0.2, 0.1, "minimize", False),
    (0.2, 0.1, "maximize", True), (0.1, 0.2, "maximize", False),
    (0.3, 0.3, "minimize", False), (0.3, 0.3, "maximize", False),  # a tie is not better
    (NAN, 0.3, "minimize", False), (NAN, 0.3, "maximize", False),  # NaN never beats
    (0.3, NAN, "minimize", True), (0.3, NAN, "maximize", True),  # any number beats NaN
    (NAN, NAN, "maximize", False),
    (-math.inf, 0.0, "minimize", True), (1, 0.5, "maximize", True),  # ints are numbers too
])
def test_better(a, b, direction, expected):
    assert better(a, b, direction) is expected


def test_better_refuses_an_unknown_direction():
    with pytest.raises(ValueError, match="direction must be 'minimize' or 'maximize'"):
        better(1.0, 2.0, "min")


def test_best_of_keeps_the_first_of_ties_and_passes_over_nan():
    assert best_of([0.4, 0.2, 0.2, 0.9], "minimize") == 0.2
    rows = [{"e": 1, "v": NAN}, {"e": 2, "v": 0.7}, {"e": 3, "v": 0.7}]
    assert best_of(rows, "maximize", key=lambda r: r["v"])["e"] == 2
    assert math.isnan(best_of([NAN, NAN], "minimize"))
    with pytest.raises(ValueError):
        best_of([], "minimize")


def test_the_best_epoch_rule_of_fit():
    better_epoch = better_row("val_map", "maximize")
    assert better_epoch({"val_map": 0.6}, {"val_map": NAN})
    assert not better_epoch({"val_map": NAN}, {"val_map": 0.1})
    assert not better_epoch({"val_map": 0.6}, {"val_map": 0.6})  # the earlier epoch stays


def _study(direction: str) -> optuna.Study:
    """Trials 0-2 COMPLETE at 0.5, 0.2, 0.5 (a tie with trial 0), trial 3 PRUNED after
    reporting 0.9 then 0.3, trial 4 PRUNED with a NaN report first."""
    study = optuna.create_study(direction=direction)
    dist = {"lr": optuna.distributions.FloatDistribution(1e-6, 1.0, log=True)}
    for i, (state, value, reported) in enumerate([
            ("COMPLETE", 0.5, {}), ("COMPLETE", 0.2, {}), ("COMPLETE", 0.5, {}),
            ("PRUNED", None, {1: 0.9, 2: 0.3}), ("PRUNED", None, {1: NAN, 2: 0.6})]):
        study.add_trial(optuna.trial.create_trial(
            params={"lr": 10.0 ** -(i + 1)}, distributions=dist,
            state=optuna.trial.TrialState[state], value=value, intermediate_values=reported))
    return study


def test_the_best_trial_is_the_same_everywhere_with_the_first_of_ties():
    low, high = _study("minimize"), _study("maximize")
    assert best_trial(low).number == parent_best_trial(low).number == 1
    assert best_trial(high).number == parent_best_trial(high).number == 0  # 0 and 2 tie


def test_the_leaderboard_ranks_by_the_same_rule():
    board = leaderboard(_study("minimize"))
    assert list(board["trial"]) == [1, 0, 2, 3, 4]  # ties by trial number; pruned after
    assert list(board["value"])[3:] == [0.3, 0.6]  # a pruned trial's best report, NaN passed over
    board = leaderboard(_study("maximize"))
    assert list(board["trial"]) == [0, 2, 1, 3, 4]
    assert list(board["value"])[3:] == [0.9, 0.6]


def test_the_trial_reporter_picks_the_first_best_epoch():
    study = optuna.create_study(direction="maximize")
    reporter = TrialReporter(study.ask(), "val_map", "maximize", report=False)
    for epoch, value in enumerate([NAN, 0.4, 0.7, 0.7, 0.1], start=1):
        reporter.on_epoch_end(epoch, {"epoch": epoch, "val_map": value})
    assert reporter.summary()["best_epoch"] == 3
