"""Turning results into text for people: tables, CSV, JSON. No computation happens here.

The presentation layer: library functions return dataclasses, and only cli.py and demo.py
turn them into text, through the functions below. Nothing under a package folder imports
this module (tests/test_layout.py checks).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd

from celebhpo.data.quality import shown_name

if TYPE_CHECKING:
    from celebhpo.config import StudyConfig
    from celebhpo.export import ExportResult
    from celebhpo.hpo import FinishedTrial, OptimizeSummary
    from celebhpo.hpo.retry import GivenUp
    from celebhpo.inference import Evaluation, PredictionResult, RetrievalResult
    from celebhpo.training.loop import FitResult


def format_table(df: pd.DataFrame, fmt: str = "table", floatfmt: str = "{:.4g}") -> str:
    """`table` (aligned, for a terminal), `csv` or `json` (records)."""
    if fmt == "csv":
        return df.to_csv(index=False).rstrip("\n")
    if fmt == "json":  # pandas escapes every "/" as "\/" (valid JSON, but paths unreadable);
        # a "\/" is always pandas' escape: a backslash of the text is written "\\"
        return df.to_json(orient="records", indent=2).replace("\\/", "/")
    if df.empty:
        return "(empty)"
    # missing values print as "-" (to_string leaves <NA> in nullable int columns as is)
    ints = [c for c in df.columns if isinstance(df[c].dtype, pd.Int64Dtype)]
    shown = df.astype({c: object for c in ints})
    for c in ints:
        shown[c] = shown[c].where(df[c].notna(), "-")
    return shown.to_string(index=False, float_format=lambda v: floatfmt.format(v), na_rep="-")


def format_metrics(metrics: dict[str, Any], keys: list[str] | None = None) -> str:
    keys = keys or [k for k, v in metrics.items() if isinstance(v, int | float)]
    width = max(len(k) for k in keys)
    return "\n".join(f"{k:<{width}}  {metrics[k]:.4f}" for k in keys if k in metrics)


def format_inspect(report: dict[str, Any]) -> str:
    """The human view of `celebhpo data inspect`."""
    lines = [f"{report['root']}  ({report['layout']} layout)"]
    lines.append(
        "images: " + ", ".join(f"{k} {v}" for k, v in report["split_counts"].items())
    )
    rates = pd.DataFrame(report["attributes"])
    lines.append("")
    lines.append(format_table(rates, "table", "{:.3f}"))
    for key in ("plots",):
        for path in report.get(key, []):
            lines.append(f"plot: {path}")
    return "\n".join(lines)


# -- training ---------------------------------------------------------------------------------
def format_training(cfg: StudyConfig, result: FitResult,
                    skipped: Sequence[tuple[str, str]] = ()) -> str:
    """`celebhpo train`: the configuration, the epoch table, the best epoch's metrics, the
    images skipped, the checkpoint."""
    t = cfg.train
    lines = [f"{t.arch}  lr={t.lr:g}  dropout={t.dropout:g}  features={t.num_features}  "
             f"on {result.device}", "epoch  train_loss  val_loss  val_mean_acc  val_map  images/s"]
    lines += [f"{h['epoch']:>5}  {h['train_loss']:>10.4f}  {h['val_loss']:>8.4f}  "
              f"{h['val_mean_acc']:>12.4f}  {h['val_map']:>7.4f}  {h['images_per_s']:>8.0f}"
              for h in result.history]
    metric = cfg.study.metric
    how = "lowest" if cfg.study.resolved_direction() == "minimize" else "highest"
    if result.stopped_early:
        lines.append(f"stopped early: no better {metric} for {t.patience} epochs "
                     "([train] patience)")
    lines += [f"best epoch {result.best_epoch} ({how} {metric}); validation, thresholds at "
              f"0.5 unless named val_tuned_ (tuned for {t.threshold_metric}):",
              format_metrics(result.best_metrics)]
    if skipped:
        lines.append(f"skipped {len(skipped)} unreadable images: "
                     + ", ".join(n for n, _ in skipped[:5]))
    if result.checkpoint_path:
        lines.append(f"checkpoint: {result.checkpoint_path}")
    return "\n".join(lines)


# -- studies ----------------------------------------------------------------------------------
def _assignments(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in params.items())


def _worker(label: str) -> str:
    """The `[gpu1] ` before a `--devices` worker's lines; nothing for a lone worker."""
    return f"[{label}] " if label else ""


def format_trial_line(t: FinishedTrial) -> str:
    """A worker's line as a trial ends, e.g.
    `trial 3 COMPLETE val_loss=0.6931 lr=0.003  2 epochs, 4.1 s`. A study of several metrics
    gives lists of names and values."""
    if t.state == "COMPLETE":
        names = t.metric if isinstance(t.metric, list) else [t.metric]
        values = t.value if isinstance(t.value, list | tuple) else [t.value]
        what = " ".join(f"{m}={v:.4f}" for m, v in zip(names, values, strict=True))
        if t.violated:
            what += f" (infeasible: misses {', '.join(t.violated)})"
    elif t.state == "PRUNED":
        what = f"at epoch {t.pruned_at}"
    else:
        what = f"({t.fail_reason})"
    return (f"{_worker(t.worker)}trial {t.number} {t.state} {what} {_assignments(t.params)}  "
            f"{t.epochs_run} epochs, {t.duration_s:.1f} s")


