"""The worker: the loop that runs a study's trials, one trial's objective, and `--devices`
(one `celebhpo optimize` process per GPU).

Budget (`optimize --trials N`, shared by all workers): a worker starts another trial while
the study holds fewer than N trials that count. COMPLETE, PRUNED, RUNNING (another
worker's) and FAIL count — except a FAIL that was re-queued because its worker stopped
(Ctrl-C, SIGTERM, kill -9, a lost heartbeat): its re-run is what counts, so a killed trial
neither eats the budget nor is lost. A trial that fails on its own (NaN loss) counts.
Workers of a non-grid study decide independently, so several deciding at the same instant
may overshoot N by at most one trial each; grid studies are exact (queued points are claimed
atomically).

A worker with nothing left to start waits while trials it could take over are running on
other workers (any, on a PostgreSQL storage with heartbeats; this machine's, elsewhere), so a
trial whose worker dies is still re-run; `--timeout` bounds the wait.

Trials left RUNNING by a dead worker are failed, re-queued and their MLflow runs closed
FAILED by the next worker to look: see storage.py for the rule. Ctrl-C/SIGTERM fails and
re-queues the running trial (MLflow run FAILED), then the worker exits.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from celebhpo.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    ModelError,
    StudyError,
    TrackingError,
    TrainingError,
    mask_url,
)
from celebhpo.hpo.storage import (
    DEFAULT_STORAGE,
    MAX_RETRY,
    StorageSpec,
    claim_waiting_trial,
    heartbeat,
    is_dead_local,
    is_local,
    optuna_quiet,
    parse_storage,
    requeue,
    worker_identity,
)

if TYPE_CHECKING:
    import optuna

    from celebhpo.config import StudyConfig
    from celebhpo.tracking.client import Tracker

__all__ = ["launch_workers", "run_worker"]

WORKER_ENV = "CELEBHPO_WORKER"  # set by launch_workers: the child's label, e.g. "gpu1"


# -- the worker loop ---------------------------------------------------------------------------
# The configuration's own fault (it diverged): the trial FAILs, counts, the study goes on.
TRIAL_ERRORS = (TrainingError,)
# Not the configuration's fault, and every trial would hit it (no data, no weights, the
# tracking store down after its retries): the trial FAILs, is re-queued, the worker stops.
SETUP_ERRORS = (DataError, ConfigError, CheckpointError, ModelError, TrackingError)


@contextmanager
def _interrupts() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt like Ctrl-C, inside optimize only (main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    owner = os.getpid()

    def raise_interrupt(signum: int, frame: Any) -> None:
        if os.getpid() != owner:
            # a forked helper (e.g. the image decoding pool) inherited this handler: end it
            # the way SIGTERM would, without a KeyboardInterrupt traceback
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

    previous = signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_worker(study: optuna.Study, cfg: StudyConfig, attrs: dict[str, Any], *,
               spec: StorageSpec, n_trials: int | None, timeout: float | None,
               device: str | None, progress: bool, echo: Callable[[str], None]):
    """The body of `study.optimize` (which opens the study): see the module docstring."""
    from celebhpo.tracking.client import Tracker

    tracker = Tracker(attrs["tracking_uri"])
    tracker.check()  # a clear error before any training
    worker = _Worker(study, cfg, attrs, spec, tracker, device=device, progress=progress,
                     echo=echo)
    with _interrupts(), optuna_quiet():
        return worker.run(n_trials, timeout)


class _Worker:
    def __init__(self, study: optuna.Study, cfg: StudyConfig, attrs: dict[str, Any],
                 spec: StorageSpec, tracker: Tracker, *, device: str | None, progress: bool,
                 echo: Callable[[str], None]) -> None:
        self.study, self.cfg, self.attrs, self.spec, self.tracker = study, cfg, attrs, spec, tracker
        self.grid = bool(attrs.get("grid"))
        self.device = device
        label = os.environ.get(WORKER_ENV, "")
        self.prefix = f"[{label}] " if label else ""
        # several workers drawing bars in one terminal garble each other: lines only
        self.progress = progress and not label
        self._echo = echo
        self.metric = cfg.study.metric
        self.minimize = cfg.study.resolved_direction() == "minimize"
        self.data_cache: dict[str, Any] = {}  # data-config key -> DataBundle, this call only
        self.storage = _heartbeat_storage(study)
        interval = getattr(self.storage, "heartbeat_interval", None)
        self.poll = min(float(interval), 5.0) if interval else 1.0

    def echo(self, text: str) -> None:
        self._echo(self.prefix + text)

    # -- the loop ---------------------------------------------------------------------------
    def run(self, n_trials: int | None, timeout: float | None):
        from celebhpo.hpo.results import best_trial
        from celebhpo.hpo.studies import OptimizeSummary

        started = time.monotonic()
        ran: list[int] = []
        waiting_note = ""
        self._close_orphan_runs()
        try:
            while True:
                if timeout is not None and time.monotonic() - started >= timeout:
                    stopped = f"--timeout {timeout:g} s reached"
                    break
                trials = self._recover()
                action, why = self._next(trials, n_trials)
                if action == "done":
                    stopped = why
                    break
                if action == "wait":
                    if why != waiting_note:
                        self.echo(why)
                        waiting_note = why
                    time.sleep(self.poll)
                    continue
                waiting_note = ""
                trial = claim_waiting_trial(self.study)
                if trial is None:
                    if self.grid:
                        continue  # another worker took the last queued point: look again
                    trial = self.study.ask()
                ran.append(self._run_trial(trial))
        except KeyboardInterrupt:
            self._fail_own_running("interrupted (Ctrl-C/SIGTERM) before the trial ended")
            self.echo(f"interrupted after {len(ran)} trials; the running trial is failed and "
                      "re-queued: run optimize again to resume")
            raise
        counts: dict[str, int] = {}
        for t in self.study.get_trials(deepcopy=False):
            counts[t.state.name] = counts.get(t.state.name, 0) + 1
        best = best_trial(self.study)
        summary = OptimizeSummary(
            study_name=self.study.study_name, counts=counts, ran=ran,
            best_trial=best.number if best else None, best_value=best.value if best else None,
            best_params=dict(best.params) if best else {}, metric=self.metric, stopped=stopped)
        self.echo(str(summary))
        return summary

    def _next(self, trials: list, n_trials: int | None) -> tuple[str, str]:
        """("run" | "wait" | "done", why)."""
        from optuna.trial import TrialState

        running = [t for t in trials if t.state == TrialState.RUNNING]
        watchable = [t for t in running if self.spec.heartbeat or is_local(t.user_attrs)]
        waiting_for = (f"waiting for trial(s) {', '.join(str(t.number) for t in watchable)} "
                       "running on other workers (to take over if a worker dies)")
        if n_trials is not None:
            used = _budget_used(trials)
            if used >= n_trials:
                return ("wait", waiting_for) if watchable else (
                    "done", f"the study holds {used} trials (--trials {n_trials})")
        if not self.grid:
            return "run", ""
        if any(t.state == TrialState.WAITING for t in trials):
            return "run", ""
        return ("wait", waiting_for) if watchable else ("done", "the grid is exhausted")

    # -- trials of dead workers --------------------------------------------------------------
    def _recover(self) -> list:
        """Fail and re-queue trials whose worker is gone (heartbeat, or a dead local pid);
        close their MLflow runs. Returns the study's trials afterwards."""
        import optuna
        from optuna.trial import TrialState

        trials = self.study.get_trials(deepcopy=False)
        running = {t.number for t in trials if t.state == TrialState.RUNNING}
        if not running:
            return trials
        if self.spec.heartbeat:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(self.study)
        dead = [] if self.spec.heartbeat else [
            t for t in trials if t.state == TrialState.RUNNING and is_dead_local(t.user_attrs)]
        failed_here = {t.number for t in dead if self._fail_and_requeue(
            t, f"worker pid {t.user_attrs['pid']} on {t.user_attrs['host']} died while "
               "running it")}
        trials = self.study.get_trials(deepcopy=False)
        # a heartbeat-failed trial has no fail_reason (a trial that failed on its own has)
        lost = [t for t in trials if t.number in failed_here or (
            t.number in running and t.state == TrialState.FAIL
            and "fail_reason" not in t.user_attrs)]
        if lost:
            self.echo(f"trial(s) {', '.join(str(t.number) for t in lost)} lost their worker: "
                      "failed and re-queued")
            self._close_orphan_runs(trials)
        return trials

    def _fail_and_requeue(self, frozen: Any, reason: str) -> bool:
        """FAIL a RUNNING trial with `reason` and queue its re-run; False when another worker
        finished it first (then that worker re-queues it)."""
        from optuna.exceptions import UpdateFinishedTrialError
        from optuna.trial import TrialState

        try:
            self.study._storage.set_trial_user_attr(frozen._trial_id, "fail_reason", reason)
            self.study.tell(frozen.number, state=TrialState.FAIL)
        except (UpdateFinishedTrialError, ValueError):
            return False
        requeue(self.study, self.study._storage.get_trial(frozen._trial_id), MAX_RETRY)
        return True

    def _fail_own_running(self, reason: str) -> None:
        from optuna.trial import TrialState

        me = worker_identity()
        own = [t for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
               if t.user_attrs.get("pid") == me["pid"] and t.user_attrs.get("host") == me["host"]]
        for t in own:
            self._fail_and_requeue(t, reason)
        if own:
            self._close_orphan_runs()

    def _close_orphan_runs(self, trials: list | None = None) -> None:
        trials = trials if trials is not None else self.study.get_trials(deepcopy=False)
        try:
            self.tracker.close_orphan_runs(self.attrs["parent_run_id"],
                                           {t.number: t.state.name for t in trials})
        except TrackingError as e:
            self.echo(f"warning: could not close MLflow runs of lost trials: {e}")

    # -- one trial ----------------------------------------------------------------------------
    def _run_trial(self, trial: optuna.Trial) -> int:
        """Train the trial's configuration, report each epoch (pruning), log to MLflow, tell
        Optuna. Returns the trial number. Trial errors fail the trial and the loop goes on;
        an interrupt or a setup error fails and re-queues it, then propagates."""
        import optuna
        from optuna.trial import TrialState

        from celebhpo.hpo.studies import suggest_params
        from celebhpo.training.loop import fit
        from celebhpo.training.progress import EpochProgress

        started = time.perf_counter()
        for key, value in worker_identity().items():
            trial.set_user_attr(key, value)
        params = suggest_params(trial, self.cfg.space)
        tcfg = self.cfg.with_params(params)
        if self.device:
            tcfg.train.device = self.device
        trial.set_user_attr("device", tcfg.train.device)
        reporter = _make_reporter(trial, self.metric)
        bar = EpochProgress(tcfg.train.epochs, label=f"t{trial.number:03d}",
                            enabled=self.progress)
        state, value, reason, error, requeue_it = TrialState.FAIL, None, "", None, False
        logged: dict[str, Any] = {}
        run = None
        with heartbeat(self.storage, trial._trial_id):
            try:
                run = self.tracker.start_trial(
                    self.attrs["experiment_id"], self.attrs["parent_run_id"], trial.number,
                    params, tcfg.to_dict(),
                    tags={"study": self.study.study_name, "device": tcfg.train.device})
                trial.set_user_attr("mlflow_run_id", run.run_id)
                reporter.run = run
                data = self._data(tcfg)
                with tempfile.TemporaryDirectory(prefix="celebhpo-trial-") as tmp:
                    result = fit(tcfg, data, callbacks=[bar, reporter],
                                 checkpoint_path=Path(tmp) / "model.pt")
                    value = float(result.best_metrics[self.metric])
                    keep = self.cfg.study.checkpoints == "all" or self._best_so_far(value)
                    logged = run.log_result(result, tcfg.to_dict(), log_checkpoint=keep)
                logged.update(device=str(result.device), checkpoint_logged=keep,
                              val_mean_acc=_num(result.best_metrics.get("val_mean_acc")),
                              val_map=_num(result.best_metrics.get("val_map")),
                              best_epoch=result.best_epoch)
                state = TrialState.COMPLETE
            except optuna.TrialPruned as e:
                state, reason = TrialState.PRUNED, str(e)
            except TRIAL_ERRORS as e:
                reason = str(e)
            except SETUP_ERRORS as e:
                reason, error, requeue_it = str(e), e, True
            except KeyboardInterrupt as e:
                reason, error, requeue_it = "interrupted (Ctrl-C/SIGTERM)", e, True
            except Exception as e:
                reason, error = f"{type(e).__name__}: {e}", e
            finally:
                bar.close()

            summary = {**reporter.summary(), **logged,
                       "duration_s": round(time.perf_counter() - started, 3)}
            if state == TrialState.FAIL:
                summary["fail_reason"] = mask_url(reason)
            for key, val in summary.items():
                trial.set_user_attr(key, val)
            if state == TrialState.COMPLETE:
                self.study.tell(trial, value)
            else:
                self.study.tell(trial, state=state)
        if requeue_it:
            requeue(self.study, self.study._storage.get_trial(trial._trial_id), None)
        if run is not None:
            run.end(state.name, reason=reason or None, pruned_at=reporter.pruned_at)
        self._report(trial.number, state.name, value, params, summary)
        self._refresh_parent()
        if error is not None:
            raise error
        return trial.number

    def _data(self, tcfg: StudyConfig) -> Any:
        """Decoded images for the trial's data config, loaded once per worker."""
        from celebhpo.data import load_data

        key = json.dumps(dataclasses.asdict(tcfg.data), sort_keys=True)
        if key not in self.data_cache:
            self.data_cache[key] = load_data(tcfg.data, splits=("train", "val"),
                                             progress=self.progress)
        return self.data_cache[key]

    def _best_so_far(self, value: float) -> bool:
        from optuna.trial import TrialState

        done = [t.value for t in self.study.get_trials(deepcopy=False,
                                                       states=(TrialState.COMPLETE,))]
        if not done:
            return True
        return value <= min(done) if self.minimize else value >= max(done)

    def _report(self, number: int, state: str, value: float | None, params: dict[str, Any],
                summary: dict[str, Any]) -> None:
        shown = " ".join(f"{k}={v}" for k, v in params.items())
        if state == "COMPLETE":
            what = f"{self.metric}={value:.4f}"
        elif state == "PRUNED":
            what = f"at epoch {summary.get('pruned_at')}"
        else:
            what = f"({summary.get('fail_reason', '')})"
        self.echo(f"trial {number} {state} {what} {shown}  {summary.get('epochs_run', 0)} "
                  f"epochs, {summary['duration_s']:.1f} s")

    def _refresh_parent(self) -> None:
        from celebhpo.hpo.results import leaderboard

        try:
            self.tracker.refresh_parent(self.attrs["parent_run_id"], self.study,
                                        leaderboard(self.study))
        except TrackingError as e:  # a summary never fails the study
            self.echo(f"warning: parent run summary not refreshed: {e}")


