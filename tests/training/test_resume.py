"""fit's resume state: a run resumed after epoch k equals the uninterrupted run (CPU), the
state file is plain (weights_only) and written atomically, and a state is refused for another
configuration or data. Tiny arch, 16 px, real files."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from celebhpo.errors import CheckpointError
from celebhpo.training.checkpoint import Checkpoint, load_resume_state, save_resume_state
from celebhpo.training.epoch import EvalOutput
from celebhpo.training.loop import Callback, FitResult, fit
from celebhpo.training.resume import BestEpoch, _restore_rng, capture_state, fingerprint
from tests.training.test_loop import TIMING, _bundle, _cfg


class _Epochs(Callback):
    """The epochs fit trains (batches seen) and reports."""

    def __init__(self) -> None:
        self.trained: list[int] = []
        self.reported: list[int] = []

    def on_batch_end(self, epoch, batch, n_batches):
        if batch == 0:
            self.trained.append(epoch)

    def on_epoch_end(self, epoch, metrics):
        self.reported.append(epoch)


def _states(folder):
    """on_state that writes every epoch's state to `folder`/state-<epoch>.pt."""
    def save(state):
        save_resume_state(folder / f"state-{state['epoch']}.pt", state)
    return save


def _rows(result: FitResult) -> list[dict]:
    return [{k: v for k, v in h.items() if k not in TIMING} for h in result.history]


def _assert_same(a: FitResult, b: FitResult, ckpt_a, ckpt_b) -> None:
    assert len(a.history) == len(b.history)
    for ra, rb in zip(_rows(a), _rows(b), strict=True):
        assert ra == pytest.approx(rb, rel=1e-6, abs=1e-7)
    assert a.best_epoch == b.best_epoch and a.stopped_early == b.stopped_early
    assert np.allclose(a.thresholds, b.thresholds, atol=1e-6)
    assert a.best_metrics.keys() == b.best_metrics.keys()
    assert {k: v for k, v in a.best_metrics.items() if k not in TIMING} == pytest.approx(
        {k: v for k, v in b.best_metrics.items() if k not in TIMING}, rel=1e-6, abs=1e-7)
    wa, wb = Checkpoint.load(ckpt_a).state_dict, Checkpoint.load(ckpt_b).state_dict
    assert wa.keys() == wb.keys()
    assert max(float((wa[k].double() - wb[k].double()).abs().max()) for k in wa) <= 1e-6


# dropout (torch RNG), a cosine schedule with warm-up (scheduler state), Adam (its moments)
_CFG = dict(epochs=4, dropout=0.3, scheduler="cosine", warmup_epochs=1, lr=5e-3)


