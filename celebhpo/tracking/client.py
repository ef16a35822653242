"""Everything MLflow: the study's experiment and parent run, one child run per trial.

Shape (shared/DESIGN.md "MLflow shape"): one experiment per study, created once by
`study create`; one parent run for the study; one child run per trial, tagged
`mlflow.parentRunId`, with per-epoch metrics (step = epoch), the trial's report, curves,
resolved config and checkpoint. The parent run carries the leaderboard, an attribute x trial
F1 heatmap and Optuna's plots, refreshed after each trial.

Only `MlflowClient` with explicit run ids is used: no fluent "active run" can leak from one
trial into the next. Every call to the store goes through `Tracker._call`, which retries with
backoff and then raises one `TrackingError` line with the URI's password masked.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from celebhpo.errors import TrackingError, mask_url

if TYPE_CHECKING:
    import optuna
    import pandas as pd
    from mlflow import MlflowClient

__all__ = [
    "DEFAULT_TRACKING_URI",
    "Tracker",
    "TrialRun",
    "f1_by_attribute",
    "flatten_config",
    "resolve_tracking_uri",
    "trial_run_name",
    "ui_command",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"
ARTIFACTS_DIRNAME = "artifacts"  # beside the SQLite file: mlruns/mlflow.db -> mlruns/artifacts

# Optuna state -> MLflow run status
RUN_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}
EPOCH_METRICS = (
    "train_loss", "val_loss", "val_mean_acc", "val_balanced_acc", "val_map", "lr",
    "epoch_seconds", "images_per_s",
)
MAX_TAG_CHARS = 500  # an error tag is for people; the full traceback lives in the worker's log
_BATCH = 100  # MLflow's limit of params/tags per log_batch call
_PARAM_CHARS = 6000  # MLflow's limit on a param value
# MLflow error codes that will not get better by asking again
_FINAL_CODES = {
    "INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST",
    "BAD_REQUEST", "PERMISSION_DENIED", "UNAUTHENTICATED", "INVALID_STATE", "NOT_FOUND",
}


# -- URIs ----------------------------------------------------------------------------------
def resolve_tracking_uri(uri: str | None = None) -> str:
    """The tracking URI to use: `uri` (the --tracking-uri flag) > MLFLOW_TRACKING_URI >
    `sqlite:///mlruns/mlflow.db` under the current directory.

    SQLite paths are made absolute (resolved against the cwd at call time), so the URI stored
    with a study means the same file for every worker, wherever it was started.
    """
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    scheme = urllib.parse.urlsplit(uri).scheme
    if scheme == "sqlite":
        path = uri[len("sqlite:///"):] if uri.startswith("sqlite:///") else ""
        if not path or path == ":memory:":
            raise TrackingError(
                f"tracking URI {uri!r}: an in-memory or empty SQLite path cannot be shared; "
                "give a file, e.g. sqlite:///mlruns/mlflow.db"
            )
        return "sqlite:///" + str(Path(path).expanduser().resolve())
    if scheme in ("", "file") or (len(scheme) == 1 and os.name == "nt"):
        raise TrackingError(
            f"tracking URI {mask_url(uri)!r}: MLflow 3 no longer supports a plain folder as "
            "the tracking store; use sqlite:///mlruns/mlflow.db or a server (http://host:5000)"
        )
    return uri


def _is_http(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def artifact_root(uri: str) -> str | None:
    """Where new experiments keep artifacts: beside the SQLite file, `<cwd>/mlruns/artifacts`
    for another database, or None for a server (it decides, e.g. its --artifacts-destination).
    """
    if _is_http(uri) or uri.startswith("databricks"):
        return None
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).parent / ARTIFACTS_DIRNAME).as_uri()
    return (Path.cwd() / "mlruns" / ARTIFACTS_DIRNAME).resolve().as_uri()


def ui_command(tracking_uri: str | None, *, host: str = "127.0.0.1", port: int = 5000) -> list[str]:
    """The argv that opens the MLflow UI on a local store (binds to `host`, 127.0.0.1 by
    default, so the UI is not exposed to the network unless asked)."""
    uri = resolve_tracking_uri(tracking_uri)
    if _is_http(uri):
        raise TrackingError(
            f"{mask_url(uri)} is already a tracking server: open it in a browser instead"
        )
    argv = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri]
    root = artifact_root(uri)
    if root:
        argv += ["--default-artifact-root", root]
    return argv + ["--host", host, "--port", str(port)]


# -- naming and flattening -----------------------------------------------------------------
_SHORT = {"lr": "lr", "dropout": "p", "num_features": "f", "weight_decay": "wd",
          "batch_size": "bs", "optimizer": "opt", "scheduler": "sched", "epochs": "ep"}
_ORDER = ["lr", "dropout", "num_features"]


def _compact(value: Any) -> str:
    """1e-3, 0.3, 512, resnet50: short enough for a run name, exact enough to tell apart."""
    if isinstance(value, bool) or not isinstance(value, float):
        return str(value)
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    if abs(value) < 1e-2 or abs(value) >= 1e5:
        mantissa, exp = f"{value:.2e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exp)}"
    return f"{value:.3g}"


def trial_run_name(trial_number: int, params: dict[str, Any]) -> str:
    """`t007 resnet50 lr=1e-3 p=0.3 f=512`: arch first, then lr, dropout, num_features, the
    rest of the searched params in name order."""
    parts = [f"t{trial_number:03d}"]
    if "arch" in params:
        parts.append(str(params["arch"]))
    rest = sorted(k for k in params if k != "arch" and k not in _ORDER)
    for key in [k for k in _ORDER if k in params] + rest:
        parts.append(f"{_SHORT.get(key, key)}={_compact(params[key])}")
    return " ".join(parts)


def flatten_config(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """`{"data": {"image_size": 64}}` -> `{"data.image_size": "64"}`, values as MLflow
    param strings with any URL password masked. Lists and the search space are JSON."""
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and name != "space" and value:
            out.update(flatten_config(value, f"{name}."))
            continue
        if isinstance(value, dict | list):
            text = json.dumps(value, sort_keys=True, default=str)
        else:
            text = str(value)
        out[name] = mask_url(text)[:_PARAM_CHARS]
    return out


def _one_line(text: str, limit: int = MAX_TAG_CHARS) -> str:
    text = " ".join(mask_url(str(text)).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def f1_by_attribute(report: pd.DataFrame) -> dict[str, float | None]:
    """Per-attribute F1 at the tuned threshold (at 0.5 if the report has no tuned column), from
    a per-class report. The objective stores this as the trial user attr `f1_by_attribute`,
    which the parent run's heatmap reads without downloading any artifact."""
    cols = [c for c in report.columns if "f1" in str(c).lower()]
    if not cols:
        raise TrackingError("classification report has no F1 column; cannot build the heatmap")
    tuned = [c for c in cols if "tuned" in str(c).lower()]
    col = tuned[0] if tuned else cols[0]
    names = report["attribute"] if "attribute" in report.columns else report.index
    # None, not NaN, where F1 is undefined: Optuna stores user attrs as JSON, and strict
    # JSON readers (optuna-dashboard in a browser) reject NaN
    return {str(a): float(v) if math.isfinite(float(v)) else None
            for a, v in zip(names, report[col], strict=True)}


