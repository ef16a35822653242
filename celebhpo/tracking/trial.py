"""One trial's child run: its name, params and tags, per-epoch metrics, report and checkpoint.

A run is RUNNING from `start_trial` until `TrialRun.end` maps the Optuna state onto an MLflow
status: COMPLETE -> FINISHED, PRUNED -> KILLED (tag state=PRUNED), FAIL -> FAILED (tag error).
Every trial keeps its config (config.json, from the start) and its per-epoch metrics; a
finished or pruned one curves.png too (a pruned run draws it as it ends), a finished one its
best-epoch metrics and tables (trial_files).

Params: the trial's resolved config, flat; each searched key under its config name
(names.param_name: `train.lr`) with the trial's value, where the parent run has its
choices or range. `train.device` is the study's device setting on both runs (`auto` unless
the study names one); the tag `device` says where the trial trained (`cpu`, `cuda:0`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.entities import Metric, Param, RunTag

from celebhpo.errors import TrackingError, mask_url
from celebhpo.tracking.client import Tracker, one_line
from celebhpo.tracking.metadata import (
    log_dataset,
    source_tags,
    start_system_metrics,
    stop_system_metrics,
)
from celebhpo.tracking.names import (
    BEST_EPOCH_PREFIX,
    mlflow_metric,
    param_name,
    trial_run_name,
)
from celebhpo.tracking.run import RunHandle
from celebhpo.tracking.trial_files import (
    best_epoch_metrics,
    write_config,
    write_curves,
    write_result_files,
)

__all__ = ["BEST_EPOCH_PREFIX", "RUN_ID_ATTR", "RUN_STATUS", "TrialRun", "f1_by_attribute",
           "flatten_config", "start_trial", "trial_params", "trial_run_name"]

log = logging.getLogger(__name__)

RUN_ID_ATTR = "mlflow_run_id"  # the trial user attr naming its run (export-best reads it)
# Optuna state -> MLflow run status
RUN_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}
_PARAM_CHARS = 6000  # MLflow's limit on a param value


# -- flattening ------------------------------------------------------------------------------
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


def f1_by_attribute(report: pd.DataFrame) -> dict[str, float | None]:
    """Per-attribute F1 at the tuned thresholds (`f1_tuned`; `f1`, at 0.5, when the report has
    no tuned column), from a `training.metrics.per_class_report`. The objective stores this as
    the trial user attr `f1_by_attribute`, which the parent run's heatmap reads without
    downloading any artifact."""
    col = next((c for c in ("f1_tuned", "f1") if c in report.columns), None)
    if col is None:
        raise TrackingError("classification report has no F1 column; cannot build the heatmap")
    # None, not NaN, where F1 is undefined: Optuna stores user attrs as JSON, and strict
    # JSON readers (optuna-dashboard in a browser) reject NaN
    return {str(a): float(v) if math.isfinite(float(v)) else None
            for a, v in zip(report["attribute"], report[col], strict=True)}


def trial_params(config: dict[str, Any], study_device: str | None = None) -> dict[str, str]:
    """A trial run's params: its resolved config, flat, less the `[space]` table (each
    searched key is a param at its config name with the trial's value; the parent run holds
    the choices). `study_device`, the parent's `train.device`, stands for `train.device`
    (unless the device is searched): both runs then say the study's setting, not a
    worker's `--device` (the tag `device` says where the trial trained)."""
    flat = flatten_config({k: v for k, v in config.items() if k != "space"})
    if study_device is not None and "train.device" in flat and (
            "device" not in (config.get("space") or {})):
        flat["train.device"] = study_device
    return flat


