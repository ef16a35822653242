"""`optimize --devices 0,1,...`: one `celebhpo optimize` process per GPU on a shared study.

The launcher reaps each worker as it exits, whichever exits first: a worker killed (kill -9,
the OOM killer) must not linger as a zombie, which the survivors would take for a live worker
still running its trial (liveness.py also counts zombies as dead).

The workers get the storage through the environment (STORAGE_ENV, which `--storage` reads),
never argv: `ps` shows argv to every user of the machine, and a URL may hold a password.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Any

from celebhpo.errors import StudyError
from celebhpo.hpo.storage import StorageSpec

__all__ = ["STORAGE_ENV", "WORKER_ENV", "launch_workers"]

WORKER_ENV = "CELEBHPO_WORKER"  # set by launch_workers: the child's label, e.g. "gpu1"
STORAGE_ENV = "CELEBHPO_STORAGE"  # the storage URL, as the CLI's --storage reads it


def launch_workers(devices: list[str], args: list[str], storage: StorageSpec) -> int:
    """Start `python -m celebhpo *args` once per device with CUDA_VISIBLE_DEVICES=device and
    wait for all, reaping each as it exits. The first Ctrl-C/SIGTERM is passed on as SIGTERM
    (each worker fails its running trial, re-queues it and exits 143); a second one kills the
    workers (SIGKILL: their trials are left to the owner/heartbeat recovery). Returns the exit
    code: 0 when every worker succeeded, 128 + the first signal when interrupted (130 for
    SIGINT, 143 for SIGTERM, as a lone worker), else the first failing worker's code (128 + N
    for a worker killed by signal N).

    `storage` must be one several processes can share (journal file or PostgreSQL); the
    workers get it as STORAGE_ENV, and `args` leave out --storage.
    """
    devices = [d.strip() for d in devices if d.strip()]
    if not devices:
        raise StudyError("--devices needs at least one device id, e.g. --devices 0,1")
    if len(set(devices)) != len(devices):
        raise StudyError(f"--devices lists a device twice: {','.join(devices)}")
    if not storage.multiprocess:
        raise StudyError(
            f"--devices starts {len(devices)} worker processes but storage {storage.masked} is "
            "SQLite, which is for one process; use a journal file (--storage studies/NAME.log) "
            "or PostgreSQL (--storage postgresql+psycopg2://user:pass@host/db)"
        )

    procs: list[tuple[str, subprocess.Popen]] = []
    interrupts: list[int] = []  # the signals received, in order

    def forward(signum: int, frame: Any) -> None:  # records and passes on; never raises
        interrupts.append(signum)
        for _, proc in procs:
            if proc.poll() is None:
                # first time: a clean stop at the worker's next safe point (celebhpo.stopping)
                proc.send_signal(signal.SIGTERM if len(interrupts) == 1 else signal.SIGKILL)

    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in previous:
        signal.signal(s, forward)
    try:
        for device in devices:
            env = {**os.environ, "CUDA_VISIBLE_DEVICES": device, WORKER_ENV: f"gpu{device}",
                   STORAGE_ENV: storage.url}
            # a session of its own: the terminal's Ctrl-C reaches the workers only through us,
            # once, instead of twice
            proc = subprocess.Popen([sys.executable, "-m", "celebhpo", *args], env=env,
                                    start_new_session=True)
            procs.append((device, proc))
            print(f"worker gpu{device}: pid {proc.pid}", file=sys.stderr)
        codes = _reap(procs)
    finally:
        for _, proc in procs:  # only if we are leaving on an error of our own
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for s, handler in previous.items():
            signal.signal(s, handler)
    failed = [code for code in codes if code != 0]
    if interrupts:
        return 128 + interrupts[0]
    return failed[0] if failed else 0


def _reap(procs: list[tuple[str, subprocess.Popen]]) -> list[int]:
    """Wait for every worker, in the order they exit (`Popen.wait` on each in turn would leave
    a worker that dies early a zombie until those before it end). Returns the exit codes in
    exit order, 128 + N for a worker killed by signal N (the shell's convention)."""
    by_pid = {proc.pid: (device, proc) for device, proc in procs}
    codes = []
    while by_pid:
        try:
            pid, status = os.waitpid(-1, 0)  # any child; retried after our signal handler
        except ChildProcessError:  # none left (already reaped elsewhere)
            pid, status = next(iter(by_pid)), None
        if pid not in by_pid:
            continue
        device, proc = by_pid.pop(pid)
        if status is not None:
            proc.returncode = os.waitstatus_to_exitcode(status)
        code = proc.wait()
        if code != 0:
            how = f"killed by signal {-code}" if code < 0 else f"exited with code {code}"
            print(f"worker gpu{device} {how}", file=sys.stderr)
        codes.append(code if code >= 0 else 128 - code)
    return codes

