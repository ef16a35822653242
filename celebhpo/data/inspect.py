"""`celebhpo data inspect`: split counts, attribute balance and correlations of a CelebA folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from celebhpo.data.layouts import SPLITS, read_celeba
from celebhpo.errors import DataError


def inspect_dataset(root: str | Path, layout: str = "auto",
                    out_dir: str | Path | None = None) -> dict[str, Any]:
    """A JSON-able report: split counts, each attribute's positive rate on the train split
    (sorted, most common first) with its imbalance ratio (majority / minority class), and, when
    `out_dir` is given, attribute_frequency.png and attribute_correlation.png written there."""
    ds = read_celeba(root, layout)
    counts = {name: int((ds.partition == code).sum()) for name, code in SPLITS.items()}
    train = ds.labels[ds.partition == SPLITS["train"]]
    source = "train"
    if len(train) == 0:  # still useful on a folder without a train split
        train, source = ds.labels, "all"
    rates = train.mean(axis=0, dtype=np.float64)  # (40,)
    order = np.argsort(-rates, kind="stable")
    rows = []
    for i in order:
        r = float(rates[i])
        minority = min(r, 1.0 - r)
        ratio = (max(r, 1.0 - r) / minority) if minority > 0 else None  # None: one class only
        rows.append({"attribute": ds.attributes[i], "positive_rate": round(r, 6),
                     "positives": int(train[:, i].sum()),
                     "imbalance_ratio": round(ratio, 3) if ratio is not None else None})
    ratios = [r["imbalance_ratio"] for r in rows if r["imbalance_ratio"] is not None]
    corr = _correlation(train)
    report: dict[str, Any] = {
        "root": str(ds.root), "layout": ds.layout, "n_images": len(ds.ids),
        "split_counts": counts, "rates_from": source, "attributes": rows,
        "mean_positive_rate": round(float(rates.mean()), 6),
        "max_imbalance": {"attribute": max(rows, key=lambda r: r["imbalance_ratio"] or np.inf)
                          ["attribute"], "ratio": max(ratios) if ratios else None},
        "top_correlations": _top_pairs(corr, ds.attributes, 8),
        "plots": [],
    }
    if out_dir is not None:
        report["plots"] = _plots(Path(out_dir), rows, corr, ds.attributes, source)
    return report


def _correlation(labels: np.ndarray) -> np.ndarray:
    """(40, 40) Pearson correlation of the labels; 0 where an attribute is constant."""
    x = labels.astype(np.float64)
    x -= x.mean(axis=0)
    sd = np.sqrt((x * x).sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        c = (x.T @ x) / np.outer(sd, sd)
    return np.nan_to_num(c, nan=0.0)


def _top_pairs(corr: np.ndarray, names: list[str], k: int) -> list[dict[str, Any]]:
    iu = np.triu_indices(len(names), 1)
    vals = corr[iu]
    top = np.argsort(-np.abs(vals), kind="stable")[:k]
    return [{"a": names[iu[0][t]], "b": names[iu[1][t]], "r": round(float(vals[t]), 4)}
            for t in top]


def _plots(out_dir: Path, rows: list[dict[str, Any]], corr: np.ndarray, names: list[str],
           source: str) -> list[str]:
    # the object API with an Agg canvas: no pyplot, no global backend switch. Late: matplotlib
    # adds ~0.3 s to every import of celebhpo.data, and only an inspect with plots needs it
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"{out_dir}: cannot create the plot folder ({e.strerror})") from e

    fig = Figure(figsize=(8, 10), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.barh([r["attribute"] for r in rows][::-1], [r["positive_rate"] for r in rows][::-1],
            color="tab:blue")
    ax.axvline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_xlim(0, 1)
    ax.set_xlabel(f"positive rate ({source} split)")
    ax.set_title("Attribute frequency")
    ax.tick_params(axis="y", labelsize=8)
    freq = out_dir / "attribute_frequency.png"
    fig.savefig(freq, dpi=100)

    fig = Figure(figsize=(12, 10.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    im = ax.imshow(corr, cmap="coolwarm", vmin=-1, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_title(f"Attribute correlation ({source} split)")
    fig.colorbar(im, ax=ax, shrink=0.8)
    cor = out_dir / "attribute_correlation.png"
    fig.savefig(cor, dpi=100)
    return [str(freq), str(cor)]
