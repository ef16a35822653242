"""Turning results into text for people: tables, CSV, JSON. No computation happens here."""

from __future__ import annotations

import json
from typing import Any

import pandas as pd


def format_table(df: pd.DataFrame, fmt: str = "table", floatfmt: str = "{:.4g}") -> str:
    """`table` (aligned, for a terminal), `csv` or `json` (records)."""
    if fmt == "csv":
        return df.to_csv(index=False).rstrip("\n")
    if fmt == "json":
        return df.to_json(orient="records", indent=2)
    if df.empty:
        return "(empty)"
    return df.to_string(index=False, float_format=lambda v: floatfmt.format(v))


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


def to_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, default=str)


# -- training (owned by the training/data work) -----------------------------------------------


# -- studies (owned by the hpo work) ----------------------------------------------------------


# -- inference (owned by the inference/export work) -------------------------------------------


# -- export (owned by the inference/export work) ----------------------------------------------
