"""The model card's sections beyond the headline metrics: why this model (the study's
metrics, its rank, the Pareto front), the model's measured size, cost and latency with the
study's constraints, label quality (all vs the 12 reliable attributes), the per-attribute
table (each attribute's label agreement band and agreement beside its accuracy) and the
subgroup slices. Each takes the card's JSON dict and returns markdown lines."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from celebhpo.data.quality import (
    BANDS,
    QUALITY_SOURCE,
    noisy_attributes,
    quality_data,
    reliable_attributes,
    reliable_confirmed,
    reliable_definition,
)
from celebhpo.objectives import latency_noise

__all__ = ["attribute_table", "choice_lines", "fmt_value", "label_quality_card",
           "measured_lines", "quality_lines", "slice_tables"]

SPLITS = ("val", "test")


def choice_lines(card: dict[str, Any]) -> list[str]:
    """## Why this model: who chose it, its rank by the first metric, its value of every
    metric of the study and, with several, whether it is on the Pareto front."""
    c, objectives = card["chosen"], card["objectives"]
    lines = ["## Why this model",
             "- chosen by: " + ("the user (`export-best --trial N`), not by the study" if
                                c["by"] == "user" else "the study: its best completed trial"
                                + (" that meets the constraints" if card["constraints"]
                                   else ""))]
    if c.get("rank") is not None:
        lines.append(f"- rank {c['rank']} of {c['of']} completed trials by "
                     f"`{c['rank_metric']}` ({objectives[0]['direction']})")
    front = c.get("front")
    if front is not None:
        listed = ", ".join(map(str, front)) or "none"
        lines.append(f"- Pareto front of the study's {len(objectives)} metrics: "
                     + (f"**on it**, one of {len(front)} trials ({listed})" if c["on_front"]
                        else f"**not on it** (another trial is at least as good on every "
                             f"metric and better on one); the front holds {len(front)} "
                             f"trials ({listed})"))
    lines += ["", "| metric (validation, best epoch; measured) | direction | this trial |",
              "|---|---|---|"]
    lines += [f"| {o['metric']} | {o['direction']} | {fmt_value(o['value'])} |"
              for o in objectives]
    return [*lines, ""]


def measured_lines(card: dict[str, Any]) -> list[str]:
    """Size, cost and latency as the trial measured them, and the study's constraints."""
    m, lines = card["measured"], []
    if "params_m" in m:
        cost = f", {m['gflops']:.3g} GFLOPs per image" if "gflops" in m else ""
        threads = (f", {m['latency_threads']:.0f} CPU thread(s)"
                   if "latency_threads" in m and m.get("device", "cpu") == "cpu" else "")
        spread = f"; spread {m['latency_spread']:.0%}" if "latency_spread" in m else ""
        noise = latency_noise(m)
        lines.append(f"- size: {m['params_m']:.2f} M parameters{cost}; latency "
                     f"{m.get('latency_ms', math.nan):.2f} ms per image at batch 1 on "
                     f"`{m.get('device', '?')}`{threads}{spread} (once per configuration "
                     "in the study)" + (f"; **noisy** ({noise}): compare GFLOPs, or measure "
                                        "on a quiet machine" if noise else ""))
    if card["constraints"]:
        missed = [k for k, c in card["constraints"].items() if not c["met"]]
        lines.append("- constraints: " + ("all met" if not missed else
                                          "NOT met: " + ", ".join(missed)))
    return lines


def label_quality_card(attributes: list[str]) -> dict[str, Any]:
    """model_card.json's `label_quality`: the source, what mean_acc_reliable averages, the
    bands, and which of the model's attributes are reliable and which near chance (noisy)."""
    return {"source": QUALITY_SOURCE, "definition": reliable_definition(),
            "confirmed": reliable_confirmed(), "bands": quality_data()["bands"],
            "noisy": [a for a in attributes if a in noisy_attributes()],
            "reliable": [a for a in attributes if a in reliable_attributes()]}


def quality_lines(card: dict[str, Any]) -> list[str]:
    """Mean accuracy over all attributes beside the mean over the reliable ones."""
    q, m = card["label_quality"], card["metrics"]
    noisy = ", ".join(q["noisy"]) or "none of this model's attributes"
    lines = ["## Label quality",
             f"Labels near chance: {noisy}. mean_acc_reliable12 = {q['definition']} "
             f"({len(q['reliable'])} of this model's attributes). Source: {q['source']}.", "",
             "| mean accuracy | " + " | ".join(f"{s}, {c}" for s in SPLITS
                                                for c in ("tuned", "0.5")) + " |",
             "|---" * (1 + 2 * len(SPLITS)) + "|"]
    for key, name in (("mean_acc", "all attributes"), ("mean_acc_reliable", "reliable12")):
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




def attribute_table(card: dict[str, Any]) -> list[str]:
    """Per attribute: its label agreement band and agreement beside its tuned threshold and
    its accuracy on both splits at both thresholds (a band near chance in bold)."""
    heads = ["attribute", "labels", "agreement", "threshold (tuned)", "val acc, tuned",
             "val acc, 0.5", "test acc, tuned", "test acc, 0.5", "test acc, baseline",
             "test positive rate"]
    keys = ["attribute", "labels", "agreement", "threshold", "val_acc_tuned", "val_acc_0.5",
            "test_acc_tuned", "test_acc_0.5", "test_acc_baseline", "test_positive_rate"]

    def cell(row: dict[str, Any], key: str) -> str:
        if key == "agreement":
            return "" if row[key] is None else f"{row[key]:.1%}"
        return f"**{row[key]}**" if key == "labels" and row[key] == "chance" else fmt_value(
            row[key])

    lines = ["## Per attribute", "",
             "| " + " | ".join(heads) + " |", "|---" * len(heads) + "|"]
    lines += ["| " + " | ".join(cell(row, k) for k in keys) + " |" for row in card["per_attribute"]]
    bands = card["label_quality"]["bands"]
    return lines + ["", "labels: how often the two annotators of a published re-annotation "
                        "agreed on the same 1,000 images (agreement), in bands: " + "; ".join(
                            f"{b} = {bands[b]}" for b in BANDS if b in bands)
                    + "; unrated = not rated there. Consistent labels are not always correct. "
                    f"Source: {QUALITY_SOURCE}."]


def fmt_value(value: Any) -> str:
    """A table cell: 4 decimals for floats, "" for None."""
    if value is None:
        return ""
    if isinstance(value, float | np.floating):
        return f"{float(value):.4f}"
    return str(value)
