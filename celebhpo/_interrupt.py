"""Where a Ctrl-C/SIGTERM may land in a worker.

A worker turns both signals into KeyboardInterrupt (hpo/worker.py). Raised in the middle of a
database commit, it leaves a connection holding its lock ("database is locked" on SQLite, a
torn transaction elsewhere), and raised inside an import it leaves that package half-imported.
So storage and tracking writes run `shielded()`: an interrupt that arrives inside is held and
raised as soon as the outermost shielded block ends. Anywhere else (training, decoding) it is
raised where it lands, at once. Only the main thread is shielded: signals are handled there.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["hold_or_raise", "shielded"]

_depth = 0  # shielded blocks the main thread is inside
_held: str | None = None  # the interrupt that arrived inside one


@contextmanager
def shielded() -> Iterator[None]:
    """Hold an interrupt until this block (and any it is inside) has finished."""
    global _depth, _held
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
    if _depth == 0 and _held is not None:
        why, _held = _held, None
        raise KeyboardInterrupt(why)


def hold_or_raise(why: str) -> None:
    """For a signal handler: raise KeyboardInterrupt now, or hold it if a shielded write is
    under way (it is raised when that write ends)."""
    global _held
    if _depth > 0:
        _held = why
        return
    raise KeyboardInterrupt(why)