# -- the tracker -----------------------------------------------------------------------------
class Tracker:
    """One tracking store. `retries`/`backoff` govern how long a flaky store is retried
    (backoff, 2*backoff, 4*backoff, ... seconds) before a TrackingError.

    Against a server, MLflow's HTTP client also retries connection errors on its own
    (MLFLOW_HTTP_REQUEST_MAX_RETRIES, default 7 with backoff factor 2: minutes); set that
    variable lower to fail faster.
    """

    def __init__(self, uri: str | None = None, *, retries: int = 3, backoff: float = 1.0,
                 timeout: float = 10.0) -> None:
        self.uri = resolve_tracking_uri(uri)
        self.masked_uri = mask_url(self.uri)
        self.retries = retries
        self.backoff = backoff
        self.timeout = timeout
        self._client: MlflowClient | None = None

    def __repr__(self) -> str:
        return f"Tracker({self.masked_uri!r})"

    # -- plumbing --------------------------------------------------------------------
    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            from mlflow import MlflowClient

            if self.uri.startswith("sqlite:///"):
                # SQLite cannot create the folder that holds its file
                Path(self.uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
            self._client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
        return self._client

    def _call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`fn(*args, **kwargs)`, retried with exponential backoff on errors that may pass
        (network, a locked database); then one TrackingError line."""
        from mlflow.exceptions import MlflowException

        delay = self.backoff
        for attempt in range(self.retries + 1):
            try:
                return fn(*args, **kwargs)
            except TrackingError:
                raise
            except MlflowException as e:
                if e.error_code in _FINAL_CODES:
                    raise TrackingError(
                        f"MLflow {what} on {self.masked_uri}: {_one_line(e.message)}"
                    ) from None
                error: Exception = e
            except Exception as e:  # noqa: BLE001 - network/sqlalchemy errors share no base
                error = e
            if attempt < self.retries:
                log.warning("MLflow %s failed (%s); retrying in %.1f s", what,
                            _one_line(str(error), 200), delay)
                time.sleep(delay)
                delay *= 2
        raise TrackingError(
            f"MLflow {what} failed on {self.masked_uri} after {self.retries + 1} attempts: "
            f"{_one_line(str(error), 300)}"
        ) from None

    def check(self) -> None:
        """Fail fast, before any training, when the store cannot be reached."""
        try:
            if _is_http(self.uri):
                self._call("connect", self._probe_http)
            elif "://" in self.uri and not self.uri.startswith("databricks"):
                self._call("connect", self._probe_database)
            self._call("connect", self.client.search_experiments, max_results=1)
        except TrackingError as e:
            raise TrackingError(
                f"MLflow tracking store {self.masked_uri} unreachable: {_after_colon(e)}; "
                "start the server or pass --tracking-uri"
            ) from None

    def _probe_http(self) -> None:
        # A plain GET with a short timeout: MLflow's own client would retry for minutes.
        parts = urllib.parse.urlsplit(self.uri)
        netloc = parts.hostname or ""
        if parts.port:
            netloc += f":{parts.port}"
        url = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path.rstrip("/") + "/health",
                                       "", ""))
        try:
            with urllib.request.urlopen(url, timeout=self.timeout):
                pass
        except urllib.error.HTTPError:
            return  # something answered: the server is there (a proxy may not know /health)

    def _probe_database(self) -> None:
        # One plain connection first: MLflow's store retries a dead database for ~100 s.
        if self.uri.startswith("sqlite:///"):
            import sqlite3

            path = Path(self.uri[len("sqlite:///"):])
            path.parent.mkdir(parents=True, exist_ok=True)
            with closing(sqlite3.connect(path, timeout=self.timeout)) as db:
                db.execute("select 1")
            return
        import sqlalchemy

        connect_args = ({"connect_timeout": max(1, int(self.timeout))}
                        if self.uri.startswith("postgresql") else {})
        engine = sqlalchemy.create_engine(self.uri, connect_args=connect_args)
        try:
            with engine.connect() as conn:
                conn.execute(sqlalchemy.text("select 1"))
        finally:
            engine.dispose()

    # -- the study ----------------------------------------------------------------------
    def create_study_run(self, study_name: str, config: dict[str, Any], *,
                         fresh: bool = False) -> tuple[str, str]:
        """The study's experiment and parent run, created once; asked again for the same
        study, returns the existing ones. `fresh=True` (a replaced study) starts a new parent
        run and marks the old one `superseded`. Returns (experiment_id, parent_run_id)."""
        from mlflow.entities import Param, RunTag

        experiment_id = self._experiment(study_name)
        parents = self._call(
            "search runs", self.client.search_runs, [experiment_id],
            filter_string="tags.role = 'study'", order_by=["attributes.start_time ASC"],
            max_results=50,
        )
        parents = [r for r in parents if r.data.tags.get("superseded") != "true"]
        if parents and not fresh:
            return experiment_id, parents[0].info.run_id
        for old in parents:
            self._call("tag run", self.client.set_tag, old.info.run_id, "superseded", "true")
        run = self._call(
            "create run", self.client.create_run, experiment_id, run_name=study_name,
            tags={"role": "study", "study": study_name},
        )
        params = [Param(k, v) for k, v in flatten_config(config).items()]
        self._log_batch(run.info.run_id, params=params,
                        tags=[RunTag("mlflow.note.content", _study_note(study_name, config))])
        # The parent stands for the study, not for a process: it is FINISHED at once (MLflow
        # still accepts its artifacts and metrics), so no worker's exit leaves it RUNNING.
        self._call("end run", self.client.set_terminated, run.info.run_id, "FINISHED")
        return experiment_id, run.info.run_id

    def _experiment(self, name: str) -> str:
        exp = self._call("get experiment", self.client.get_experiment_by_name, name)
        if exp is None:
            try:
                return self._call("create experiment", self.client.create_experiment, name,
                                  artifact_location=artifact_root(self.uri),
                                  tags={"celebhpo.study": name})
            except TrackingError:
                # Another process may have created it between our look and our create.
                exp = self._call("get experiment", self.client.get_experiment_by_name, name)
                if exp is None:
                    raise
        if exp.lifecycle_stage == "deleted":
            self._call("restore experiment", self.client.restore_experiment, exp.experiment_id)
        return exp.experiment_id

    # -- trials ----------------------------------------------------------------------
    def start_trial(self, experiment_id: str, parent_run_id: str, trial_number: int,
                    params: dict[str, Any], config: dict[str, Any],
                    tags: dict[str, Any] | None = None) -> TrialRun:
        """A RUNNING child run for one trial. `params` are the trial's searched values (they
        make the name); `config` is its resolved config (logged flattened); `tags` adds to
        study/trial_number/state/host (e.g. {"study": name, "device": "cuda:0"})."""
        from mlflow.entities import Param

        all_tags = {
            "mlflow.parentRunId": parent_run_id,
            "role": "trial",
            "trial_number": str(trial_number),
            "state": "RUNNING",
            "host": socket.gethostname(),
            "searched": ",".join(params),
        }
        for key, value in (tags or {}).items():
            all_tags[key] = _one_line(str(value), 5000)
        run = self._call(
            "create run", self.client.create_run, experiment_id,
            run_name=trial_run_name(trial_number, params), tags=all_tags,
        )
        trial_run = TrialRun(self, run.info.run_id, trial_number)
        self._log_batch(run.info.run_id,
                        params=[Param(k, v) for k, v in flatten_config(config).items()])
        return trial_run

    def _log_batch(self, run_id: str, *, metrics: Iterable = (), params: Iterable = (),
                   tags: Iterable = ()) -> None:
        metrics, params, tags = list(metrics), list(params), list(tags)
        while metrics or params or tags:
            self._call("log", self.client.log_batch, run_id, metrics=metrics[:_BATCH * 10],
                       params=params[:_BATCH], tags=tags[:_BATCH])
            metrics, params, tags = metrics[_BATCH * 10:], params[_BATCH:], tags[_BATCH:]

    def child_runs(self, parent_run_id: str, status: str | None = None) -> list:
        """The trial runs under a parent (mlflow Run objects), oldest first."""
        parent = self._call("get run", self.client.get_run, parent_run_id)
        query = f"tags.`mlflow.parentRunId` = '{parent_run_id}'"
        if status:
            query += f" and attributes.status = '{status}'"
        runs: list = []
        token = None
        while True:
            page = self._call("search runs", self.client.search_runs,
                              [parent.info.experiment_id], filter_string=query,
                              order_by=["attributes.start_time ASC"], max_results=1000,
                              page_token=token)
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    def close_orphan_runs(self, parent_run_id: str, trial_states: dict[int, str]) -> list[str]:
        """Close child runs left RUNNING by a killed worker. `trial_states` maps trial number
        -> Optuna state name; a RUNNING run whose trial Optuna considers over (COMPLETE,
        PRUNED, FAIL) is ended to match, with the reason tagged. Runs of trials Optuna still
        counts as RUNNING/WAITING (live on another worker) are left alone. Returns the ids."""
        closed = []
        for run in self.child_runs(parent_run_id, status="RUNNING"):
            try:
                number = int(run.data.tags.get("trial_number", ""))
            except ValueError:
                continue
            state = trial_states.get(number)
            if state not in RUN_STATUS:
                continue
            reason = (f"worker stopped before closing this run; Optuna marked trial {number} "
                      f"{state}")
            TrialRun(self, run.info.run_id, number).end(
                state, reason=reason if state == "FAIL" else None, quiet=False)
            if state != "FAIL":
                self._call("tag run", self.client.set_tag, run.info.run_id, "note", reason)
            closed.append(run.info.run_id)
        return closed

    # -- the parent run's summaries -------------------------------------------------------
    def refresh_parent(self, parent_run_id: str, study: optuna.Study,
                       leaderboard: pd.DataFrame | None = None) -> list[str]:
        """Re-log the parent run's leaderboard.csv, f1_by_attribute.png, Optuna plots (HTML)
        and best_trial_number/best_value metrics. A plot that cannot be drawn is skipped with
        a warning: a summary never fails a trial. Returns the artifact names written."""
        import optuna as _optuna

        written: list[str] = []
        with tempfile.TemporaryDirectory(prefix="celebhpo-parent-") as tmp:
            out = Path(tmp)
            if leaderboard is None:
                leaderboard = study.trials_dataframe()
            leaderboard.to_csv(out / "leaderboard.csv", index=False)
            written.append("leaderboard.csv")
            for name, draw in _parent_plots(study):
                try:
                    draw(out / name)
                    written.append(name)
                except Exception as e:  # noqa: BLE001 - a plot must never fail the study
                    log.warning("skipped %s for the parent run: %s", name, _one_line(str(e), 200))
            for name in written:
                self._call("log artifact", self.client.log_artifact, parent_run_id,
                           str(out / name), "summary" if name.endswith(".html") else None)

        from mlflow.entities import Metric

        done = [t for t in study.trials if t.state.is_finished()]
        complete = [t for t in done if t.state == _optuna.trial.TrialState.COMPLETE]
        now = int(time.time() * 1000)
        metrics = [Metric("finished_trials", len(done), now, len(done)),
                   Metric("complete_trials", len(complete), now, len(done))]
        if complete and len(study.directions) == 1:
            best = study.best_trial
            metrics += [Metric("best_trial_number", best.number, now, len(done)),
                        Metric("best_value", float(best.value), now, len(done))]
        self._log_batch(parent_run_id, metrics=metrics)
        self._call("end run", self.client.set_terminated, parent_run_id, "FINISHED")
        return written

    # -- checkpoints -----------------------------------------------------------------------
    def download_checkpoint(self, run_id: str, dst_dir: str | Path) -> Path:
        """The run's `model.pt`, downloaded into `dst_dir` (works against a server too)."""
        dst = Path(dst_dir)
        dst.mkdir(parents=True, exist_ok=True)
        names = {f.path for f in self._call("list artifacts", self.client.list_artifacts, run_id)}
        if "model.pt" not in names:
            raise TrackingError(
                f"MLflow run {run_id} in {self.masked_uri} has no model.pt artifact; with "
                "[study] checkpoints = 'best' only trials that were best when they ended keep one"
            )
        path = self._call("download artifact", self.client.download_artifacts, run_id,
                          "model.pt", str(dst))
        return Path(path)

    def register_model(self, name: str, run_id: str, folder: str | Path, files: list[str],
                       tags: dict[str, str] | None = None) -> str:
        """Log `folder`/`files` (an export) to the run under `export/`, register them as a new
        version of model `name` and point its alias `best` at it (aliases, not the
        deprecated stages). Returns the version."""
        for f in files:
            self._call("log artifact", self.client.log_artifact, run_id,
                       str(Path(folder) / f), "export")
        found = self._call("search models", self.client.search_registered_models,
                           filter_string=f"name = '{name}'")
        if not found:
            self._call("create model", self.client.create_registered_model, name,
                       description="celebhpo export-best: 40 face-attribute classifier")
        version = self._call(
            "create model version", self.client.create_model_version, name,
            source=f"runs:/{run_id}/export", run_id=run_id,
            tags={k: mask_url(str(v)) for k, v in (tags or {}).items()},
        )
        self._call("set alias", self.client.set_registered_model_alias, name, "best",
                   version.version)
        return str(version.version)


