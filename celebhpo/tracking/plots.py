"""Matplotlib figures logged to MLflow: a trial's training curves, the study's F1 heatmap, a
multi-objective study's Pareto plot; Optuna's plots (PNG and the HTML report) come from
optuna_plots.py, re-exported here.

Figures are built with `matplotlib.figure.Figure` (no pyplot), so no global backend or
figure registry is touched and nothing leaks between trials or threads. Matplotlib is imported
where a figure is drawn: at the top it measured +0.25 s on `import celebhpo.hpo` (every study
command), and only a finished trial draws.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import optuna

from celebhpo.tracking.names import trial_run_name
from celebhpo.tracking.optuna_plots import optuna_png, optuna_report_html

__all__ = ["f1_heatmap", "f1_heatmap_from_study", "optuna_png", "optuna_report_html",
           "pareto_plot", "training_curves"]


def training_curves(history: list[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Loss and mean accuracy per epoch, train vs val, as a PNG (two panels)."""
    from matplotlib.figure import Figure  # late: start-up cost, see the module docstring

    if not history:
        raise ValueError("no epochs in the history")
    epochs = [h["epoch"] for h in history]
    fig = Figure(figsize=(9, 3.6), layout="constrained")
    loss_ax, acc_ax = fig.subplots(1, 2)
    for key, label in (("train_loss", "train"), ("val_loss", "val")):
        if any(key in h for h in history):
            loss_ax.plot(epochs, [h.get(key, np.nan) for h in history], marker="o", label=label)
    loss_ax.set(xlabel="epoch", ylabel="loss", title="loss")
    for key, label in (("train_mean_acc", "train"), ("val_mean_acc", "val")):
        if any(key in h for h in history):
            acc_ax.plot(epochs, [h.get(key, np.nan) for h in history], marker="o", label=label)
    acc_ax.set(xlabel="epoch", ylabel="mean accuracy", title="mean accuracy (40 attributes)")
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
        ax.xaxis.get_major_locator().set_params(integer=True)
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=100)
    return Path(path)


