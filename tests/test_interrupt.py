"""A Ctrl-C/SIGTERM that lands inside a storage or tracking write waits for the write to end
(celebhpo._interrupt), with the worker's real signal handler and real signals."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from celebhpo._interrupt import shielded
from celebhpo.hpo.worker import _interrupts


def test_an_interrupt_inside_a_shielded_write_is_raised_when_it_ends():
    stop = threading.Event()
    done = []
    with _interrupts(stop), pytest.raises(KeyboardInterrupt, match="SIGTERM"):
        with shielded():
            with shielded():  # nested: held until the outermost block ends
                os.kill(os.getpid(), signal.SIGTERM)
                done.append("inner")
            done.append("outer")  # the write went on to its end
        done.append("after")  # never reached
    assert done == ["inner", "outer"] and stop.is_set()


def test_an_interrupt_outside_is_raised_where_it_lands():
    stop = threading.Event()
    with _interrupts(stop), pytest.raises(KeyboardInterrupt, match="SIGINT"):
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(1000):  # the handler runs between bytecodes, within this loop
            pass
        pytest.fail("not interrupted")