# -- the run ----------------------------------------------------------------------------------
def start_trial(tracker: Tracker, experiment_id: str, parent_run_id: str, trial_number: int,
                params: dict[str, Any], config: dict[str, Any],
                tags: dict[str, Any] | None = None) -> TrialRun:
    """A RUNNING child run for one trial. `params` are the trial's searched values (they
    make the name); `config` is its resolved config (its params: `trial_params`; config.json;
    its data set as an MLflow dataset input); `tags` adds to study/trial_number/state/host,
    `searched` (the searched params' names) and the source tags (metadata.source_tags)
    (e.g. {"study": name, "device": "cuda:0"})."""
    all_tags = {
        **source_tags(),
        "mlflow.parentRunId": parent_run_id,
        "role": "trial",
        "trial_number": str(trial_number),
        "state": "RUNNING",
        "host": socket.gethostname(),
        "searched": ",".join(param_name(k) for k in params),
    }
    for key, value in (tags or {}).items():
        all_tags[key] = one_line(str(value), 5000)
    name = trial_run_name(trial_number, params)
    run = tracker.create_run(experiment_id, name, all_tags)
    trial_run = TrialRun(tracker, run.info.run_id, trial_number, name)
    parent = tracker.call("get run", tracker.client.get_run, parent_run_id)
    flat = trial_params(config, parent.data.params.get("train.device"))
    tracker.log_batch(run.info.run_id, params=[Param(k, v) for k, v in flat.items()])
    trial_run.log_config(config)
    log_dataset(tracker, run.info.run_id, config.get("data") or {})
    if (config.get("study") or {}).get("system_metrics"):
        trial_run.monitor = start_system_metrics(tracker.uri, run.info.run_id)
    return trial_run


