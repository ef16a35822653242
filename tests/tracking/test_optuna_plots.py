"""The parent's Optuna plots on a real study (Optuna's own samplers and storage, in memory and
in SQLite under tmp_path) with a diverging trial and pruned ones: the intermediate-values plot
clips its y axis and says so (PNG and HTML), and parallel coordinates include the pruned
trials, marked. Every assertion reads the produced figure object."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import optuna  # noqa: E402
import pytest  # noqa: E402

from celebhpo.tracking import plots  # noqa: E402
from celebhpo.tracking.optuna_plots import (  # noqa: E402
    STATE_PARAM,
    clip_range,
    optuna_figure,
    plotly_figure,
    with_pruned,
)

GRID = {"arch": ["resnet50", "densenet121"], "lr": [0.001, 0.01]}
DIVERGING = 34.4  # resnet50 at lr 0.01, epoch 1: the value that flattened the plot


def _curve(arch: str, lr: float, diverge: bool) -> list[float]:
    if diverge and (arch, lr) == ("resnet50", 0.01):
        return [DIVERGING, 1.9]
    start = 0.6 + (0.05 if arch == "densenet121" else 0.0) + (0.25 if lr == 0.01 else 0.0)
    return [start - 0.1 * e for e in range(3)]


def _study(storage=None, *, diverge: bool = True) -> optuna.Study:
    """The demo's grid in miniature: trials at lr 0.01 are pruned after two epochs."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=storage, sampler=optuna.samplers.GridSampler(GRID, seed=0))
    with pytest.warns(optuna.exceptions.ExperimentalWarning):
        study.set_metric_names(["val_loss"])

    def objective(trial: optuna.Trial) -> float:
        arch = trial.suggest_categorical("arch", GRID["arch"])
        lr = trial.suggest_categorical("lr", GRID["lr"])
        curve = _curve(arch, lr, diverge)
        for epoch, value in enumerate(curve[:2], start=1):
            trial.report(value, epoch)
        if lr == 0.01:
            raise optuna.TrialPruned()
        trial.report(curve[2], 3)
        return curve[2]

    study.optimize(objective, n_trials=4)
    return study


def test_a_diverging_trial_no_longer_flattens_the_intermediate_values(tmp_path):
    study = _study(f"sqlite:///{tmp_path / 'optuna.db'}")
    others = [v for t in study.trials for v in t.intermediate_values.values() if v != DIVERGING]
    assert DIVERGING in [v for t in study.trials for v in t.intermediate_values.values()]

    fig = optuna_figure(study, "intermediate_values")
    try:
        ax = fig.axes[0]
        low, high = ax.get_ylim()
        assert low <= min(others) and max(others) <= high < 5  # 34.4 is off the axis
        assert high - low < 2 * (max(others) - min(others))  # the others fill it
        assert "clipped" in ax.get_title() and "4x the others' span" in ax.get_title()
        assert ax.get_ylabel() == "val_loss" and ax.get_xlabel() == "epoch"
        assert any(t.get_text() == "34.4" for t in ax.texts)  # its value, at the edge
    finally:
        plt.close(fig)

    html_fig = plotly_figure(study, "intermediate_values")
    low, high = html_fig.layout.yaxis.range
    assert low <= min(others) and max(others) <= high < 5
    assert "clipped" in html_fig.layout.title.text

    png = plots.optuna_png(study, "intermediate_values", tmp_path / "iv.png")
    html = plots.optuna_report_html(study, {"intermediate_values": "Intermediate values"},
                                    tmp_path / "report.html").read_text()
    assert png.stat().st_size > 0 and "y axis clipped to" in html


def test_without_an_outlier_the_axis_holds_every_value():
    study = _study(diverge=False)
    values = [v for t in study.trials for v in t.intermediate_values.values()]
    fig = optuna_figure(study, "intermediate_values")
    try:
        low, high = fig.axes[0].get_ylim()
        assert low <= min(values) and max(values) <= high
        assert "clipped" not in fig.axes[0].get_title()
    finally:
        plt.close(fig)
    assert "clipped" not in plotly_figure(study, "intermediate_values").layout.title.text


