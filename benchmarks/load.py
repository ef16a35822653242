"""Wall time of one 16-point grid of tiny trials run by 1 worker vs by 4 concurrent
`celebhpo optimize` workers on PostgreSQL (issue 9, "Load"): the same study, each in a fresh
throw-away database.

    python benchmarks/load.py                              # 1 vs 4 workers, 127.0.0.1:5432
    python benchmarks/load.py --workers 1,2,4 --epochs 2
    python benchmarks/load.py --pg postgresql+psycopg2://postgres@db:5432

Each worker is its own process with one torch thread (OMP_NUM_THREADS=1), so on a machine
with fewer cores than workers the speed-up is bounded by the cores. Data: 300 synthetic
faces drawn into the temp folder; the image cache is built once before the timed runs, so
every run decodes nothing. Nothing is written to the repo's studies/ or mlruns/.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

GRID16 = {"lr": [0.001, 0.003, 0.01, 0.03], "dropout": [0.1, 0.3], "num_features": [8, 16]}

STUDY = """
[study]
name = "load"
sampler = "grid"
pruner = "none"
seed = 0

[data]
root = "{root}"
train_size = 64
val_size = 30
test_size = 30
image_size = 16

[train]
arch = "tiny"
pretrained = "none"
epochs = {epochs}
batch_size = 32
eval_batch_size = 64
num_features = 16
device = "cpu"

[space]
{space}
"""


class Database:
    """A throw-away PostgreSQL database (created with autocommit, dropped on exit)."""

    def __init__(self, server: str) -> None:
        import psycopg2
        from sqlalchemy.engine import make_url

        url = make_url(server)
        self.conn = psycopg2.connect(host=url.host, port=url.port or 5432,
                                     user=url.username, password=url.password,
                                     dbname="postgres", connect_timeout=5)
        self.conn.autocommit = True
        self.name = f"celebhpo_bench_{uuid.uuid4().hex[:12]}"
        self.url = url.set(database=self.name).render_as_string(hide_password=False)

    def __enter__(self) -> str:
        with self.conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{self.name}"')
        return self.url

    def __exit__(self, *exc: object) -> None:
        with self.conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        self.conn.close()


def run(workers: int, study_file: Path, server: str, work: Path) -> dict:
    """Create the study in a fresh database, start `workers` optimize processes, time them."""
    from celebhpo.config import load_study_file
    from celebhpo.hpo.studies import create_study, load_study

    tracking = f"sqlite:///{work / f'mlruns-{workers}' / 'mlflow.db'}"
    with Database(server) as storage:
        create_study(load_study_file(study_file), storage=storage, grid=True,
                     tracking_uri=tracking)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        logs = [work / f"w{workers}-{i}.log" for i in range(workers)]
        started = time.perf_counter()
        procs = []
        for log in logs:
            with open(log, "w") as out:
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", "celebhpo", "optimize", "--storage", storage],
                    cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT))
        codes = [p.wait() for p in procs]
        wall = time.perf_counter() - started
        if any(codes):
            tail = "\n".join(log.read_text()[-2000:] for log in logs)
            raise SystemExit(f"{workers} worker(s): exit codes {codes}\n{tail}")
        study, _ = load_study("load", storage)
        trials = study.get_trials()
        return {
            "workers": workers,
            "wall_s": wall,
            "complete": sum(t.state.name == "COMPLETE" for t in trials),
            "trials": len(trials),
            "by_worker": sorted(
                sum(1 for t in trials if t.user_attrs.get("pid") == p.pid) for p in procs),
            "trial_s": sum(float(t.user_attrs.get("duration_s", 0)) for t in trials),
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", default="1,4", help="comma-separated worker counts")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--pg", default="postgresql+psycopg2://postgres@127.0.0.1:5432",
                        help="PostgreSQL server URL (a database is created per run)")
    args = parser.parse_args(argv)
    counts = [int(n) for n in args.workers.split(",")]

    from celebhpo.config import DataConfig
    from celebhpo.data import load_data, synthesize

    with tempfile.TemporaryDirectory(prefix="celebhpo-load-") as tmp:
        work = Path(tmp)
        root = synthesize(work / "celeba", n=300, seed=0, progress=False)
        space = "\n".join(f"{k} = {v}" for k, v in GRID16.items())
        study_file = work / "load.toml"
        study_file.write_text(STUDY.format(root=root, epochs=args.epochs, space=space))
        # the decode-once cache, built before any clock starts
        load_data(DataConfig(root=str(root), train_size=64, val_size=30, test_size=30,
                             image_size=16), progress=False)
        print(f"16-point grid ({' x '.join(f'{k} {len(v)}' for k, v in GRID16.items())}), "
              f"arch tiny, 16 px, 64 train / 30 val images, {args.epochs} epoch(s); "
              f"{os.cpu_count()} CPU cores; PostgreSQL storage, SQLite MLflow store")
        results = [run(n, study_file, args.pg, work) for n in counts]

    base = results[0]
    print(f"{'workers':>7}  {'wall s':>7}  {'complete':>8}  {'trials/worker':>14}  "
          f"{'sum of trial s':>14}  {'speed-up':>8}")
    for r in results:
        print(f"{r['workers']:>7}  {r['wall_s']:>7.1f}  {r['complete']:>5}/{r['trials']:<2}  "
              f"{','.join(map(str, r['by_worker'])):>14}  {r['trial_s']:>14.1f}  "
              f"{base['wall_s'] / r['wall_s']:>7.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