def format_optimize_summary(s: OptimizeSummary) -> str:
    """`optimize`'s last lines: the study's trials by state, why this worker stopped, the
    best trial (or the Pareto front of a study of several metrics), then one line per point
    given up after its retry limit."""
    states = ", ".join(f"{n} {state}" for state, n in s.counts.items() if n)
    lines = [f"{_worker(s.worker)}study '{s.study_name}': {sum(s.counts.values())} trials "
             f"({states}); this worker ran {len(s.ran)}; stopped: {s.stopped}"]
    if s.best_trial is not None:
        lines.append(f"best: trial {s.best_trial} {s.metric}={s.best_value:.4f} "
                     f"{_assignments(s.best_params)}")
    if s.front:
        lines.append(f"Pareto front: trial(s) {', '.join(map(str, s.front))} (study show "
                     "--pareto; export one with export-best --trial N)")
    lines += [f"{_worker(s.worker)}{_point(g)} {'was' if g.grid else 'were'} given up after "
              f"{g.attempts} attempts (trial {g.trial}; see study show; optimize "
              "--retry-given-up runs it once more)" for g in s.given_up]
    return "\n".join(lines)


def _point(g: GivenUp) -> str:
    """`grid point {lr=0.001, dropout=0.1}`, or `trial 7's params {...}` of a sampled trial."""
    params = "{" + ", ".join(f"{k}={v}" for k, v in g.params.items()) + "}"
    return f"grid point {params}" if g.grid else f"trial {g.trial}'s params {params}"


def format_requeued(given_up: Sequence[GivenUp]) -> str:
    """`optimize --retry-given-up`: one line per given-up point queued once more."""
    return "\n".join(f"{_point(g)} (given up after {g.attempts} attempts) is queued once more"
                     for g in given_up) or "no point was given up: nothing to queue again"


# -- inference --------------------------------------------------------------------------------
def format_predictions(result: PredictionResult, fmt: str = "table",
                       show_all: bool = False) -> str:
    """table: per image, the attributes present with probabilities (--all: all 40);
    json: a record per image with every probability; csv: one row per image."""
    if fmt == "csv":
        return result.frame.to_csv(index=False, float_format="%.4f").rstrip("\n")
    present, attrs = result.present, result.attributes
    if fmt == "json":
        return json.dumps([
            {"image": img, "present": [a for a, p in zip(attrs, present[n], strict=True) if p],
             "probabilities": {a: round(float(v), 6)
                               for a, v in zip(attrs, result.probs[n], strict=True)}}
            for n, img in enumerate(result.images)], indent=2)
    if fmt != "table":
        raise ValueError(f"unknown format {fmt!r}: use table, json or csv")
    blocks = [_prediction_block(result, present, n, show_all) for n in range(len(result.images))]
    return "\n\n".join(blocks or ["(no image could be read)"])


def _prediction_block(result: PredictionResult, present: Any, n: int, show_all: bool) -> str:
    attrs, probs = result.attributes, result.probs[n]
    width = max((len(a) for a in attrs), default=10)
    lines = [f"{result.images[n]}  ({int(present[n].sum())} of {len(attrs)} present, "
             f"{result.threshold_label} thresholds)"]
    if show_all:
        lines.append(f"  {'attribute':<{width}}  prob   thresh  present")
        lines += [f"  {a:<{width}}  {probs[j]:.3f}  {result.thresholds[j]:.3f}   "
                  f"{'yes' if present[n, j] else ''}" for j, a in enumerate(attrs)]
        return "\n".join(lines)
    # most probable first; a stable sort keeps ties in attribute order
    shown = [j for j in sorted(range(len(attrs)), key=lambda j: -probs[j]) if present[n, j]]
    lines += [f"  {attrs[j]:<{width}}  {probs[j]:.3f}" for j in shown]
    return "\n".join(lines if shown else [*lines, "  (no attribute above its threshold)"])


def format_evaluation(result: Evaluation) -> str:
    """Header (and the attributes scored, when not all), the metrics at the chosen thresholds
    and at 0.5 side by side (mean_acc_reliable named mean_acc_reliable12), then the report."""
    metrics, report = result.metrics, result.report
    skipped, scored = metrics.get("skipped", []), metrics.get("scored")
    label = metrics["threshold"]
    lines = [f"{metrics['split']} split of {metrics['data_root']}: {metrics['n_images']} images"
             + (f" ({len(skipped)} unreadable, skipped)" if skipped else "")
             + (f", {metrics['selection']}" if metrics.get("selection") else "")]
    if scored:
        lines.append(f"scored: {len(scored['attributes'])} of {scored['of']} attributes "
                     f"(--attributes {scored['asked']}): {', '.join(scored['attributes'])}")
    chosen, half = metrics[label], metrics["0.5"]
    width = max(len(shown_name(k)) for k in chosen)
    heads = [f"at {label}", "at 0.5"][: 1 if label == "0.5" else 2]
    lines.append(f"{'metric':<{width}}  " + "  ".join(f"{h:>8}" for h in heads))
    lines += [f"{shown_name(k):<{width}}  {v:>8.4f}"
              + (f"  {half[k]:>8.4f}" if len(heads) == 2 else "") for k, v in chosen.items()]
    lines.append(f"(an attribute is present when its probability > its threshold; {label} = "
                 + ("the checkpoint's per-attribute thresholds, tuned on validation"
                    if label == "tuned" else f"{label} for every attribute") + ")")
    lines += _slice_lines(metrics.get("slices"), label)
    lines += ["", format_table(report, "table", "{:.3f}")]
    lines += [f"skipped {name}: {reason}" for name, reason in skipped[:10]]
    lines += [f"wrote {path}" for path in metrics.get("written", [])]
    return "\n".join(lines)


