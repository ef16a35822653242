"""`optimize --devices 0,1,...`: one `celebhpo optimize` process per GPU on a shared study."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Any

from celebhpo.errors import StudyError
from celebhpo.hpo.storage import DEFAULT_STORAGE, parse_storage

__all__ = ["WORKER_ENV", "launch_workers"]

WORKER_ENV = "CELEBHPO_WORKER"  # set by launch_workers: the child's label, e.g. "gpu1"


def launch_workers(devices: list[str], args: list[str]) -> int:
    """Start `python -m celebhpo *args` once per device with CUDA_VISIBLE_DEVICES=device and
    wait for all. Ctrl-C/SIGTERM is passed on once (each worker fails its running trial,
    re-queues it and exits); a second one kills the workers. Returns the exit code: 0 when
    every worker succeeded, 130 when interrupted, else the first failing worker's code.

    `args` must name a storage several processes can share (journal file or PostgreSQL).
    """
    devices = [d.strip() for d in devices if d.strip()]
    if not devices:
        raise StudyError("--devices needs at least one device id, e.g. --devices 0,1")
    if len(set(devices)) != len(devices):
        raise StudyError(f"--devices lists a device twice: {','.join(devices)}")
    storage = _arg_value(args, "--storage") or os.environ.get("CELEBHPO_STORAGE") or DEFAULT_STORAGE
    spec = parse_storage(storage)
    if not spec.multiprocess:
        raise StudyError(
            f"--devices starts {len(devices)} worker processes but storage {spec.masked} is "
            "SQLite, which is for one process; use a journal file (--storage studies/NAME.log) "
            "or PostgreSQL (--storage postgresql+psycopg2://user:pass@host/db)"
        )

    procs: list[tuple[str, subprocess.Popen]] = []
    interrupts = 0

    def forward(signum: int, frame: Any) -> None:
        nonlocal interrupts
        interrupts += 1
        for _, proc in procs:
            if proc.poll() is None:
                # first time: a clean stop (SIGTERM becomes KeyboardInterrupt in optimize)
                proc.send_signal(signal.SIGTERM if interrupts == 1 else signal.SIGKILL)

    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in previous:
        signal.signal(s, forward)
    try:
        for device in devices:
            env = {**os.environ, "CUDA_VISIBLE_DEVICES": device, WORKER_ENV: f"gpu{device}"}
            # a session of its own: the terminal's Ctrl-C reaches the workers only through us,
            # once, instead of twice
            proc = subprocess.Popen([sys.executable, "-m", "celebhpo", *args], env=env,
                                    start_new_session=True)
            procs.append((device, proc))
            print(f"worker gpu{device}: pid {proc.pid}", file=sys.stderr)
        codes = [(device, proc.wait()) for device, proc in procs]
    finally:
        for _, proc in procs:  # only if we are leaving on an error of our own
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for s, handler in previous.items():
            signal.signal(s, handler)
    failed = [(d, c) for d, c in codes if c != 0]
    for device, code in failed:
        print(f"worker gpu{device} exited with code {code}", file=sys.stderr)
    if interrupts:
        return 130
    return failed[0][1] if failed else 0


def _arg_value(args: list[str], flag: str) -> str | None:
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None