def _make_reporter(trial: optuna.Trial, metric: str) -> Any:
    """A train.Callback that logs each epoch to the trial's MLflow run, reports `metric` to
    Optuna and raises TrialPruned when the pruner says so."""
    import optuna

    from celebhpo.training.loop import Callback

    class TrialReporter(Callback):
        def __init__(self) -> None:
            self.run: Any = None
            self.history: list[dict[str, Any]] = []
            self.pruned_at: int | None = None

        def on_epoch_end(self, epoch: int, metrics: dict[str, Any]) -> None:
            self.history.append(dict(metrics))
            if self.run is not None:
                self.run.log_epoch(epoch, metrics)
            value = float(metrics[metric])
            trial.report(value, epoch)
            if trial.should_prune():
                self.pruned_at = epoch
                raise optuna.TrialPruned(f"pruned at epoch {epoch}: {metric} {value:.4f}")

        def summary(self) -> dict[str, Any]:
            """User attrs from the epochs seen (a pruned or failed trial has no FitResult)."""
            out: dict[str, Any] = {"epochs_run": len(self.history), "pruned_at": self.pruned_at}
            losses = [h["val_loss"] for h in self.history if _num(h.get("val_loss")) is not None]
            if losses:
                best = min(self.history, key=lambda h: _num(h.get("val_loss")) or math.inf)
                out.update(best_val_loss=float(min(losses)),
                           val_mean_acc=_num(best.get("val_mean_acc")),
                           val_map=_num(best.get("val_map")))
            return out

    return TrialReporter()