def _slice_lines(sl: dict[str, Any] | None, label: str) -> list[str]:
    """evaluate's subgroups (inference.evaluate.slice_summary): n and mean accuracy per group,
    the worst group, the attributes with the largest gaps; none when slicing is off."""
    if not sl:
        return []

    def num(v: float | None) -> str:  # None: an empty group, or no group at all
        return "-" if v is None else f"{v:.4f}"

    lines = ["", f"groups by true {' x '.join(sl['slices'])} (at {label}; mean accuracy over "
             "the other attributes):"]
    lines += [f"  {g['group']:<32} n={g['n']:<7} mean_acc={num(g['mean_acc'])}"
              for g in sl["groups"]]
    lines.append(f"worst group: {sl['worst_group'] or '-'} ({num(sl['worst_group_acc'])})")
    lines += [f"  largest gap: {r['attribute']:<20} {num(r['gap'])} (worst {r['worst_group']} "
              f"{num(r['worst_group_acc'])})" for r in sl["largest_gaps"]]
    return lines


def format_retrieval(result: RetrievalResult, fmt: str = "table") -> str:
    if fmt in ("csv", "json"):
        return format_table(result.frame, fmt)
    if fmt != "table":
        raise ValueError(f"unknown format {fmt!r}: use table, json or csv")
    head = (f'{result.n_matches} of {result.n_images} images match "{result.expression}" '
            f"at {result.threshold_label} thresholds")
    if result.n_matches > len(result.frame):
        head += f" (top {len(result.frame)} shown)"
    lines = [head]
    if len(result.frame):
        lines.append(format_table(result.frame, "table", "{:.3f}"))
    if result.empty is not None:
        lines.append(format_empty_retrieval(result))
    if result.skipped:
        lines.append(f"{len(result.skipped)} unreadable images skipped: "
                     + ", ".join(n for n, _ in result.skipped[:10])
                     + (" ..." if len(result.skipped) > 10 else ""))
    return "\n".join(lines)


def format_empty_retrieval(result: RetrievalResult) -> str:
    """Why nothing matched: each attribute's highest probability against its threshold, then
    the closest faces, each with what kept it out (`short_of`)."""
    e = result.empty
    if e is None:
        return ""
    lines = []
    if e.n_threshold_matches:
        lines.append(f"{e.n_threshold_matches} images pass the thresholds but score below "
                     f"--min-score {e.min_score:g}")
    for r in e.attributes:
        low = f", lowest {r.lowest:.3f}" if r.wanted != "present" else ""
        lines.append(f"{r.attribute}: highest {r.highest:.3f} ({r.highest_image}){low} vs "
                     f"threshold {r.threshold:.3f}: above it in {r.n_above} of "
                     f"{result.n_images} images")
    lines.append(f"the {len(e.closest)} closest, none a match (short_of: on the wrong side of "
                 "the threshold):")
    lines.append(format_table(e.closest, "table", "{:.3f}"))
    return "\n".join(lines)


def format_accuracy_check(c: dict[str, float]) -> str:
    """The demo's table: mean accuracy per split at the tuned thresholds and at 0.5, beside
    the majority-class baseline."""
    lines = ["mean accuracy (40 attributes)   tuned    0.5  majority baseline"]
    lines += [f"{label:<30} {c[f'{split}_tuned']:>6.3f} {c[f'{split}_0.5']:>6.3f} "
              f"{c[f'{split}_baseline']:>18.3f}"
              for split, label in (("val", "validation"), ("test", "test"))]
    return "\n".join(lines)


# -- export -----------------------------------------------------------------------------------
def format_export(r: ExportResult) -> str:
    """export-best's one line: test mean accuracy at the tuned thresholds and at 0.5 against
    the majority-class baseline, and where the files went (the rest is in the model card)."""
    test = r.metrics["test"]
    line = (f"trial {r.trial_number} of study '{r.study_name}': test mean accuracy "
            f"{test['tuned']['mean_acc']:.3f} (tuned thresholds) / {test['0.5']['mean_acc']:.3f} "
            f"(0.5) vs {test['baseline']['mean_acc']:.3f} majority baseline; exported to "
            f"{r.out}/ ({', '.join(p.name for p in r.files)})")
    if r.registered:
        line += f"; registered {r.registered}"
    return line
