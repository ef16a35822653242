"""make_pruner against a real Optuna study: epochs are steps counted from 1, and the pruner
settings mean what a user reads in the study file."""

from __future__ import annotations

import optuna
import pytest

from celebhpo.config import load_study_file
from celebhpo.errors import ConfigError
from celebhpo.hpo import create_study
from celebhpo.hpo.space import make_pruner
from tests.helpers import write_study

GOOD = [0.50, 0.40, 0.30, 0.25]  # val_loss per epoch of the reference trials
BAD = [5.0, 5.0, 5.0, 5.0]  # far worse than the median at every epoch


def _pruner(tmp_path, pruner: str, settings: str) -> optuna.pruners.BasePruner:
    cfg = load_study_file(write_study(tmp_path / "s.toml", tmp_path / "data", pruner=pruner,
                                      epochs=len(GOOD), study_extra=settings))
    return make_pruner(cfg)


def _run(study: optuna.Study, curve: list[float]) -> int | None:
    """Report `curve` epoch by epoch (step = epoch, from 1) as the trial reporter does; the
    epoch the pruner stopped the trial at, or None when it completed."""
    trial = study.ask()
    for epoch, value in enumerate(curve, start=1):
        trial.report(value, epoch)
        if trial.should_prune():
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            return epoch
    study.tell(trial, min(curve))
    return None


def _pruned_at(pruner: optuna.pruners.BasePruner, n_reference: int = 2) -> int | None:
    study = optuna.create_study(direction="minimize", pruner=pruner)
    for _ in range(n_reference):
        assert _run(study, GOOD) is None
    return _run(study, BAD)


@pytest.mark.parametrize("pruner", ["median", "percentile"])
@pytest.mark.parametrize("warmup", [0, 1, 2])
def test_warmup_epochs_are_never_pruned(tmp_path, pruner, warmup):
    # n_warmup_steps = k: epochs 1..k run whatever the value; the first judged is k + 1
    p = _pruner(tmp_path, pruner, f"n_startup_trials = 1\nn_warmup_steps = {warmup}\n"
                                  "percentile = 50.0")
    assert _pruned_at(p) == warmup + 1


def test_warmup_one_keeps_epoch_one(tmp_path):
    # the case: a trial far worse than the median is not pruned at epoch 1 with
    # n_warmup_steps = 1, but is at epoch 2; with 0 it is pruned at epoch 1
    one = _pruner(tmp_path, "median", "n_startup_trials = 1\nn_warmup_steps = 1")
    zero = _pruner(tmp_path, "median", "n_startup_trials = 1\nn_warmup_steps = 0")
    assert (_pruned_at(one), _pruned_at(zero)) == (2, 1)


def test_startup_trials_must_complete_first(tmp_path):
    # n_startup_trials = 2: one completed reference trial never decides
    p = _pruner(tmp_path, "median", "n_startup_trials = 2\nn_warmup_steps = 0")
    assert _pruned_at(p, n_reference=1) is None
    p = _pruner(tmp_path, "median", "n_startup_trials = 2\nn_warmup_steps = 0")
    assert _pruned_at(p, n_reference=2) == 1


@pytest.mark.parametrize("min_resource", [1, 2])
def test_first_rung_is_at_epoch_min_resource(tmp_path, min_resource):
    # successive halving judges its rungs at epochs min_resource * reduction_factor**r
    # (hyperband runs several of these, the r-th bracket starting at rung r)
    p = _pruner(tmp_path, "successive_halving",
                f"min_resource = {min_resource}\nreduction_factor = 3")
    assert _pruned_at(p) == min_resource


def test_negative_warmup_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"s\.toml: \[study\] n_warmup_steps = -1 must be >= 0"):
        _pruner(tmp_path, "median", "n_warmup_steps = -1")


def test_optuna_range_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match=r"s\.toml: \[study\] pruner = 'median': .*startup"):
        _pruner(tmp_path, "median", "n_startup_trials = -1")


def test_tpe_workers_use_the_constant_liar(tmp_path, synth_root):
    """Issue 14: several TPE workers must not propose what a running trial already tries."""
    from celebhpo.hpo.studies import open_study

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    cfg = load_study_file(write_study(tmp_path / "s.toml", synth_root, name="liar",
                                      sampler="tpe", space="lr = { low = 0.001, high = 0.1 }"))
    create_study(cfg, storage=storage, tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    worker, _, _ = open_study("liar", storage, worker=True)
    reader, _, _ = open_study("liar", storage)
    assert worker.sampler._constant_liar and not reader.sampler._constant_liar
