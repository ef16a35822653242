"""A re-queue that a dead worker left half done, and a re-run queued twice (hpo/retry.py):
found by the soak test (benchmarks/soak.py). The states are the ones a worker killed between
its two writes leaves behind, made with Optuna's own calls; then a real `optimize` runs."""

from __future__ import annotations

import optuna
import pytest

from celebhpo.config import load_study_file
from celebhpo.hpo import create_study, leaderboard, load_study, optimize
from celebhpo.hpo.liveness import DUPLICATE_OF, RETRY_WANTED, claim_waiting_trial, requeue
from celebhpo.hpo.retry import retry_history
from tests.helpers import assert_grid_done_once, write_study

TS = optuna.trial.TrialState


def _study(tmp_path, synth_root, name: str) -> tuple[optuna.Study, str, str]:
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    cfg = load_study_file(write_study(tmp_path / "s.toml", synth_root, name=name))
    create_study(cfg, storage=storage, grid=True, tracking_uri=uri)
    return load_study(name, storage)[0], storage, uri


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")  # its helper
@pytest.mark.parametrize("how", ["marked", "heartbeat"])
def test_a_failed_trial_whose_requeue_never_happened_is_requeued(tmp_path, synth_root, how):
    """The worker failed its (or a dead worker's) trial and died before queueing the re-run:
    `marked` = celebhpo's own fail (reason + RETRY_WANTED), `heartbeat` = Optuna's stale-trial
    fail (no reason). The next worker re-queues it and the grid still completes once."""
    study, storage, uri = _study(tmp_path, synth_root, f"orphan-{how}")
    trial = claim_waiting_trial(study)
    if how == "marked":
        trial.set_user_attr("fail_reason", "worker pid 1 died while running it")
        trial.set_user_attr(RETRY_WANTED, True)
    study.tell(trial, state=TS.FAIL)  # ... and nothing more: the worker died here
    summary = optimize(study_name=f"orphan-{how}", storage=storage, tracking_uri=uri,
                       progress=False)
    assert summary.stopped == "the grid is exhausted"
    assert_grid_done_once(storage, f"orphan-{how}", uri, points=2)
    trials = load_study(f"orphan-{how}", storage)[0].get_trials()
    assert [retry_history(t) for t in trials if retry_history(t)] == [[trial.number]]
    # kept where Optuna's own helper reads it
    assert [optuna.storages.RetryFailedTrialCallback.retry_history(t) for t in trials
            if retry_history(t)] == [[trial.number]]


def test_a_trial_that_failed_on_its_own_is_not_requeued(tmp_path, synth_root):
    study, storage, uri = _study(tmp_path, synth_root, "diverged")
    trial = claim_waiting_trial(study)
    trial.set_user_attr("fail_reason", "training loss became NaN/inf at epoch 1")
    study.tell(trial, state=TS.FAIL)
    optimize(study_name="diverged", storage=storage, tracking_uri=uri, progress=False)
    trials = load_study("diverged", storage)[0].get_trials()
    assert [t.state for t in trials].count(TS.COMPLETE) == 1
    assert not [t for t in trials if retry_history(t)]


def test_a_rerun_queued_twice_runs_once(tmp_path, synth_root):
    """Two workers both re-queued the same trial: the claim keeps the lower-numbered re-run
    and fails the other as its duplicate, without an MLflow run or a place in --trials."""
    study, storage, uri = _study(tmp_path, synth_root, "twice")
    trial = claim_waiting_trial(study)
    trial.set_user_attr("fail_reason", "lost")
    study.tell(trial, state=TS.FAIL)
    frozen = study.get_trials()[trial.number]
    requeue(study, frozen)
    requeue(study, frozen)
    optimize(study_name="twice", storage=storage, tracking_uri=uri, progress=False)
    assert_grid_done_once(storage, "twice", uri, points=2)
    trials = load_study("twice", storage)[0].get_trials()
    reruns = [t for t in trials if retry_history(t) == [trial.number]]
    assert [t.state for t in reruns] == [TS.COMPLETE, TS.FAIL]
    assert reruns[1].user_attrs[DUPLICATE_OF] == reruns[0].number
    assert "mlflow_run_id" not in reruns[1].user_attrs
    board = leaderboard(load_study("twice", storage)[0]).set_index("trial")
    assert board.loc[trial.number, "note"] == f"lost; re-run as trial {reruns[0].number}"
