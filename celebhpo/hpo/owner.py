"""Who runs a trial, in plain OS terms (no Optuna): this process's owner record, stored as
trial user attrs when it claims a trial, and whether a worker so recorded on this machine is
still alive. liveness.py decides what to do with the answers.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

__all__ = ["OWNER_KEYS", "is_dead_local", "is_local", "is_owned", "worker_identity"]

OWNER_KEYS = ("host", "pid", "pid_start", "pid_ns")  # a trial's owner record (user attrs)


def _proc_stat(pid: int) -> list[str] | None:
    """Fields 3... of /proc/PID/stat (state, ppid, ...) on Linux; None when unreadable."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: split after the last ')'
    return stat.rsplit(")", 1)[1].split()


def _process_start(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), or None elsewhere."""
    fields = _proc_stat(pid)
    return None if fields is None else int(fields[19])


def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def worker_identity() -> dict[str, Any]:
    """`host`, `pid`, `pid_start`, `pid_ns` of this process, stored as trial user attrs."""
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "pid_start": _process_start(pid),
            "pid_ns": _pid_namespace()}


def is_local(attrs: dict[str, Any]) -> bool:
    """Whether trial user attrs name a worker of this machine (host name and pid namespace)."""
    return (attrs.get("host") == socket.gethostname() and isinstance(attrs.get("pid"), int)
            and attrs.get("pid_ns") == _pid_namespace())


def is_owned(attrs: dict[str, Any]) -> bool:
    """Whether trial user attrs hold a complete owner record (see OWNER_KEYS)."""
    return all(key in attrs for key in OWNER_KEYS)


def is_dead_local(attrs: dict[str, Any]) -> bool:
    """Whether the worker described by trial user attrs ran on this machine and is gone:
    no such process, a zombie (killed, not yet reaped by its parent), or another process
    under its pid."""
    if not is_local(attrs):
        return False
    pid = attrs["pid"]
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)  # succeeds for a zombie too
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # someone else's live process holds that pid now
    fields = _proc_stat(pid)
    if fields is not None and fields[0] == "Z":
        return True
    start = attrs.get("pid_start")
    return start is not None and fields is not None and int(fields[19]) != start