class TrialRun(RunHandle):
    """One trial's child run. Made by `start_trial`; ended once by `end`."""

    def __init__(self, tracker: Tracker, run_id: str, trial_number: int,
                 name: str | None = None) -> None:
        super().__init__(tracker, run_id)
        self.trial_number = trial_number
        self.name = name  # the run name; looked up when a pruned run is renamed, if None
        self.monitor: Any = None  # MLflow's system metrics monitor, when [study] asks for it
        self.ended = False
        self.history: list[dict[str, Any]] = []  # the epochs logged (a pruned run's curves.png)
        self.config_logged = False

    def __repr__(self) -> str:
        return f"TrialRun(t{self.trial_number:03d}, {self.run_id})"

    def log_epoch(self, epoch: int, metrics: dict[str, Any]) -> None:
        """One epoch's metrics with step = epoch, as the epoch ends (live curves in the UI)."""
        self.history.append(dict(metrics, epoch=epoch))
        now = int(time.time() * 1000)
        batch = [
            Metric(mlflow_metric(k), float(v), now, int(epoch)) for k, v in metrics.items()
            if k != "epoch" and isinstance(v, int | float) and not isinstance(v, bool)
        ]
        self.tracker.log_batch(self.run_id, metrics=batch)

    def log_config(self, config: dict[str, Any]) -> None:
        """config.json: the trial's resolved config (logged as the run starts)."""
        self._log_files(lambda out: [write_config(config, out)])
        self.config_logged = True

    def _log_files(self, write: Any) -> None:
        """The files `write(folder)` makes in a temporary folder (it returns their names),
        logged at the top of the run's artifacts."""
        with tempfile.TemporaryDirectory(prefix="celebhpo-trial-") as tmp:
            for name in write(Path(tmp)):
                self.tracker.call("log artifact", self.tracker.client.log_artifact,
                                   self.run_id, str(Path(tmp) / name))

    def log_result(self, result: Any, config: dict[str, Any], log_checkpoint: bool = True
                   ) -> dict[str, Any]:
        """The finished trial: `best_epoch/*` metrics (trial_files.best_epoch_metrics: the
        best epoch's figures no curve shows, step 0; MLflow's chart view puts them in a
        section of their own, apart from the per-epoch curves), the files of
        trial_files.write_result_files (the per-attribute and per-group tables as CSV/JSON and
        PNG, best_epoch.json, thresholds.json, curves.png), config.json (unless logged at the
        start) and (if `log_checkpoint`) model.pt.

        `result` is a train.FitResult. Returns {"f1_by_attribute": {attribute: F1}} for the
        objective to store as a trial user attr (the parent's heatmap reads it)."""
        now = int(time.time() * 1000)
        self.tracker.log_batch(self.run_id, metrics=[
            Metric(k, v, now, 0) for k, v in best_epoch_metrics(result).items()])
        f1 = f1_by_attribute(result.report)
        title = f"trial {self.trial_number}"
        self._log_files(lambda out: write_result_files(result, out, title) + (
            [] if self.config_logged else [write_config(config, out)]))
        self.config_logged = True
        ckpt = getattr(result, "checkpoint_path", None)
        if log_checkpoint and ckpt is not None and Path(ckpt).is_file():
            self._log_checkpoint(Path(ckpt))
        return {"f1_by_attribute": f1}

    def _log_checkpoint(self, ckpt: Path) -> None:
        if ckpt.name == "model.pt":
            self.tracker.call("log checkpoint", self.tracker.client.log_artifact,
                               self.run_id, str(ckpt))
            return
        # the artifact is always model.pt, whatever the worker called its file
        with tempfile.TemporaryDirectory(prefix="celebhpo-ckpt-") as tmp:
            link = Path(tmp) / "model.pt"
            try:
                os.link(ckpt, link)
            except OSError:
                shutil.copyfile(ckpt, link)
            self.tracker.call("log checkpoint", self.tracker.client.log_artifact,
                               self.run_id, str(link))

    def end(self, state: str, reason: str | None = None, pruned_at: int | None = None, *,
            quiet: bool = True) -> bool:
        """End the run: COMPLETE -> FINISHED, PRUNED -> KILLED (tag state=PRUNED,
        pruned_at_epoch; the name gets ` [pruned@N]` and the description says so, since the UI
        shows KILLED and FAILED alike), FAIL -> FAILED (tag error = the reason, masked, one line).
        A pruned run gets curves.png of the epochs it logged, as a finished one has from
        `log_result` (not a failed one: a stopping worker would wait for the drawing).

        Meant for a `finally:` block: with `quiet` (the default) a store that stays
        unreachable is logged as a warning, not raised, so the trial's own error is what the
        user sees; `close_orphan_runs` ends such a run later. Returns whether it was recorded.
        """
        if state not in RUN_STATUS:
            raise TrackingError(f"trial run state {state!r} is not one of {', '.join(RUN_STATUS)}")
        if self.ended:
            return True
        if self.monitor is not None:
            stop_system_metrics(self.monitor)
            self.monitor = None
        tags = [RunTag("state", state)]
        if state == "PRUNED" and pruned_at is not None:
            tags.append(RunTag("pruned_at_epoch", str(pruned_at)))
        if reason:
            tags.append(RunTag("error" if state == "FAIL" else "reason", one_line(reason)))
        if state == "PRUNED" and self.history:
            self._log_pruned_curves()
        try:
            if state in ("PRUNED", "FAIL"):
                tags += self._end_name_and_note(state, reason, pruned_at)
            self.tracker.log_batch(self.run_id, tags=tags)
            self.tracker.call("end run", self.tracker.client.set_terminated, self.run_id,
                               RUN_STATUS[state])
        except TrackingError as e:
            if not quiet:
                raise
            log.warning("could not end MLflow run of trial %d: %s", self.trial_number, e)
            return False
        self.ended = True
        return True

    def _log_pruned_curves(self) -> None:
        """curves.png of a pruned run; a store that refuses it is a warning (the run still
        ends, with its curves as metrics)."""
        title = f"trial {self.trial_number} (pruned)"
        try:
            self._log_files(lambda out: write_curves(self.history, out, title))
        except TrackingError as e:
            log.warning("no curves.png for pruned trial %d: %s", self.trial_number, e)

    def _end_name_and_note(self, state: str, reason: str | None, pruned_at: int | None
                           ) -> list[RunTag]:
        """The run name and description of a pruned or failed run: `t003 ... [pruned@1]`."""
        if self.name is None:
            self.name = self.tracker.call("get run", self.tracker.client.get_run,
                                          self.run_id).info.run_name
        if state == "PRUNED":
            at = f"@{pruned_at}" if pruned_at is not None else ""
            mark = f" [pruned{at}]"
            note = (f"Pruned{f' after epoch {pruned_at}' if pruned_at is not None else ''}: "
                    "the pruner stopped this trial early (its curve fell behind the others). "
                    "MLflow shows it KILLED; it did not fail.")
        else:
            mark = " [failed]"
            note = f"Failed: {one_line(reason or 'unknown error')}"
        name = self.name if self.name.endswith(mark) else self.name + mark
        self.name = name
        return [RunTag("mlflow.runName", name), RunTag("mlflow.note.content", note)]
