"""One way to stop (celebhpo.stopping): a signal only records a request, safe points raise
Interrupted, a second signal exits at once, a forked child ends as the signal would. Real
signals, real training loops, a real image cache. Whole workers: tests/hpo/test_stop_moments.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from celebhpo.data import BatchLoader, decode_images
from celebhpo.errors import CelebhpoError
from celebhpo.stopping import Interrupted, StopRequest, stop_on_signals
from celebhpo.training.epoch import Callback, StopCheck, evaluate, train_one_epoch
from celebhpo.training.models import create_model


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_only_records_the_request(signum):
    stop = StopRequest()
    with stop_on_signals(stop):
        os.kill(os.getpid(), signum)
        for _ in range(1000):  # the handler runs between bytecodes, within this loop
            pass
        assert stop.signum == signum  # recorded, nothing raised
        with pytest.raises(Interrupted) as raised:
            stop.check()
    assert raised.value.exit_code == 128 + signum  # 130, 143
    assert str(raised.value) == f"interrupted by {signal.Signals(signum).name}"
    # not an error of ours (the CLI would print it and exit 1), nor one `except Exception` takes
    assert not isinstance(raised.value, Exception | CelebhpoError)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the old handler is back


def test_wait_ends_at_once_on_a_signal():
    stop = StopRequest()
    with stop_on_signals(stop):
        threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGTERM)).start()
        started = time.monotonic()
        assert stop.wait(120)
        assert time.monotonic() - started < 60  # a hang guard, not a timing claim
        assert stop.wait(120)  # answered already: returns at once


def test_outside_the_main_thread_nothing_is_installed():
    seen = []

    def run():
        with stop_on_signals(StopRequest()):
            seen.append(signal.getsignal(signal.SIGTERM))

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert seen == [signal.SIG_DFL]


def test_a_forked_child_ends_as_the_signal_would():
    stop = StopRequest()
    with stop_on_signals(stop):
        pid = os.fork()
        if pid == 0:  # the child inherited the handler: the signal must end it
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(30)
            finally:
                os._exit(3)
        _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM
    assert not stop.requested  # the parent was not asked to stop


SECOND_SIGNAL = """
import sys, time
from celebhpo.stopping import StopRequest, stop_on_signals
stop = StopRequest()
with stop_on_signals(stop):
    print("ready", flush=True)
    while not stop.requested:
        time.sleep(0.01)
    print("requested", flush=True)
    while True:  # never reaches a safe point: only the second signal ends it
        time.sleep(0.01)
"""


@pytest.mark.parametrize("first, second", [(signal.SIGTERM, signal.SIGINT),
                                           (signal.SIGINT, signal.SIGINT)])
def test_a_second_signal_exits_at_once(first, second):
    proc = subprocess.Popen([sys.executable, "-c", SECOND_SIGNAL], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "ready\n"
        proc.send_signal(first)
        assert proc.stdout.readline() == "requested\n"
        proc.send_signal(second)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + second, err
    name = signal.Signals(second).name
    assert err == f"{name} again: exiting now; the running trial is left to the next worker's " \
                  "recovery\n"


# -- safe points -------------------------------------------------------------------------------
class _AskAt(Callback):
    """Asks for a stop after training batch `train` / validation batch `val`, as a signal
    arriving during that batch would; counts the batches that ran."""

    def __init__(self, stop: StopRequest, train: int = -1, val: int = -1) -> None:
        self.stop, self.train, self.val = stop, train, val
        self.batches = self.eval_batches = 0

    def on_batch_end(self, epoch: int, batch: int, n_batches: int) -> None:
        self.batches += 1
        if batch == self.train:
            self.stop.request(signal.SIGTERM)

    def on_eval_batch_end(self, batch: int, n_batches: int) -> None:
        self.eval_batches += 1
        if batch == self.val:
            self.stop.request(signal.SIGINT)


def _model_and_loader(n: int = 64) -> tuple[torch.nn.Module, BatchLoader]:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8)
    labels = (rng.random((n, 40)) < 0.3).astype(np.float32)
    model = create_model("tiny", num_labels=40, num_features=16, dropout=0.1, pretrained="none")
    return model, BatchLoader(images, labels, 8, shuffle=False, flip=False)


def test_training_stops_at_the_next_batch():
    stop = StopRequest()
    model, loader = _model_and_loader()
    ask = _AskAt(stop, train=2)
    with pytest.raises(Interrupted):
        train_one_epoch(model, loader, torch.nn.BCEWithLogitsLoss(),
                        torch.optim.SGD(model.parameters(), lr=0.01),
                        callbacks=[ask, StopCheck(stop)])
    assert ask.batches == 3  # of 8: the batch it arrived in ended, no other began


def test_validation_stops_at_the_next_batch():
    stop = StopRequest()
    model, loader = _model_and_loader()
    ask = _AskAt(stop, val=1)
    with pytest.raises(Interrupted) as raised:
        evaluate(model, loader, callbacks=[ask, StopCheck(stop)])
    assert ask.eval_batches == 2 and raised.value.signum == signal.SIGINT


@pytest.mark.parametrize("workers", [1, 2])
def test_a_cache_build_asked_to_stop_leaves_nothing_behind(synth_root, tmp_path, workers):
    paths = sorted((synth_root / "img_align_celeba" / "img_align_celeba").glob("*.jpg"))
    stop = StopRequest()
    stop.request(signal.SIGTERM)  # checked before the first chunk and between chunks
    cache = tmp_path / "cache"
    with pytest.raises(Interrupted):
        decode_images(paths, 16, "squash", cache, workers=workers, progress=False, stop=stop)
    assert sorted(p.suffix for p in cache.iterdir()) == [".lock"]  # no array, no temp file
    # the next build, not asked to stop, makes the cache
    built = decode_images(paths, 16, "squash", cache, workers=workers, progress=False,
                          stop=StopRequest())
    assert built.array.shape == (len(paths), 16, 16, 3)
    assert isinstance(built.path, Path)
