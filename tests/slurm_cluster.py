"""A real one-node SLURM cluster on localhost for the tests, everything under one folder:
a munge key made there and a munged on its own socket, a minimal slurm.conf
(NodeName=localhost CPUs=2, no accounting, no cgroups), slurmctld and slurmd in the
foreground on free ports. Clients (sbatch, squeue, scancel) find it through SLURM_CONF.

`slurm_cluster(root)` yields the environment for the clients, or raises `Unavailable` with
the reason (not installed, not root, a daemon that would not start, with its log's tail).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from tests.helpers import free_port

DAEMONS = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "sinfo")
FINAL = {"COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
         "PREEMPTED", "BOOT_FAIL", "DEADLINE"}

CONF = """\
ClusterName=celebhpotest
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge/munge.socket
SlurmUser=root
SlurmdUser=root
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
MailProg=/bin/true
ProctrackType=proctrack/pgid
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MpiDefault=none
KillWait=10
MinJobAge=600
NodeName=localhost NodeAddr=127.0.0.1 CPUs=2 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


class Unavailable(Exception):
    """SLURM cannot run here; the message says why."""


@contextlib.contextmanager
def slurm_cluster(root: Path) -> Iterator[dict[str, str]]:
    missing = [d for d in DAEMONS if _exe(d) is None]
    if missing:
        raise Unavailable(f"not installed: {', '.join(missing)} (apt-get install slurm-wlm "
                          "munge)")
    if os.geteuid() != 0:
        raise Unavailable("slurmd must run as root to start jobs")
    for sub in ("munge", "state", "spool", "log"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    os.chmod(root / "munge", 0o700)
    conf = root / "slurm.conf"
    conf.write_text(CONF.format(root=root, ctld_port=free_port(), d_port=free_port()))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    procs: list[subprocess.Popen] = []
    try:
        _start_munge(root, procs)
        _start(["slurmctld", "-D", "-i", "-f", str(conf)], root / "log" / "ctld.out", env, procs)
        _start(["slurmd", "-D", "-N", "localhost", "-f", str(conf)], root / "log" / "d.out",
               env, procs)
        _wait_idle(root, env, procs)
        yield {"SLURM_CONF": str(conf)}
    finally:
        _cancel_all(env)
        for proc in reversed(procs):  # slurmd, slurmctld, munged
            _stop(proc)


def _exe(name: str) -> str | None:
    """The daemons live in sbin, which a user's PATH may lack."""
    return shutil.which(name, path=f"{os.environ.get('PATH', '')}:/usr/sbin:/usr/local/sbin")


def _start(argv: list[str], log: Path, env: dict[str, str], procs: list) -> None:
    with open(log, "wb") as out:
        procs.append(subprocess.Popen([str(_exe(argv[0])), *argv[1:]], stdout=out, stderr=subprocess.STDOUT, env=env,
                                      start_new_session=True))


def _start_munge(root: Path, procs: list) -> None:
    m = root / "munge"
    subprocess.run([str(_exe("mungekey")), "--create", f"--keyfile={m / 'munge.key'}"], check=True,
                   capture_output=True)
    # --force: the key sits in a temporary folder, which munged would refuse to trust
    _start(["munged", "-F", "--force", f"--socket={m / 'munge.socket'}",
            f"--key-file={m / 'munge.key'}", f"--pid-file={m / 'munged.pid'}",
            f"--log-file={m / 'munged.log'}", f"--seed-file={m / 'munged.seed'}"],
           root / "log" / "munged.out", dict(os.environ), procs)
    deadline = time.monotonic() + 10
    while not (m / "munge.socket").exists():
        if procs[-1].poll() is not None or time.monotonic() > deadline:
            raise Unavailable(f"munged did not start:\n{_tail(root / 'log' / 'munged.out')}")
        time.sleep(0.05)


def _wait_idle(root: Path, env: dict[str, str], procs: list) -> None:
    deadline = time.monotonic() + 30
    while True:
        out = subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True,
                             text=True)
        if out.stdout.strip() == "idle":
            return
        if any(p.poll() is not None for p in procs) or time.monotonic() > deadline:
            logs = "\n".join(_tail(root / "log" / n) for n in ("ctld.out", "d.out"))
            raise Unavailable(f"slurmctld/slurmd did not come up (sinfo: "
                              f"{(out.stdout + out.stderr).strip()!r}):\n{logs}")
        time.sleep(0.2)


def _cancel_all(env: dict[str, str]) -> None:
    """Every job of this cluster cancelled and gone from the node before the daemons stop
    (a slurmstepd outlives its slurmd)."""
    if subprocess.run(["scancel", "--user", "root"], env=env, capture_output=True).returncode:
        return  # the controller is not up
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        out = subprocess.run(["squeue", "-h", "-o", "%T"], env=env, capture_output=True,
                             text=True).stdout.split()
        if not [s for s in out if s in ("RUNNING", "COMPLETING", "PENDING", "CONFIGURING")]:
            return
        time.sleep(0.2)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-1500:] if path.exists() else f"({path.name}: none)"


def task_states(job_id: str, env: dict[str, str]) -> dict[str, str]:
    """Array task ("J_0") -> its state, as the controller sees it now."""
    out = subprocess.run(["squeue", f"--jobs={job_id}", "--states=all", "--array", "-h",
                          "-o", "%i|%T"], env=env, capture_output=True, text=True).stdout
    return dict(line.split("|", 1) for line in out.split())
