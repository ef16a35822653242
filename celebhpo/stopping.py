"""One way to stop (shared/DESIGN.md): a signal only records a request; the work looks at
the request at safe points and raises `Interrupted` there.

- `StopRequest` holds the request: which signal, if any. Whoever installs the handler makes
  one (hpo.worker) and passes it down: to the trial's training (a `StopCheck` callback,
  between batches of training and of validation, and between epochs), to the claim loop
  (between trials, and its waits) and to the image cache's build (between chunks).
- `Interrupted(signum)` is what `StopRequest.check()` raises at a safe point. Like
  KeyboardInterrupt it is a BaseException, so no `except Exception` on the way up takes it
  for an error; it is no CelebhpoError either: the CLI exits 128 + the signal (130 for
  SIGINT, 143 for SIGTERM) instead of printing an error line.
- `StopRequest.abort(error)`: another thread of the process (the heartbeat thread, which
  cannot raise into the main thread) asks it to stop with `error`; `check()` raises that
  error at the next safe point.
- `stop_on_signals()` installs the handler for SIGINT and SIGTERM (main thread only). The
  first signal records the request. A second one exits at once (`os._exit(128 + signal)`):
  a running trial is left to the owner/heartbeat recovery (hpo.liveness). A forked child (the
  image cache's decoding pool) that inherited the handler ends as the signal would.

Nothing is raised from a handler: raised there, an exception lands wherever the main thread
happens to be (a database commit, a garbage-collector callback, a weakref finalizer, where
Python prints "Exception ignored in ..." and goes on).
"""

from __future__ import annotations

import os
import queue
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from types import FrameType

__all__ = ["SIGNALS", "Interrupted", "StopRequest", "stop_on_signals"]

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """Raised at a safe point once a stop was requested by signal `signum`."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    def __str__(self) -> str:
        return f"interrupted by {signal.Signals(self.signum).name}"

    @property
    def exit_code(self) -> int:
        """128 + the signal, a shell's code for a process the signal ended: 130, 143."""
        return 128 + self.signum


class StopRequest:
    """Whether, and by which signal, this process was asked to stop. `request` is what a
    signal handler calls; the work calls `check` at its safe points and `wait` to sleep."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.error: BaseException | None = None  # `abort`: another thread's reason to stop
        # wakes `wait`; SimpleQueue.put is reentrant, safe in a signal handler (a
        # threading.Event's set() takes a lock that the interrupted main thread may hold)
        self._wake: queue.SimpleQueue[int] = queue.SimpleQueue()

    @property
    def requested(self) -> bool:
        return self.signum is not None or self.error is not None

    def request(self, signum: int) -> None:
        """Record a request: no lock, no exception, nothing else."""
        self.signum = signum
        self._wake.put(signum)

    def abort(self, error: BaseException) -> None:
        """Another thread's request: `check` raises `error` (the first one given)."""
        if self.error is None:
            self.error = error
        self._wake.put(0)

    def check(self) -> None:
        """A safe point: raise Interrupted if a signal asked to stop, or the error another
        thread aborted with."""
        if self.signum is not None:
            raise Interrupted(self.signum)
        if self.error is not None:
            raise self.error

    def wait(self, timeout: float) -> bool:
        """Sleep up to `timeout` seconds, ending at once on a request; whether one was made."""
        if not self.requested:
            with suppress(queue.Empty):
                self._wake.get(timeout=timeout)
        return self.requested


@contextmanager
def stop_on_signals(stop: StopRequest) -> Iterator[StopRequest]:
    """While inside, SIGINT and SIGTERM record a request in `stop` (first signal) or exit the
    process at once (second one). Outside the main thread, where no handler can be installed,
    nothing changes. The previous handlers come back on the way out."""
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    owner = os.getpid()

    def record(signum: int, frame: FrameType | None) -> None:
        if os.getpid() != owner:
            # a forked helper (the image decoding pool) inherited this handler: end it the
            # way the signal would
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        if stop.signum is not None:
            _exit_now(signum)
        stop.request(signum)

    previous = {s: signal.signal(s, record) for s in SIGNALS}
    try:
        yield stop
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _exit_now(signum: int) -> None:
    """The second signal: one line straight to fd 2 (Python's buffered streams are not safe
    to use from a handler), then exit without any cleanup."""
    name = signal.Signals(signum).name
    with suppress(OSError):
        os.write(2, f"{name} again: exiting now; the running trial is left to the next "
                    "worker's recovery\n".encode())
    os._exit(128 + signum)