@pytest.mark.parametrize("k", [1, 2, 4])
def test_a_fit_resumed_after_epoch_k_equals_the_uninterrupted_one(tmp_path, k):
    data = _bundle()
    cfg = _cfg(**_CFG)
    straight = fit(cfg, data, checkpoint_path=tmp_path / "a.pt", on_state=_states(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["a.pt"] + [f"state-{e}.pt" for e in (1, 2, 3, 4)]
    assert straight.resumed_from == 0

    seen = _Epochs()
    # a fresh process would have other global RNG states: scramble them first
    torch.manual_seed(12345)
    np.random.seed(54321)
    resumed = fit(cfg, data, callbacks=[seen], checkpoint_path=tmp_path / "b.pt",
                  resume=load_resume_state(tmp_path / f"state-{k}.pt"))
    assert seen.trained == seen.reported == list(range(k + 1, 5))  # only the epochs after k
    assert resumed.resumed_from == k
    _assert_same(straight, resumed, tmp_path / "a.pt", tmp_path / "b.pt")
    # earlier epochs come back as they were logged, timings included
    assert resumed.history[:k] == straight.history[:k]


def test_the_check_can_tell_a_state_without_its_rng_or_optimizer(tmp_path):
    """The equality above is not automatic: resuming from a state with another optimizer
    state (fresh Adam moments) or another dropout generator gives another run."""
    data = _bundle()
    cfg = _cfg(**_CFG)
    straight = fit(cfg, data, on_state=_states(tmp_path))
    state = load_resume_state(tmp_path / "state-2.pt")
    state["rng"]["torch"] = torch.manual_seed(99).get_state()
    other_rng = fit(cfg, data, resume=state)
    assert _rows(other_rng)[2] != pytest.approx(_rows(straight)[2], rel=1e-6)
    state = load_resume_state(tmp_path / "state-2.pt")
    state["optimizer"]["state"] = {}
    fresh_adam = fit(cfg, data, resume=state)
    assert _rows(fresh_adam)[2] != pytest.approx(_rows(straight)[2], rel=1e-6)


def test_early_stopping_resumes_to_the_same_stop(tmp_path):
    data = _bundle()
    # this lr stalls after a few epochs: patience 1 stops the run before its 8 epochs
    cfg = _cfg(epochs=8, patience=1, lr=0.3)
    straight = fit(cfg, data, checkpoint_path=tmp_path / "a.pt", on_state=_states(tmp_path))
    assert straight.stopped_early, straight.history
    last = len(straight.history)
    for k in range(1, last + 1):
        seen = _Epochs()
        resumed = fit(cfg, data, callbacks=[seen], checkpoint_path=tmp_path / f"b{k}.pt",
                      resume=load_resume_state(tmp_path / f"state-{k}.pt"))
        assert seen.trained == list(range(k + 1, last + 1))
        _assert_same(straight, resumed, tmp_path / "a.pt", tmp_path / f"b{k}.pt")


def test_the_state_file_is_plain_and_about_four_models_in_size(tmp_path):
    data = _bundle()
    cfg = _cfg(epochs=1)
    fit(cfg, data, on_state=_states(tmp_path))
    path = tmp_path / "state-1.pt"
    state = torch.load(path, weights_only=True)  # no class beyond tensors and plain values
    assert state["format"] == "celebhpo-resume" and state["epoch"] == 1
    assert state["config"] == fingerprint(cfg.to_dict())
    assert state["data"] == {"n_train": 64, "n_val": 24, "image_size": 16}
    weights = sum(t.numel() * t.element_size() for t in state["model"].values())
    # weights + Adam's two moments + the best epoch's weights, + 24x40 probs and targets
    assert 3.9 * weights < path.stat().st_size < 4.3 * weights + 40_000
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no temp file left


def test_a_state_of_another_configuration_or_data_is_refused(tmp_path):
    data = _bundle()
    fit(_cfg(epochs=2), data, on_state=_states(tmp_path))
    state = load_resume_state(tmp_path / "state-1.pt")
    with pytest.raises(CheckpointError, match=r"train\.lr = 0\.003, this run has 0\.01"):
        fit(_cfg(epochs=2, lr=0.01), data, resume=state)
    with pytest.raises(CheckpointError, match=r"n_train = 64, this run has 80"):
        fit(_cfg(epochs=2), _bundle(n_train=80), resume=state)
    with pytest.raises(CheckpointError, match=r"epoch 1 does not match its 2 history rows"):
        fit(_cfg(epochs=2), data, resume={**state, "history": state["history"] * 2})
    # the device may differ: it is not part of what a state checks
    assert "train.device" not in state["config"]
    # same config, other backbone weights: refused with the reason, not a traceback
    broken = {**state, "model": dict(list(state["model"].items())[1:])}  # a weight missing
    with pytest.raises(CheckpointError, match="does not fit this run"):
        fit(_cfg(epochs=2), data, resume=broken)


def test_damaged_or_foreign_state_files_are_refused_by_name(tmp_path):
    data = _bundle()
    fit(_cfg(epochs=1), data, on_state=_states(tmp_path))
    good = tmp_path / "state-1.pt"
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"cut\.pt: not a readable resume state"):
        load_resume_state(cut)
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps(np.arange(3)))  # needs numpy's classes to load
    with pytest.raises(CheckpointError, match=r"evil\.pt: refused to load"):
        load_resume_state(evil)
    with pytest.raises(CheckpointError, match="resume state not found"):
        load_resume_state(tmp_path / "missing.pt")
    ckpt = tmp_path / "ckpt.pt"
    fit(_cfg(epochs=1), data, checkpoint_path=ckpt)
    with pytest.raises(CheckpointError, match="not a celebhpo resume state"):
        load_resume_state(ckpt)
    with pytest.raises(CheckpointError, match="not a resume state"):
        save_resume_state(tmp_path / "x.pt", {"format": "something else"})
    assert not (tmp_path / "x.pt").exists()


def test_capture_converts_numpy_values_for_weights_only(tmp_path):
    """A history row may hold numpy scalars (metrics are numpy-computed): the file still
    loads with weights_only=True, and numpy's global generator goes through as plain values."""
    cfg = _cfg(epochs=1)
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.Adam(model.parameters())
    row = {"epoch": 1, "val_loss": np.float64(0.5)}
    best = BestEpoch(row=row, metrics={"mean_acc": np.float32(0.7)},
                     out=EvalOutput(0.5, np.zeros((2, 40), np.float32),
                                    np.ones((2, 40), np.float32)),
                     state={k: v.clone() for k, v in model.state_dict().items()})
    np.random.seed(7)
    state = capture_state(1, [row], model, opt, None, best, cfg.to_dict(),
                          {"n_train": 64, "n_val": 24, "image_size": 16})
    save_resume_state(tmp_path / "s.pt", state)
    back = load_resume_state(tmp_path / "s.pt")
    assert back["history"] == [{"epoch": 1, "val_loss": 0.5}]
    assert type(back["history"][0]["val_loss"]) is float
    expected = np.random.random(3)
    np.random.seed(0)
    _restore_rng(back["rng"], torch.device("cpu"))
    assert np.array_equal(np.random.random(3), expected)