class TrialRun:
    """One trial's child run. Made by `Tracker.start_trial`; ended once by `end`."""

    def __init__(self, tracker: Tracker, run_id: str, trial_number: int) -> None:
        self.tracker = tracker
        self.run_id = run_id
        self.trial_number = trial_number
        self.ended = False

    def __repr__(self) -> str:
        return f"TrialRun(t{self.trial_number:03d}, {self.run_id})"

    def log_epoch(self, epoch: int, metrics: dict[str, Any]) -> None:
        """One epoch's metrics with step = epoch, as the epoch ends (live curves in the UI)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [
            Metric(k, float(v), now, int(epoch)) for k, v in metrics.items()
            if k != "epoch" and isinstance(v, int | float) and not isinstance(v, bool)
        ]
        self.tracker._log_batch(self.run_id, metrics=batch)

    def log_result(self, result: Any, config: dict[str, Any], log_checkpoint: bool = True
                   ) -> dict[str, Any]:
        """The finished trial: best-epoch metrics (`best_*`), classification_report.csv/.json,
        thresholds.json, curves.png, config.json and (if `log_checkpoint`) model.pt.

        `result` is a train.FitResult. Returns {"f1_by_attribute": {attribute: F1}} for the
        objective to store as a trial user attr (the parent's heatmap reads it)."""
        from mlflow.entities import Metric

        from celebhpo.tracking import plots

        now = int(time.time() * 1000)
        best = [Metric(f"best_{k}", float(v), now, 0) for k, v in result.best_metrics.items()
                if isinstance(v, int | float) and not isinstance(v, bool) and k != "epoch"]
        best.append(Metric("best_epoch", float(result.best_epoch), now, 0))
        self.tracker._log_batch(self.run_id, metrics=best)

        report = result.report
        f1 = f1_by_attribute(report)
        with tempfile.TemporaryDirectory(prefix="celebhpo-trial-") as tmp:
            out = Path(tmp)
            report.to_csv(out / "classification_report.csv", index="attribute" not in report)
            (out / "classification_report.json").write_text(
                json.dumps(_report_json(report), indent=2, default=float))
            (out / "thresholds.json").write_text(json.dumps(
                dict(zip(f1, [float(t) for t in result.thresholds], strict=True)), indent=2))
            (out / "config.json").write_text(mask_url(json.dumps(config, indent=2, default=str)))
            files = ["classification_report.csv", "classification_report.json",
                     "thresholds.json", "config.json"]
            try:
                plots.training_curves(result.history, out / "curves.png",
                                      title=f"trial {self.trial_number}")
                files.append("curves.png")
            except Exception as e:  # noqa: BLE001 - a plot must never fail the trial
                log.warning("skipped curves.png for trial %d: %s", self.trial_number,
                            _one_line(str(e), 200))
            for name in files:
                self.tracker._call("log artifact", self.tracker.client.log_artifact,
                                   self.run_id, str(out / name))
        ckpt = getattr(result, "checkpoint_path", None)
        if log_checkpoint and ckpt is not None and Path(ckpt).is_file():
            if Path(ckpt).name == "model.pt":
                self.tracker._call("log checkpoint", self.tracker.client.log_artifact,
                                   self.run_id, str(ckpt))
            else:  # the artifact is always model.pt, whatever the worker called its file
                with tempfile.TemporaryDirectory(prefix="celebhpo-ckpt-") as tmp:
                    link = Path(tmp) / "model.pt"
                    try:
                        os.link(ckpt, link)
                    except OSError:
                        import shutil

                        shutil.copyfile(ckpt, link)
                    self.tracker._call("log checkpoint", self.tracker.client.log_artifact,
                                       self.run_id, str(link))
        return {"f1_by_attribute": f1}

    def end(self, state: str, reason: str | None = None, pruned_at: int | None = None, *,
            quiet: bool = True) -> bool:
        """End the run: COMPLETE -> FINISHED, PRUNED -> KILLED (tag state=PRUNED,
        pruned_at_epoch), FAIL -> FAILED (tag error = the reason, masked, one line).

        Meant for a `finally:` block: with `quiet` (the default) a store that stays
        unreachable is logged as a warning, not raised, so the trial's own error is what the
        user sees; `close_orphan_runs` ends such a run later. Returns whether it was recorded.
        """
        from mlflow.entities import RunTag

        if state not in RUN_STATUS:
            raise TrackingError(f"trial run state {state!r} is not one of {', '.join(RUN_STATUS)}")
        if self.ended:
            return True
        tags = [RunTag("state", state)]
        if state == "PRUNED" and pruned_at is not None:
            tags.append(RunTag("pruned_at_epoch", str(pruned_at)))
        if reason:
            tags.append(RunTag("error" if state == "FAIL" else "reason", _one_line(reason)))
        try:
            self.tracker._log_batch(self.run_id, tags=tags)
            self.tracker._call("end run", self.tracker.client.set_terminated, self.run_id,
                               RUN_STATUS[state])
        except TrackingError as e:
            if not quiet:
                raise
            log.warning("could not end MLflow run of trial %d: %s", self.trial_number, e)
            return False
        self.ended = True
        return True


# -- helpers -------------------------------------------------------------------------------
def _after_colon(error: TrackingError) -> str:
    text = str(error)
    return text.split(": ", 1)[1] if ": " in text else text


def _study_note(study_name: str, config: dict[str, Any]) -> str:
    space = config.get("space", {})
    searched = ", ".join(space) if space else "nothing (a fixed configuration)"
    return (f"celebhpo study **{study_name}**: one child run per trial; searched: {searched}. "
            "Artifacts: leaderboard.csv, f1_by_attribute.png, summary/*.html (Optuna plots).")


def _report_json(report: pd.DataFrame) -> Any:
    try:
        from celebhpo.training.metrics import report_to_dict

        return report_to_dict(report)
    except ImportError:
        frame = report if "attribute" in report.columns else report.rename_axis("attribute")
        return frame.reset_index(drop="attribute" in report.columns).to_dict(orient="records")


def _parent_plots(study: optuna.Study) -> list[tuple[str, Callable[[Path], None]]]:
    """(artifact name, drawer) for each parent plot that makes sense for this study now."""
    import optuna as _optuna

    from celebhpo.tracking import plots

    complete = study.get_trials(deepcopy=False, states=(_optuna.trial.TrialState.COMPLETE,))
    vis = _optuna.visualization

    def html(make: Callable[[optuna.Study], Any]) -> Callable[[Path], None]:
        # plotly.js from its CDN: a full copy would add 3.5 MB to every file on every refresh
        return lambda path: make(study).write_html(str(path), include_plotlyjs="cdn")

    out: list[tuple[str, Callable[[Path], None]]] = [
        ("f1_by_attribute.png", lambda path: plots.f1_heatmap_from_study(study, path)),
    ]
    if complete and len(study.directions) == 1:
        out.append(("optimization_history.html", html(vis.plot_optimization_history)))
        if len({k for t in complete for k in t.params}) >= 1:
            out.append(("parallel_coordinate.html", html(vis.plot_parallel_coordinate)))
        varied = {k for k in {k for t in complete for k in t.params}
                  if len({repr(t.params.get(k)) for t in complete}) > 1}
        if len(complete) >= 2 and len(varied) > 1:
            out.append(("param_importances.html", html(vis.plot_param_importances)))
    if any(t.intermediate_values for t in study.get_trials(deepcopy=False)):
        out.append(("intermediate_values.html", html(vis.plot_intermediate_values)))
    return out
