"""`celebhpo demo`: the whole workflow on synthetic faces, on a CPU, in minutes.

Each step calls the same library function as the matching command, so the demo shows what
the commands do rather than a special path of its own.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from celebhpo.config import load_study_file

# The default demo: the seed's grid in miniature. --quick: a tiny one for the test suite.
DEMO = {"study_file": "demo.toml", "n_images": 2000, "retrieve": "Eyeglasses and not Male"}
QUICK = {"study_file": "demo-quick.toml", "n_images": 400, "retrieve": "Eyeglasses and not Male"}


def packaged_study(name: str) -> Path:
    return Path(str(resources.files("celebhpo") / "studies" / name))


def run_demo(workdir: Path, *, quick: bool = False, echo: Callable[[str], None] = print) -> dict:
    """Draw faces, create and optimize the demo grid, export, evaluate, predict, retrieve.

    Everything goes under `workdir`: data/, studies/, mlruns/, best/. Returns what it made.
    """
    from celebhpo.data import synthesize
    from celebhpo.export import export_best
    from celebhpo.hpo import create_study, leaderboard, list_studies, load_study, optimize
    from celebhpo.inference import (
        evaluate,
        format_predictions,
        format_retrieval,
        load_model,
        predict,
        retrieve,
    )
    from celebhpo.report import format_table
    from celebhpo.tracking import ui_command

    plan = QUICK if quick else DEMO
    started = time.perf_counter()
    workdir = Path(workdir).resolve()
    data_root = workdir / "data" / ("synthetic-quick" if quick else "synthetic")
    db = workdir / "studies" / "celebhpo.db"
    storage = f"sqlite:///{db}"
    tracking_uri = f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}"
    best_dir = workdir / "best"

    def step(n: int, text: str) -> None:
        echo(f"\n[{n}/6] {text}  ({time.perf_counter() - started:.0f} s)")

    step(1, f"synthetic faces in {data_root}")
    if (data_root / "list_attr_celeba.csv").exists():
        echo("  already there: reusing them (and their decoded cache)")
    else:
        synthesize(data_root, n=plan["n_images"], seed=0, progress=True)

    cfg = load_study_file(packaged_study(plan["study_file"]), data_root=data_root)
    (workdir / "studies").mkdir(parents=True, exist_ok=True)
    existing = set(list_studies(storage)["name"]) if db.exists() else set()
    name = _fresh_name(cfg.study.name, existing)
    step(2, f"study '{name}': {' x '.join(str(len(v)) for v in cfg.grid().values())} grid "
            f"over {', '.join(cfg.grid())}")
    if name != cfg.study.name:
        echo(f"  '{cfg.study.name}' exists from an earlier run; this run is '{name}' "
             f"(delete {workdir / 'studies'} and {workdir / 'mlruns'} to start afresh)")
    echo("  " + create_study(cfg, storage=storage, grid=True, name=name,
                             tracking_uri=tracking_uri).message)

    step(3, "optimize: every grid point; weak trials are pruned")
    optimize(study_name=name, storage=storage, device="cpu", progress=True)
    optuna_study, _ = load_study(name, storage)
    board = leaderboard(optuna_study)

    step(4, f"export the best trial to {best_dir} and evaluate it on the test split")
    exported = export_best(study_name=name, storage=storage, out=best_dir, formats=("pt",),
                           tracking_uri=tracking_uri, device="cpu")
    echo(exported.summary())

    _, val_report = evaluate(best_dir, data_root, split="val", progress=False)
    check = accuracy_check(val_report)
    echo(_format_check(check))

    step(5, "predict a few test faces (threshold 0.5), retrieve by attributes")
    predictor = load_model(best_dir)
    images = sorted((data_root / "img_align_celeba" / "img_align_celeba").glob("*.jpg"))[-3:]
    echo(format_predictions(predict(predictor, images, threshold="0.5", progress=False),
                            fmt="table"))
    echo(f'\nretrieve --where "{plan["retrieve"]}" (top 5):')
    image_dir = data_root / "img_align_celeba" / "img_align_celeba"
    echo(format_retrieval(retrieve(predictor, image_dir, plan["retrieve"], top=5,
                                   progress=False), fmt="table"))

    step(6, "leaderboard")
    echo(format_table(board))
    ui = " ".join(shlex.quote(a) for a in ui_command(tracking_uri, host="127.0.0.1", port=5000))
    echo(f"\nCompare the trials in MLflow:\n  {ui}\n  then open http://127.0.0.1:5000")
    echo(f"\ndone in {time.perf_counter() - started:.0f} s")
    return {"study": name, "storage": storage, "tracking_uri": tracking_uri, "best": best_dir,
            "leaderboard": board, "check": check}


def accuracy_check(report) -> dict[str, float]:
    """Validation accuracy at 0.5 of all and of the visible attributes, against always
    answering each attribute's majority class (what a model that learned nothing scores)."""
    from celebhpo.data import VISIBLE_ATTRIBUTES

    rep = report.set_index("attribute")
    majority = rep["positive_rate"].clip(lower=0.0).map(lambda r: max(r, 1.0 - r))
    visible = [a for a in VISIBLE_ATTRIBUTES if a in rep.index]
    return {
        "mean_acc": float(rep["accuracy"].mean()),
        "majority_mean_acc": float(majority.mean()),
        "visible_acc": float(rep.loc[visible, "accuracy"].mean()),
        "visible_majority_acc": float(majority[visible].mean()),
        "n_visible": len(visible),
    }


def _format_check(c: dict[str, float]) -> str:
    return (
        f"validation accuracy at 0.5: all 40 attributes {c['mean_acc']:.3f} "
        f"(majority-class baseline {c['majority_mean_acc']:.3f}); the {c['n_visible']} visible ones "
        f"{c['visible_acc']:.3f} (baseline {c['visible_majority_acc']:.3f})"
    )


def _fresh_name(base: str, existing: set[str]) -> str:
    if base not in existing:
        return base
    n = 2
    while f"{base}-{n}" in existing:
        n += 1
    return f"{base}-{n}"
