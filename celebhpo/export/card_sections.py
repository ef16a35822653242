"""The model card's sections beyond the headline metrics: the model's measured size and
latency with the study's constraints, label quality (all vs reliable attributes) and the
subgroup slices. Each takes the card's JSON dict and returns markdown lines."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["fmt_value", "measured_lines", "quality_lines", "slice_tables"]

SPLITS = ("val", "test")


def measured_lines(card: dict[str, Any]) -> list[str]:
    """Size and latency as the trial measured them, and the study's constraints."""
    m, lines = card["measured"], []
    if "params_m" in m:
        lines.append(f"- size: {m['params_m']:.2f} M parameters; latency "
                     f"{m.get('latency_ms', math.nan):.2f} ms per image at batch 1 on "
                     f"`{m.get('device', '?')}` (when the trial ended)")
    if card["constraints"]:
        missed = [k for k, c in card["constraints"].items() if not c["met"]]
        lines.append("- constraints: " + ("all met" if not missed else
                                          "NOT met: " + ", ".join(missed)))
    return lines


def quality_lines(card: dict[str, Any]) -> list[str]:
    """Mean accuracy over all attributes beside the mean over the reliable ones."""
    q, m = card["label_quality"], card["metrics"]
    noisy = ", ".join(q["noisy"]) or "none of this model's attributes"
    lines = ["## Label quality",
             f"Noisy labels: {noisy}. mean_acc_reliable = {q['definition']}. "
             f"Source: {q['source']}.", "",
             "| mean accuracy | " + " | ".join(f"{s}, {c}" for s in SPLITS
                                                for c in ("tuned", "0.5")) + " |",
             "|---" * (1 + 2 * len(SPLITS)) + "|"]
    for key, name in (("mean_acc", "all attributes"), ("mean_acc_reliable", "reliable")):
        lines.append(f"| {name} | " + " | ".join(fmt_value(m[s][c].get(key)) for s in SPLITS
                                                 for c in ("tuned", "0.5")) + " |")
    return lines


def slice_tables(card: dict[str, Any]) -> list[str]:
    """Subgroups (when the study sliced): per group n and mean accuracy on each split, the
    worst group, and the test split's attributes with the largest gaps between groups."""
    sl = card["slices"]
    if not sl or "test" not in sl:
        return []
    test = sl["test"]
    lines = ["## Subgroups", f"Images grouped by their true {' x '.join(test['slices'])} "
             "labels; accuracy at the tuned thresholds, averaged over the other attributes "
             "(a slice attribute is left out of its own figures).", "",
             "| group | " + " | ".join(f"{s} n | {s} mean acc" for s in SPLITS if s in sl)
             + " |", "|---" * (1 + 2 * sum(s in sl for s in SPLITS)) + "|"]
    for k, group in enumerate(test["groups"]):
        cells = [f"{sl[s]['groups'][k]['n']} | {fmt_value(sl[s]['groups'][k]['mean_acc'])}"
                 for s in SPLITS if s in sl]
        lines.append(f"| {group['group']} | " + " | ".join(cells) + " |")
    lines += ["", "Worst group: " + "; ".join(
        f"{s} {sl[s]['worst_group']} ({fmt_value(sl[s]['worst_group_acc'])})"
        for s in SPLITS if s in sl) + ".", "",
        "| attribute (test) | largest gap between groups | worst group | its accuracy |",
        "|---|---|---|---|"]
    lines += [f"| {r['attribute']} | {fmt_value(r['gap'])} | {r['worst_group']} | "
              f"{fmt_value(r['worst_group_acc'])} |" for r in test["largest_gaps"]]
    return [*lines, ""]




def fmt_value(value: Any) -> str:
    """A table cell: 4 decimals for floats, "" for None."""
    if value is None:
        return ""
    if isinstance(value, float | np.floating):
        return f"{float(value):.4f}"
    return str(value)
