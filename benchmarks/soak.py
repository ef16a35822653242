"""Soak test of issue 14: N `celebhpo optimize` workers share a grid study on PostgreSQL
while a chaos loop kill -9s a random worker every few seconds and starts a replacement (at
most --kills kills, then it stops by itself and the survivors finish the grid).

    python benchmarks/soak.py            # 4 workers, 24 points, 12 kills, 127.0.0.1:5432
    python benchmarks/soak.py --workers 3 --points 8 --kills 3 --interval 2 --keep
    python benchmarks/soak.py --restart-db 3   # + 3 restarts of the PostgreSQL server

--restart-db N mixes N restarts of the whole local PostgreSQL cluster (`pg_ctlcluster
--skip-systemctl-redirect VERSION main restart`, needs root) into the kills, evenly spaced:
every connection of every worker is cut and refused for the restart's 2-4 s. Anything else
using that server (a test suite) sees the restarts too. Workers must ride them out (the
storage's retry bound, hpo/outage.py): the same checks hold, and the table gives each
restart's length and the workers' "unreachable"/"is back" lines.

Checks: every grid point COMPLETE exactly once, nothing RUNNING/WAITING, one FINISHED MLflow
child run per point (its COMPLETE trial's), no MLflow run left RUNNING, every worker not
killed exited 0 in --timeout without a traceback (else exit 1). Prints kills, trials,
retries, epochs trained vs needed and saved by resume (`resumed_from_epoch` tags). The
chaos loop spares a worker whose trial has used liveness.MAX_RETRY (a point that dies more
often is given up by design; --any-victim spares none). Data: 300 synthetic faces; MLflow:
SQLite in a temp folder; Optuna: a fresh database on --storage, dropped unless --keep.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import optuna
from mlflow import MlflowClient
from optuna.trial import TrialState
from sqlalchemy.engine import make_url

from celebhpo.config import DataConfig, load_study_file
from celebhpo.data import load_data, synthesize
from celebhpo.hpo import create_study, load_study
from celebhpo.hpo.liveness import MAX_RETRY
from celebhpo.hpo.retry import retry_history
from celebhpo.hpo.storage import open_storage

STUDY = """\
study = {{name = "soak", sampler = "grid", pruner = "none", heartbeat_interval = {heartbeat}, \
grace_period = {grace}}}
data = {{root = "{root}", train_size = {train_size}, val_size = 30, test_size = 30, \
image_size = {image_size}}}
train = {{arch = "tiny", pretrained = "none", epochs = {epochs}, batch_size = 32, device = "cpu"}}
[space]
{space}
"""


@dataclasses.dataclass
class Options:
    workers: int = 4
    points: int = 24
    kills: int = 12
    interval: float = 5.0  # mean seconds between kills (each wait is 0.5-1.5x this)
    epochs: int = 4
    image_size: int = 32
    train_size: int = 240
    heartbeat: int = 1  # [study] heartbeat_interval
    grace: int = 4  # [study] grace_period
    timeout: float = 900.0  # for the whole run: a worker still alive after it is hung
    seed: int = 0  # the chaos loop's choices
    any_victim: bool = False
    restart_db: int = 0  # restarts of the PostgreSQL cluster mixed into the kills
    keep: bool = False  # the database and the work folder (w*.log, mlflow.db)


def grid(points: int) -> dict[str, list]:
    """A `points`-point grid: num_features x dropout x lr (24 = 2 x 3 x 4)."""
    features = [8, 16] if points % 2 == 0 else [16]
    rest = points // len(features)
    dropouts = next([0.1, 0.3, 0.5][:k] for k in (3, 2, 1) if rest % k == 0)
    n_lr = rest // len(dropouts)
    lrs = [float(f"{0.001 * 10 ** (i / max(n_lr - 1, 1)):.4g}") for i in range(n_lr)]
    return {"lr": lrs, "dropout": dropouts, "num_features": features}


class Workers:
    """`celebhpo optimize` processes, each its own process group (killed whole), to w<i>.log."""

    def __init__(self, args: list[str], work: Path) -> None:
        self.args, self.work, self.killed = args, work, set()
        self.procs: list[subprocess.Popen] = []
        self.logs: list[Path] = []

    def start(self) -> None:
        log = self.work / f"w{len(self.procs):02d}.log"
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        with open(log, "w") as out:
            proc = subprocess.Popen([sys.executable, "-m", "celebhpo", "optimize", *self.args],
                                    cwd=self.work, env=env, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        self.logs.append(log)

    def alive(self) -> list[subprocess.Popen]:
        return [p for p in self.procs if p.poll() is None]

    def kill(self, proc: subprocess.Popen) -> None:
        self.killed.add(proc.pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def wait(self, deadline: float) -> list[int]:
        """Wait for every worker until `deadline`: the pids still running then (hung)."""
        for p in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=max(0.0, deadline - time.monotonic()))
        return [p.pid for p in self.alive()]

    def failures(self, hung: list[int]) -> list[str]:
        """Survivors (not killed by the chaos loop) must exit 0 without a traceback."""
        return [f"worker pid {pid} still running after --timeout (hung): killed" for pid in hung
                ] + [f"worker pid {p.pid} exited {p.returncode} (see {log} for a traceback)"
                     for p, log in zip(self.procs, self.logs, strict=True)
                     if p.pid not in self.killed and (p.returncode or "Traceback" in log.read_text())]


def restart_cluster() -> dict:
    """Restart the local PostgreSQL cluster (fast mode: clients are cut at once)."""
    version = sorted(os.listdir("/etc/postgresql"))[-1]
    started = time.monotonic()
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"],
                   check=True, capture_output=True)
    return {"restart_s": time.monotonic() - started}


def chaos(workers: Workers, study: optuna.Study, opts: Options, deadline: float
          ) -> tuple[list[dict], list[dict]]:
    """Once a trial runs: every 0.5-1.5 x `interval` s kill -9 a random worker (one that
    holds a trial when any does; not one whose trial has used its retries, unless
    `any_victim`) and start a replacement, or (`restart_db` times, evenly among the kills)
    restart the database; until every kill and restart is done, no worker is left or
    `deadline`. Returns (kills, restarts)."""
    rng = random.Random(opts.seed)
    total = opts.kills + opts.restart_db
    restart_at = {round((i + 1) * total / (opts.restart_db + 1)) - 1
                  for i in range(opts.restart_db)}
    while not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not workers.alive() or time.monotonic() > deadline:
            return [], []
        time.sleep(0.2)
    kills: list[dict] = []  # the victim's trial number (None: idle) and its epochs done
    restarts: list[dict] = []
    while (len(kills) + len(restarts) < total and time.monotonic() < deadline
           and workers.alive()):
        time.sleep(opts.interval * rng.uniform(0.5, 1.5))
        if len(kills) + len(restarts) in restart_at and len(restarts) < opts.restart_db:
            running = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
            restarts.append({**restart_cluster(), "running": running})
            continue
        running = {t.user_attrs.get("pid"): t for t in
                   study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
        busy = [p for p in workers.alive() if p.pid in running]
        pool = [p for p in busy or workers.alive() if opts.any_victim or p.pid not in running
                or len(retry_history(running[p.pid])) < MAX_RETRY]
        if not pool:
            continue
        victim = rng.choice(pool)
        trial = running.get(victim.pid)
        workers.kill(victim)
        kills.append({"trial": trial and trial.number,
                      "epochs_done": len(trial.intermediate_values) if trial else 0})
        workers.start()
    return kills, restarts


def soak(storage: str, work: Path, root: Path, opts: Options) -> dict:
    """Create the study in `storage` (an empty database), run the workers under chaos, check
    the outcome. MLflow: a SQLite store in `work`. Returns the figures, with `failures`."""
    space, path, tracking = grid(opts.points), work / "soak.toml", f"sqlite:///{work}/mlflow.db"
    path.write_text(STUDY.format(root=root, space="\n".join(f"{k} = {v}" for k, v in space.items()),
                                 **dataclasses.asdict(opts)))
    create_study(load_study_file(path), storage=storage, grid=True, tracking_uri=tracking)
    study = optuna.load_study(study_name="soak", storage=open_storage(storage))  # for all polls
    workers = Workers(["--storage", storage, "--study", "soak"], work)
    started = time.monotonic()
    try:
        for _ in range(opts.workers):
            workers.start()
        kills, restarts = chaos(workers, study, opts, started + opts.timeout)
        hung = workers.wait(started + opts.timeout)
    finally:
        for p in workers.alive():
            workers.kill(p)
    figures = check(storage, tracking, opts)
    figures["failures"] += workers.failures(hung)
    outage_lines = [line for log in workers.logs for line in log.read_text().splitlines()
                    if " unreachable (" in line or " is back after " in line]
    figures.update(kills=kills, restarts=restarts, outage_lines=outage_lines, hung=hung, wall_s=time.monotonic() - started, space=space,
                   started=len(workers.procs), opts=opts, logs=workers.logs)
    return figures


def check(storage: str, tracking: str, opts: Options) -> dict:
    """The soak's figures, and under `failures` the invariants that do not hold."""
    study, cfg = load_study("soak", storage)
    trials, space = study.get_trials(), cfg.grid()
    key = {t.number: tuple(sorted(t.params.items())) for t in trials}
    expected = {tuple(sorted(zip(space, v, strict=True)))
                for v in itertools.product(*space.values())}
    done = Counter(key[t.number] for t in trials if t.state == TrialState.COMPLETE)
    failures = [f"grid point {dict(k)} COMPLETE {done[k]} times (its trials: " + ", ".join(
                f"{t.number} {t.state.name}" for t in trials if key[t.number] == k) + ")"
                for k in expected if done[k] != 1]
    failures += [f"trial {t.number} left {t.state.name}" for t in trials
                 if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    client = MlflowClient(tracking)
    runs = client.search_runs([client.get_experiment_by_name("soak").experiment_id],
                              max_results=10000)
    children = [r for r in runs if r.data.tags.get("role") == "trial"]
    failures += run_failures(trials, children, runs)
    figures = {"states": Counter(t.state.name for t in trials), "trials": len(trials),
               "retries": sum(bool(retry_history(t)) for t in trials),
               "retry_of_runs": sum("retry_of" in r.data.tags for r in children),
               "points": len(expected), "done": sum(done[k] == 1 for k in expected),
               "runs": Counter(r.info.status for r in children),
               "parent": [r.info.status for r in runs if r.data.tags.get("role") == "study"],
               "failures": failures, "needed": len(expected) * opts.epochs}
    # epochs trained: the logged ones, less those a resumed run replayed (= saved by resume)
    replayed = [int(r.data.tags.get("resumed_from_epoch", 0)) for r in children]
    logged = [len(client.get_metric_history(r.info.run_id, "val_loss")) for r in children]
    return {**figures, "trained": sum(max(0, n - k) for n, k in zip(logged, replayed, strict=True)),
            "saved": sum(replayed), "resumed_runs": sum(map(bool, replayed))}


def run_failures(trials: list, children: list, runs: list) -> list[str]:
    """Each COMPLETE trial has one MLflow run, FINISHED, the one it recorded; no other run is
    FINISHED; no run (parent included) is left RUNNING."""
    trial = {t.number: t for t in trials}
    count = Counter(int(r.data.tags["trial_number"]) for r in children)
    out = [f"trial {n} has {k} MLflow runs" for n, k in count.items() if k > 1]
    out += [f"COMPLETE trial {t.number} has no MLflow run" for t in trials
            if t.state == TrialState.COMPLETE and not count[t.number]]
    for r in children:
        t = trial.get(int(r.data.tags["trial_number"]))
        complete = t is not None and t.state == TrialState.COMPLETE
        if complete != (r.info.status == "FINISHED") or (
                complete and r.info.run_id != t.user_attrs.get("mlflow_run_id")):
            out.append(f"MLflow run {r.info.run_name} ({r.info.run_id}) {r.info.status}: its "
                       f"trial is {t.state.name if t else 'missing'}")
    return out + [f"MLflow run {r.info.run_name} ({r.data.tags.get('role')}) left RUNNING"
                  for r in runs if r.info.status == "RUNNING"]


def format_table(f: dict) -> str:
    o, states, runs, failures = f["opts"], f["states"], f["runs"], f["failures"]
    mid = [k for k in f["kills"] if k["trial"] is not None]
    rows = {
        "grid": " x ".join(f"{k} {len(v)}" for k, v in f["space"].items()) + f" = {f['points']}"
                f" points; tiny, {o.image_size} px, {o.train_size} train images, {o.epochs} "
                f"epochs; heartbeat {o.heartbeat} s, grace {o.grace} s",
        "workers": f"{o.workers} at once, {f['started']} started, {len(f['hung'])} hung; "
                   f"{f['wall_s']:.0f} s",
        "kills": f"{len(f['kills'])} of {o.kills} (every ~{o.interval:g} s), {len(mid)} "
                 f"mid-trial (after {sum(k['epochs_done'] for k in mid)} epochs in all)",
        "db restarts": f"{len(f['restarts'])} of {o.restart_db}: " + (", ".join(
            f"{r['restart_s']:.1f} s with {r['running']} trials running" for r in f["restarts"])
            or "none") + f"; worker lines: {sum(' unreachable (' in x for x in f['outage_lines'])}"
            f" unreachable, {sum(' is back after ' in x for x in f['outage_lines'])} back",
        "trials": f"{f['trials']}: " + ", ".join(f"{s} {states.get(s, 0)}" for s in (
            "COMPLETE", "FAIL", "PRUNED", "RUNNING", "WAITING"))
            + f"; grid points COMPLETE exactly once: {f['done']}/{f['points']}",
        "retries": f"{f['retries']} trials re-queued (retry_history); {f['retry_of_runs']} "
                   "MLflow runs tagged retry_of",
        "epochs trained": f"{f['trained']} = {f['needed']} needed ({f['points']} x {o.epochs})"
                          f" + {f['trained'] - f['needed']} re-run; {f['saved']} saved by "
                          f"resume ({f['resumed_runs']} runs resumed)",
        "MLflow runs": f"{sum(runs.values())} children: " + ", ".join(f"{s} {runs.get(s, 0)}" for s
                       in ("FINISHED", "FAILED", "KILLED", "RUNNING")) + "; parent "
                       + ", ".join(f["parent"]),
        "invariants": f"{len(failures)} FAILED" if failures else "all hold",
    }
    return "\n".join([f"{k:<15} {v}" for k, v in rows.items()] + [f"  FAIL: {x}" for x in failures])


@contextlib.contextmanager
def database(server: str, keep: bool) -> Iterator[str]:
    """A throw-away PostgreSQL database on `server`, dropped after unless `keep`: its URL."""
    import psycopg2  # the [postgres] extra
    url, name = make_url(server), f"celebhpo_soak_{uuid.uuid4().hex[:12]}"

    def admin(sql: str) -> None:  # a connection each time: --restart-db cuts held ones
        conn = psycopg2.connect(url.set(drivername="postgresql", database="postgres")
                                .render_as_string(hide_password=False), connect_timeout=5)
        conn.autocommit = True
        try:
            conn.cursor().execute(sql)
        finally:
            conn.close()

    admin(f'CREATE DATABASE "{name}"')
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        if not keep:
            admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for f in dataclasses.fields(Options):
        flag, default = f"--{f.name.replace('_', '-')}", getattr(Options(), f.name)
        parser.add_argument(flag, **({"action": "store_true"} if f.type == "bool" else {
            "metavar": "N", "type": type(default), "default": default, "help": f"({default})"}))
    parser.add_argument("--storage", default="postgresql+psycopg2://postgres@127.0.0.1:5432",
                        help="PostgreSQL server: a fresh database is made there (%(default)s)")
    args = parser.parse_args(argv)
    opts = Options(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Options)})
    work = Path(tempfile.mkdtemp(prefix="celebhpo-soak-"))
    root = synthesize(work / "celeba", n=300, seed=0, progress=False)
    load_data(DataConfig(root=str(root), train_size=opts.train_size, val_size=30,
                         test_size=30, image_size=opts.image_size), progress=False)
    with database(args.storage, opts.keep) as storage:
        figures = soak(storage, work, root, opts)
    print(format_table(figures))
    if opts.keep:
        print(f"kept: {work} (w*.log, mlflow.db), database {storage}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if figures["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
