"""`celebhpo study show` prints exactly this, in each format (sqlite-utils style): a small real
study whose trials are told fixed values and user attrs, so nothing depends on training or
timing."""

from __future__ import annotations

import optuna
import pytest
from click.testing import CliRunner

from celebhpo.cli import cli
from celebhpo.config import load_study_file
from celebhpo.hpo import create_study, load_study
from celebhpo.hpo.liveness import requeue
from tests.helpers import write_study

TS = optuna.trial.TrialState


@pytest.fixture(scope="module")
def storage(tmp_path_factory) -> str:
    """Study 'show': two COMPLETE trials, a PRUNED one, a FAIL re-queued as a WAITING one."""
    tmp = tmp_path_factory.mktemp("show")
    storage = f"sqlite:///{tmp / 'optuna.db'}"
    cfg = load_study_file(write_study(tmp / "s.toml", tmp / "data", name="show",
                                      sampler="random", space="lr = [0.003, 0.03]"))
    create_study(cfg, storage=storage, tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}")
    study, _ = load_study("show", storage)

    def trial(lr: float, attrs: dict, reported: list[float], **tell) -> None:
        study.enqueue_trial({"lr": lr})
        t = study.ask()
        t.suggest_categorical("lr", [0.003, 0.03])
        for key, value in attrs.items():
            t.set_user_attr(key, value)
        for epoch, value in enumerate(reported, 1):
            t.report(value, epoch)
        study.tell(t, **tell)

    trial(0.003, {"val_mean_acc": 0.81, "val_map": 0.55, "epochs_run": 2, "duration_s": 12.5,
                  "best_epoch": 2}, [0.7, 0.5], values=0.5)
    trial(0.03, {"epochs_run": 1, "pruned_at": 1, "duration_s": 3.25}, [0.9], state=TS.PRUNED)
    trial(0.03, {"epochs_run": 1, "fail_reason": "loss is nan at epoch 1", "duration_s": 1.0},
          [], state=TS.FAIL)
    trial(0.003, {"val_mean_acc": 0.8375, "val_map": 0.6, "epochs_run": 2, "duration_s": 11.0,
                  "best_epoch": 2}, [0.6, 0.4125], values=0.4125)
    requeue(study, study.trials[2])
    return storage


TABLE = [
    " trial    state    lr  val_loss best_epoch  val_mean_acc  val_map epochs  duration_s"
    "                                      note",
    "     3 COMPLETE 0.003    0.4125          2        0.8375      0.6      2          11"
    "                                          ",
    "     0 COMPLETE 0.003       0.5          2          0.81     0.55      2        12.5"
    "                                          ",
    "     1   PRUNED  0.03       0.9          -             -        -      1        3.25"
    "                         pruned at epoch 1",
    "     4  WAITING  0.03         -          -             -        -      -           -"
    "                                          ",
    "     2     FAIL  0.03         -          -             -        -      1           1"
    " loss is nan at epoch 1; re-run as trial 4",
]

CSV = [
    "trial,state,lr,val_loss,best_epoch,val_mean_acc,val_map,epochs,duration_s,note",
    "3,COMPLETE,0.003,0.4125,2,0.8375,0.6,2,11.0,",
    "0,COMPLETE,0.003,0.5,2,0.81,0.55,2,12.5,",
    "1,PRUNED,0.03,0.9,,,,1,3.25,pruned at epoch 1",
    "4,WAITING,0.03,,,,,,,",
    "2,FAIL,0.03,,,,,1,1.0,loss is nan at epoch 1; re-run as trial 4",
]


def _record(trial: int, state: str, lr: float, val_loss: str, best: str, acc: str, map_: str,
            epochs: str, duration: str, note: str) -> list[str]:
    return ["  {", f'    "trial":{trial},', f'    "state":"{state}",', f'    "lr":{lr},',
            f'    "val_loss":{val_loss},', f'    "best_epoch":{best},',
            f'    "val_mean_acc":{acc},', f'    "val_map":{map_},',
            f'    "epochs":{epochs},', f'    "duration_s":{duration},', f'    "note":"{note}"',
            "  }"]


RECORDS = [
    _record(3, "COMPLETE", 0.003, "0.4125", "2", "0.8375", "0.6", "2", "11.0", ""),
    _record(0, "COMPLETE", 0.003, "0.5", "2", "0.81", "0.55", "2", "12.5", ""),
    _record(1, "PRUNED", 0.03, "0.9", "null", "null", "null", "1", "3.25", "pruned at epoch 1"),
    _record(4, "WAITING", 0.03, "null", "null", "null", "null", "null", "null", ""),
    _record(2, "FAIL", 0.03, "null", "null", "null", "null", "1", "1.0",
            "loss is nan at epoch 1; re-run as trial 4"),
]
JSON = ["[", *[line for i, rec in enumerate(RECORDS)
               for line in (rec if i == len(RECORDS) - 1 else [*rec[:-1], "  },"])], "]"]


@pytest.mark.parametrize(("fmt", "expected"), [("table", TABLE), ("csv", CSV), ("json", JSON)])
def test_study_show_prints_exactly(storage: str, fmt: str, expected: list[str]):
    result = CliRunner().invoke(cli, ["study", "show", "show", "--storage", storage,
                                      "--format", fmt])
    assert result.exit_code == 0, result.output
    assert result.output == "\n".join(expected) + "\n"


def test_study_show_without_a_study_says_which_exist(storage: str):
    result = CliRunner().invoke(cli, ["study", "show", "nope", "--storage", storage])
    assert result.exit_code == 1
    assert result.output == (f"Error: study 'nope' not found in {storage}; "
                             "studies there: show\n")