def f1_heatmap(f1: np.ndarray, attributes: list[str], trial_labels: list[str],
               path: str | Path, title: str = "F1 per attribute (tuned thresholds)") -> Path:
    """`f1` (n_attributes, n_trials) in [0, 1], NaN where unknown: attributes down, trials
    across, so which model learned which attributes shows at a glance."""
    from matplotlib.figure import Figure  # late: start-up cost, see the module docstring

    f1 = np.asarray(f1, dtype=float)
    if f1.ndim != 2 or f1.shape != (len(attributes), len(trial_labels)) or f1.size == 0:
        raise ValueError(f"F1 matrix of shape {f1.shape} does not match "
                         f"{len(attributes)} attributes x {len(trial_labels)} trials")
    width = min(3 + 0.45 * len(trial_labels), 40)
    fig = Figure(figsize=(width, 0.22 * len(attributes) + 1.8), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(np.ma.masked_invalid(f1), aspect="auto", cmap="viridis", vmin=0, vmax=1,
                      interpolation="nearest")
    ax.set_yticks(range(len(attributes)), attributes, fontsize=7)
    ax.set_xticks(range(len(trial_labels)), trial_labels, rotation=90, fontsize=7)
    ax.set(xlabel="trial", title=title)
    fig.colorbar(image, ax=ax, label="F1")
    fig.savefig(path, dpi=100)
    return Path(path)


def pareto_plot(points: list[dict[str, Any]], metrics: tuple[str, str],
                directions: tuple[str, str], path: str | Path, title: str, *,
                front: list[int]) -> Path:
    """Every completed trial as a dot (x = metrics[1], e.g. latency, y = metrics[0], e.g.
    accuracy), the non-dominated ones (`front`, indices into `points`) highlighted, joined by a
    step line and labelled "#number label"; infeasible points hollow and grey. A point is
    {"number": int, "values": [v0, v1], "label": str (optional), "feasible": bool (optional)}.
    """
    from matplotlib.figure import Figure  # late: start-up cost, see the module docstring

    if not points:
        raise ValueError("no completed trials to plot")
    if any(len(p["values"]) != 2 for p in points) or len(metrics) != 2:
        raise ValueError("a Pareto plot needs exactly two metrics, and two values per point")
    if len(directions) != 2 or not set(directions) <= {"minimize", "maximize"}:
        raise ValueError(f"directions must be two of 'minimize'/'maximize', got {directions!r}")
    if any(not 0 <= i < len(points) for i in front):
        raise ValueError(f"front indices {front} out of range for {len(points)} points")
    xs = np.array([float(p["values"][1]) for p in points])
    ys = np.array([float(p["values"][0]) for p in points])
    feasible = np.array([p.get("feasible", True) is not False for p in points])
    on_front = np.zeros(len(points), dtype=bool)
    on_front[list(front)] = True
    fig = Figure(figsize=(8, 5.5), layout="constrained")
    ax = fig.subplots()
    groups = {  # label: (mask, style); an empty group is drawn without a legend entry
        "trial": (~on_front & feasible, {"s": 28, "color": "tab:blue", "alpha": 0.6}),
        "infeasible": (~on_front & ~feasible, {"s": 28, "facecolors": "none",
                                               "edgecolors": "grey"}),
        "Pareto front": (on_front & feasible, {"s": 70, "color": "tab:red", "zorder": 3}),
        "Pareto front (infeasible)": (on_front & ~feasible, {
            "s": 70, "facecolors": "none", "edgecolors": "tab:red", "zorder": 3}),
    }
    for label, (mask, style) in groups.items():
        ax.scatter(xs[mask], ys[mask], label=label if mask.any() else "_", **style)
    # the staircase bounds what the front attains: a minimized x holds each y until the next
    # point (post); a maximized x reaches each y from the previous one (pre)
    order = sorted(front, key=lambda i: (xs[i], ys[i]))
    ax.step(xs[order], ys[order], where="post" if directions[1] == "minimize" else "pre",
            color="tab:red", alpha=0.7, zorder=2)
    for i in order:
        text = f"#{points[i]['number']}" + (f" {points[i]['label']}" if points[i].get("label")
                                            else "")
        ax.annotate(text, (xs[i], ys[i]), xytext=(5, 5), textcoords="offset points", fontsize=8)
    better = {"minimize": "lower is better", "maximize": "higher is better"}
    ax.set(xlabel=f"{metrics[1]} ({better[directions[1]]})",
           ylabel=f"{metrics[0]} ({better[directions[0]]})", title=title)
    ax.margins(x=0.12, y=0.08)  # room for the labels of the outermost points
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.savefig(path, dpi=100)
    return Path(path)


def f1_heatmap_from_study(study: optuna.Study, path: str | Path) -> Path:
    """The heatmap over the study's COMPLETE trials, from each trial's user attr
    `f1_by_attribute` ({attribute: F1}, or a list in celebhpo.data.ATTRIBUTES order)."""
    trials = [t for t in study.get_trials(deepcopy=False,
                                          states=(optuna.trial.TrialState.COMPLETE,))
              if t.user_attrs.get("f1_by_attribute")]
    if not trials:
        raise ValueError("no completed trial has f1_by_attribute yet")
    columns = [_as_mapping(t.user_attrs["f1_by_attribute"]) for t in trials]
    attributes = list(columns[0])
    for col in columns[1:]:
        attributes += [a for a in col if a not in attributes]
    f1 = np.array([[col.get(a, np.nan) for col in columns] for a in attributes], dtype=float)
    labels = [trial_run_name(t.number, t.params) for t in trials]  # every searched param
    return f1_heatmap(f1, attributes, labels, path)


def _as_mapping(value: Any) -> dict[str, float]:
    if isinstance(value, dict):
        return {str(k): np.nan if v is None else float(v) for k, v in value.items()}
    # late: importing celebhpo.data loads torch (+2-3 s measured on `import celebhpo.tracking`),
    # and only this list form needs the names
    from celebhpo.data.layouts import ATTRIBUTES

    values = list(value)
    if len(values) != len(ATTRIBUTES):
        raise ValueError(f"f1_by_attribute has {len(values)} values, expected {len(ATTRIBUTES)}")
    return {a: np.nan if v is None else float(v) for a, v in zip(ATTRIBUTES, values, strict=True)}
