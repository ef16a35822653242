"""Optuna's plots of a study, as the parent run logs them: each a PNG (Optuna's matplotlib
drawing) and all in one offline HTML page (its plotly ones), adjusted for what a study shows:

- intermediate values: one diverging trial (an epoch-1 val_loss of 34.4 beside values near
  0.5) squashed every other curve to the floor. When a few values stretch the axis over 4x
  the span of all the others, the y axis is clipped to the others' range (`clip_range`), the
  plot's title says so and the values left out are drawn at the edge with their numbers.
- parallel coordinates: Optuna draws COMPLETE trials only, so a grid whose pruned trials held
  the other lr showed one lr. Pruned trials are drawn too, at the value they last reported,
  with a `trial state` axis (complete / pruned) that marks them.

Optuna's matplotlib plots draw through pyplot: `optuna_figure`'s caller closes the figure.
"""

from __future__ import annotations

import html
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState

__all__ = ["STATE_PARAM", "clip_range", "optuna_figure", "optuna_png", "optuna_report_html",
           "plotly_figure", "with_pruned"]

STATE_PARAM = "trial state"  # the parallel-coordinates axis that marks pruned trials
_STRETCH = 4.0  # clip when a few values need an axis over 4x the span of the others


def clip_range(values: Any) -> tuple[float, float] | None:
    """(low, high) for a y axis that leaves out the few values that flatten the rest, or None.

    Values are left out from either end, one at a time, whichever end narrows the span more:
    at most 10% of them (two at least). They flatten the rest when the span of all is over
    `_STRETCH` times the span of the others (an epoch-1 loss of 34.4 among values 0.4-1.9
    does); the fewest that do are left out, and one more while that narrows the span over
    `_STRETCH` times again (a second diverged trial). The range returned is the span of the
    others plus 5% on each side. Non-finite values are ignored; under 5 are never clipped."""
    v = np.sort(np.asarray(values, dtype=float).ravel())
    v = v[np.isfinite(v)]
    if v.size < 5 or v[-1] == v[0]:
        return None
    few = min(max(2, int(np.ceil(0.1 * v.size))), v.size - 3)
    bounds = [(0, v.size - 1)]  # (first kept, last kept) after leaving out 0, 1, ... values
    for _ in range(few):
        b, t = bounds[-1]
        bounds.append(min((b + 1, t), (b, t - 1), key=lambda k: v[k[1]] - v[k[0]]))
    spans = [v[t] - v[b] for b, t in bounds]
    m = next((i for i, s in enumerate(spans) if s * _STRETCH < spans[0]), None)
    if m is None:
        return None
    while m < few and spans[m + 1] * _STRETCH < spans[m]:
        m += 1
    low, high = v[bounds[m][0]], v[bounds[m][1]]
    pad = 0.05 * (high - low) or 0.05 * max(abs(high), 1e-12)
    return float(low - pad), float(high + pad)


def with_pruned(study: optuna.Study) -> tuple[optuna.Study, int]:
    """(a study to draw parallel coordinates from, how many pruned trials it adds). When
    `study` has pruned trials that reported a value: an in-memory copy whose COMPLETE trials
    keep their value, whose pruned trials count as complete at their last reported value, and
    where every trial has the categorical param `trial state`. Else `study` itself and 0.
    Complete trials keep their constraints (Optuna draws an infeasible one dotted); a pruned
    one, never judged, counts as feasible."""
    pruned = [t for t in study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))
              if t.intermediate_values]
    if not pruned or len(study.directions) != 1:
        return study, 0
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    storage = optuna.storages.InMemoryStorage()  # not create_study: it logs at INFO
    storage.create_new_study(directions=list(study.directions), study_name=study.study_name)
    copy = optuna.Study(study_name=study.study_name, storage=storage)
    state = CategoricalDistribution(("complete", "pruned"))
    unjudged = {k: 0.0 for t in complete for k in t.constraints}
    copy.add_trials([optuna.trial.create_trial(
        state=TrialState.COMPLETE,
        value=t.value if t.state == TrialState.COMPLETE
        else t.intermediate_values[max(t.intermediate_values)],
        params={**t.params, STATE_PARAM: t.state.name.lower()},
        distributions={**t.distributions, STATE_PARAM: state},
        constraints=t.constraints or unjudged or None,
    ) for t in sorted([*complete, *pruned], key=lambda t: t.number)])
    return copy, len(pruned)


def _metric(study: optuna.Study) -> str:
    names = study.metric_names if len(study.directions) == 1 else None
    return names[0] if names else "objective value"


def optuna_figure(study: optuna.Study, kind: str) -> Any:
    """Optuna's `plot_<kind>` drawn by optuna.visualization.matplotlib, adjusted (see the
    module docstring): a pyplot Figure, which the caller closes."""
    import matplotlib

    if matplotlib.get_backend().lower() not in ("agg", "pdf", "svg", "cairo"):
        matplotlib.use("Agg")  # a worker has no display
    # Optuna's experimental notes and matplotlib's cosmetic ones (a flat curve's "identical
    # low and high ylims") would print on every worker after every trial
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        metric = _metric(study)
        draw = getattr(optuna.visualization.matplotlib, f"plot_{kind}")
        if kind == "parallel_coordinate":
            drawn_from, n_pruned = with_pruned(study)
            drawn = draw(drawn_from, target_name=metric)
            if n_pruned:
                drawn.set_title(f"Parallel coordinates: {n_pruned} pruned trial(s) included, "
                                f"at their last reported {metric} ('{STATE_PARAM}' axis)",
                                y=1.03)
        else:
            drawn = draw(study)
        axes = np.ravel(drawn) if isinstance(drawn, np.ndarray) else [drawn]
        fig = axes[0].figure
        try:
            if kind == "intermediate_values":
                _clip_axes(axes[0], metric)
            fig.set_size_inches(max(fig.get_size_inches()[0], 8),
                                max(fig.get_size_inches()[1], 5))
        except BaseException:
            import matplotlib.pyplot as plt

            plt.close(fig)  # Optuna drew it through pyplot's registry
            raise
    return fig