def _num(value: Any) -> float | None:
    """A finite float for a user attr (JSON has no NaN), else None."""
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _budget_used(trials: list) -> int:
    """Trials that count against `--trials`: see the module docstring."""
    from optuna.trial import TrialState

    rerun = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    return sum(1 for t in trials
               if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
               or (t.state == TrialState.FAIL and t.number not in rerun))


def _heartbeat_storage(study: optuna.Study) -> Any:
    """The RDBStorage under Optuna's cache wrapper when it has heartbeats, else None."""
    storage = getattr(study._storage, "_backend", study._storage)
    return storage if getattr(storage, "heartbeat_interval", None) else None


# -- one worker per GPU -------------------------------------------------------------------------
def launch_workers(devices: list[str], args: list[str]) -> int:
    """Start `python -m celebhpo *args` once per device with CUDA_VISIBLE_DEVICES=device and
    wait for all. Ctrl-C/SIGTERM is passed on once (each worker fails its running trial,
    re-queues it and exits); a second one kills the workers. Returns the exit code: 0 when
    every worker succeeded, 130 when interrupted, else the first failing worker's code.

    `args` must name a storage several processes can share (journal file or PostgreSQL).
    """
    devices = [d.strip() for d in devices if d.strip()]
    if not devices:
        raise StudyError("--devices needs at least one device id, e.g. --devices 0,1")
    if len(set(devices)) != len(devices):
        raise StudyError(f"--devices lists a device twice: {','.join(devices)}")
    storage = _arg_value(args, "--storage") or os.environ.get("CELEBHPO_STORAGE") or DEFAULT_STORAGE
    spec = parse_storage(storage)
    if not spec.multiprocess:
        raise StudyError(
            f"--devices starts {len(devices)} worker processes but storage {spec.masked} is "
            "SQLite, which is for one process; use a journal file (--storage studies/NAME.log) "
            "or PostgreSQL (--storage postgresql+psycopg2://user:pass@host/db)"
        )

    procs: list[tuple[str, subprocess.Popen]] = []
    interrupts = 0

    def forward(signum: int, frame: Any) -> None:
        nonlocal interrupts
        interrupts += 1
        for _, proc in procs:
            if proc.poll() is None:
                # first time: a clean stop (SIGTERM becomes KeyboardInterrupt in optimize)
                proc.send_signal(signal.SIGTERM if interrupts == 1 else signal.SIGKILL)

    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in previous:
        signal.signal(s, forward)
    try:
        for device in devices:
            env = {**os.environ, "CUDA_VISIBLE_DEVICES": device, WORKER_ENV: f"gpu{device}"}
            # a session of its own: the terminal's Ctrl-C reaches the workers only through us,
            # once, instead of twice
            proc = subprocess.Popen([sys.executable, "-m", "celebhpo", *args], env=env,
                                    start_new_session=True)
            procs.append((device, proc))
            print(f"worker gpu{device}: pid {proc.pid}", file=sys.stderr)
        codes = [(device, proc.wait()) for device, proc in procs]
    finally:
        for _, proc in procs:  # only if we are leaving on an error of our own
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for s, handler in previous.items():
            signal.signal(s, handler)
    failed = [(d, c) for d, c in codes if c != 0]
    for device, code in failed:
        print(f"worker gpu{device} exited with code {code}", file=sys.stderr)
    if interrupts:
        return 130
    return failed[0][1] if failed else 0


def _arg_value(args: list[str], flag: str) -> str | None:
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None