def test_parallel_coordinates_include_pruned_trials_marked():
    study = _study()
    states = {t.state.name for t in study.trials}
    assert states == {"COMPLETE", "PRUNED"}  # both lrs of complete trials: only 0.001

    fig = plotly_figure(study, "parallel_coordinate")
    lines = [dict(map(tuple, t.customdata)) for t in fig.data if t.customdata is not None]
    assert len(lines) == len(study.trials) == 4  # one line per trial, pruned ones included
    assert {line["lr"] for line in lines} == {"0.001", "0.01"}
    assert sorted(line[STATE_PARAM] for line in lines) == ["complete"] * 2 + ["pruned"] * 2
    assert all(line[STATE_PARAM] == ("pruned" if line["lr"] == "0.01" else "complete")
               for line in lines)
    assert "2 pruned trial(s) included" in fig.layout.title.text

    mpl = optuna_figure(study, "parallel_coordinate")
    try:
        ax = mpl.axes[0]
        [collection] = ax.collections
        assert len(collection.get_segments()) == 4
        ticks = {t.get_text() for a in mpl.axes for t in a.get_yticklabels()}
        assert {"pruned", "complete", "0.001", "0.01"} <= ticks
        assert "pruned trial(s) included" in ax.get_title()
    finally:
        plt.close(mpl)


def test_pruned_trials_of_a_constrained_study_are_not_drawn_infeasible():
    study = optuna.create_study(storage=optuna.storages.InMemoryStorage())
    lr = optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)
    for value, limit in ((0.4, 0.0), (0.5, 1.0)):  # the second breaks its constraint
        study.add_trial(optuna.trial.create_trial(
            value=value, params={"lr": 1e-3 * (1 + value)}, distributions={"lr": lr},
            intermediate_values={1: value}, constraints={"latency": limit}))
    study.add_trial(optuna.trial.create_trial(
        state=optuna.trial.TrialState.PRUNED, params={"lr": 0.05}, distributions={"lr": lr},
        intermediate_values={1: 0.9}))
    drawn, n_pruned = with_pruned(study)
    assert n_pruned == 1
    assert [(t.params[STATE_PARAM], t.value, t.constraints) for t in drawn.trials] == [
        ("complete", 0.4, {"latency": 0.0}), ("complete", 0.5, {"latency": 1.0}),
        ("pruned", 0.9, {"latency": 0.0})]
    assert with_pruned(_study(diverge=False))[1] == 2
    no_pruned = optuna.create_study(storage=optuna.storages.InMemoryStorage())
    assert with_pruned(no_pruned) == (no_pruned, 0)


def test_clip_range_leaves_out_only_a_few_values_that_flatten_the_rest():
    # ten epochs per trial, steadily down: nothing stretches the axis
    assert clip_range([2.0 - 0.17 * e for e in range(10)] * 3) is None
    assert clip_range([0.5, 0.4, 0.3, math.nan, 34.4]) is None  # under 5 finite values
    low, high = clip_range([*np.linspace(0.3, 0.7, 20), 34.4])
    assert low < 0.3 and 0.7 < high < 0.75
    low, high = clip_range([*np.linspace(0.3, 0.7, 18), 20.0, 34.4])  # two diverged
    assert low < 0.3 and 0.7 < high < 0.75
    low, high = clip_range([*np.linspace(0.80, 0.86, 20), 0.02])  # an accuracy that collapsed
    assert 0.02 < low < 0.8 and high > 0.86
    # a spread-out study: the widest few stretch the axis under 4x, so no clipping
    assert clip_range([*np.linspace(0.3, 0.7, 20), 1.2, 1.6]) is None