def _clip_axes(ax: Any, metric: str) -> None:
    """Label the intermediate-values axes; clip y to `clip_range`, the clipped points drawn
    at the edge (a triangle and the value) and the title saying so."""
    ax.set(xlabel="epoch", ylabel=metric)
    lines = ax.get_lines()
    rng = clip_range(np.concatenate([np.asarray(ln.get_ydata(), float) for ln in lines])
                     if lines else [])
    if rng is None:
        ax.set_title(f"Intermediate values ({metric} per epoch)")
        return
    lo, hi = rng
    ax.set_ylim(lo, hi)
    outside = [(x, y, ln.get_color()) for ln in lines
               for x, y in zip(ln.get_xdata(), ln.get_ydata(), strict=True)
               if np.isfinite(y) and not lo <= y <= hi]
    for x, y, colour in outside:
        edge, marker, dy = (hi, "^", -12) if y > hi else (lo, "v", 6)
        ax.scatter([x], [edge], marker=marker, s=60, color=colour, clip_on=False, zorder=4)
        ax.annotate(f"{y:.3g}", (x, edge), xytext=(6, dy), textcoords="offset points",
                    fontsize=8, annotation_clip=False)
    ax.set_title(f"Intermediate values ({metric} per epoch); y axis clipped to "
                 f"[{lo:.3g}, {hi:.3g}]:\n{len(outside)} value(s) that stretched it over "
                 f"{_STRETCH:g}x the others' span drawn at the edge", fontsize=10)


def optuna_png(study: optuna.Study, kind: str, path: str | Path) -> Path:
    """`optuna_figure(study, kind)` saved as a PNG (renders anywhere, offline)."""
    import matplotlib.pyplot as plt

    fig = optuna_figure(study, kind)
    try:
        fig.savefig(path, dpi=100, bbox_inches="tight")
    finally:
        plt.close(fig)
    return Path(path)


def plotly_figure(study: optuna.Study, kind: str) -> Any:
    """Optuna's plotly `plot_<kind>`, adjusted as `optuna_figure`."""
    metric = _metric(study)
    draw = getattr(optuna.visualization, f"plot_{kind}")
    if kind == "parallel_coordinate":
        drawn_from, n_pruned = with_pruned(study)
        fig = draw(drawn_from, target_name=metric)
        if n_pruned:
            fig.update_layout(title=f"Parallel coordinates: {n_pruned} pruned trial(s) "
                                    f"included, at their last reported {metric} "
                                    f"('{STATE_PARAM}' axis)")
        return fig
    fig = draw(study)
    if kind == "intermediate_values":
        _clip_plotly(fig, metric)
    return fig


def _clip_plotly(fig: Any, metric: str) -> None:
    fig.update_layout(xaxis_title="epoch", yaxis_title=metric,
                      title=f"Intermediate values ({metric} per epoch)")
    ys = [np.asarray(t.y, dtype=float) for t in fig.data if t.y is not None]
    rng = clip_range(np.concatenate(ys) if ys else [])
    if rng is None:
        return
    lo, hi = rng
    outside = [(x, y, t.name) for t in fig.data for x, y in zip(t.x, t.y, strict=True)
               if np.isfinite(y) and not lo <= y <= hi]
    fig.add_scatter(x=[x for x, _, _ in outside], y=[hi if y > hi else lo for _, y, _ in outside],
                    mode="markers+text", cliponaxis=False, name="off the axis",
                    marker={"symbol": ["triangle-up" if y > hi else "triangle-down"
                                       for _, y, _ in outside], "size": 11, "color": "black"},
                    text=[f"{y:.3g}" for _, y, _ in outside], textposition="middle right",
                    hovertext=[f"{name}: {y:.4g}" for _, y, name in outside])
    fig.update_yaxes(range=[lo, hi])
    fig.update_layout(title=f"Intermediate values ({metric} per epoch); y axis clipped to "
                            f"[{lo:.3g}, {hi:.3g}]: {len(outside)} value(s) that stretched it "
                            f"over {_STRETCH:g}x the others' span drawn at the edge "
                            "(autoscale shows all)")


def optuna_report_html(study: optuna.Study, kinds: dict[str, str], path: str | Path) -> Path:
    """One self-contained HTML page with the plotly plots `kinds` ({kind: heading}):
    plotly.js inlined once, in the first figure, so it renders offline (no CDN)."""
    parts = [f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>"
             f"{html.escape(study.study_name)}: Optuna plots</title></head><body>"
             f"<h1>Study {html.escape(study.study_name)}</h1>"]
    inlined = False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        for kind, heading in kinds.items():
            fig = plotly_figure(study, kind)
            parts.append(f"<h2>{html.escape(heading)}</h2>")
            parts.append(fig.to_html(full_html=False, include_plotlyjs=not inlined))
            inlined = True
    parts.append("</body></html>")
    Path(path).write_text("\n".join(parts), encoding="utf-8")
    return Path(path)
