#!/usr/bin/env python3
"""A single-node loopback Slurm cluster (munged, slurmctld, slurmd) in a scratch folder.

Imported by the tests (`LoopbackCluster`, `missing()`); as a script it starts one and waits:

    python tests/slurm_cluster.py [DIR]     # prints `export SLURM_CONF=…`; Ctrl-C tears it down
    python tests/slurm_cluster.py --check   # exit 0 where one can start (for .ci/test), else 1

Everything lives in DIR: its own munge key and socket, slurm.conf, state, spool, pid and log
files, on two free ports. No accounting (no slurmdbd): squeue and scontrol answer, sacct does not.
Teardown cancels the cluster's jobs and ends every process that carries its SLURM_CONF, by pid.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scancel", "scontrol", "sinfo")
START_TIMEOUT_S = 60.0
PARTITION = "debug"
URGENT = "urgent"  # a higher-priority partition on the same node: its jobs preempt (requeue)


def missing() -> str | None:
    """Why no loopback cluster can start here (a binary is missing), or None."""
    gone = [b for b in (*DAEMONS, *CLIENTS) if _which(b) is None]
    if gone:
        return (f"Slurm binaries missing ({', '.join(gone)}): apt-get install "
                f"--no-install-recommends slurmctld slurmd slurm-client munge")
    return None


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _node_memory() -> int:
    """RealMemory in MB as slurmd measures it (its -C line), else 1024."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run([_which("slurmd") or "slurmd", "-C"], capture_output=True,
                             text=True, timeout=30).stdout
        found = re.search(r"RealMemory=(\d+)", out)
        if found:
            return int(found.group(1))
    return 1024


CONF = """\
ClusterName=mlsmloop
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
SlurmUser={user}
SlurmdUser={user}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge/munged.sock
CommunicationParameters=NoInAddrAny,NoCtldInAddrAny
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/run/slurmctld.pid
SlurmdPidFile={root}/run/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerParameters=batch_sched_delay=0,sched_interval=2,bf_interval=1
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
KillWait=5
MailProg=/bin/true
ReturnToService=2
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc={root}/log/jobcomp.txt
SlurmdParameters=config_overrides
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory} State=UNKNOWN
PartitionName={partition} Nodes=ALL Default=YES MaxTime=INFINITE State=UP PriorityTier=1
PartitionName={urgent} Nodes=ALL Default=NO MaxTime=INFINITE State=UP PriorityTier=2
"""


class LoopbackCluster:
    """munged + slurmctld + slurmd for one scratch folder; `env` points clients at it."""

    def __init__(self, root: Path, cpus: int = 8) -> None:
        self.root = root.resolve()
        self.cpus = cpus
        self.host = socket.gethostname().split(".")[0]
        self.conf = self.root / "slurm.conf"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def env(self) -> dict[str, str]:
        """What a client (or an mlsm daemon) needs to talk to this cluster."""
        return {"SLURM_CONF": str(self.conf)}

    def client_env(self) -> dict[str, str]:
        return {**os.environ, **self.env}

    # ----- start ---------------------------------------------------------------------------------
    def start(self, timeout: float = START_TIMEOUT_S) -> LoopbackCluster:
        reason = missing()
        if reason:
            raise RuntimeError(reason)
        deadline = time.monotonic() + timeout
        self._prepare()
        try:
            self._start_munge(deadline)
            self._spawn("slurmctld", ["-D", "-f", str(self.conf)])
            self._spawn("slurmd", ["-D", "-f", str(self.conf), "-N", self.host])
            self.wait_idle(deadline)
        except BaseException:
            self.stop()
            raise
        return self

    def _prepare(self) -> None:
        for sub in ("munge", "state", "spool", "run", "log"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        (self.root / "munge").chmod(0o755)  # clients reach the socket through it
        key = self.root / "munge" / "munge.key"
        if not key.exists():
            key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        self.conf.write_text(CONF.format(
            host=self.host, ctld_port=_free_port(), d_port=_free_port(), user=getpass.getuser(),
            root=self.root, cpus=self.cpus, memory=_node_memory(), partition=PARTITION,
            urgent=URGENT))

    def _start_munge(self, deadline: float) -> None:
        m = self.root / "munge"
        self._spawn("munged", ["-F", "--force", f"--key-file={m}/munge.key",
                               f"--socket={m}/munged.sock", f"--pid-file={m}/munged.pid",
                               f"--log-file={m}/munged.log", f"--seed-file={m}/munged.seed"])
        self._until(lambda: (m / "munged.sock").exists(), deadline, "munged's socket")

    def _spawn(self, name: str, args: list[str]) -> None:
        out = (self.root / "log" / f"{name}.out").open("ab")
        try:
            self.procs[name] = subprocess.Popen(
                [_which(name) or name, *args], stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, env=self.client_env(), start_new_session=True)
        finally:
            out.close()

    def wait_idle(self, deadline: float) -> None:
        """Wait until the node is idle (it reports to the controller and takes jobs)."""
        def idle() -> bool:
            done = self.client(["sinfo", "--noheader", "--format=%T", f"--nodes={self.host}"])
            return done.stdout.strip().rstrip("*") == "idle"
        self._until(idle, deadline, "the node to be idle")

    def _until(self, check: Callable[[], bool], deadline: float, what: str) -> None:
        delay = 0.02
        while not check():
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited ({proc.returncode}): {self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {what}: {self.log_tail()}")
            time.sleep(delay)
            delay = min(delay * 2, 0.2)

    def client(self, argv: list[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run a Slurm client command against this cluster."""
        return subprocess.run(argv, capture_output=True, text=True, env=self.client_env(),
                              timeout=timeout, check=False)

    def log_tail(self, lines: int = 15) -> str:
        out = []
        for path in sorted((self.root / "log").glob("*")):
            with contextlib.suppress(OSError):
                out.append(f"--- {path.name}\n" + "\n".join(
                    path.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(out)

    # ----- stop ----------------------------------------------------------------------------------
    def cancel_all(self, timeout: float = 15.0) -> None:
        """Cancel every job of the cluster and wait until squeue lists none."""
        self.client(["scancel", f"--user={getpass.getuser()}"])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.client(["squeue", "--noheader", "--format=%i"]).stdout.strip():
                return
            time.sleep(0.05)

    def stop(self) -> None:
        """Cancel the jobs, end the daemons (slurmd, slurmctld, munged) and every process that
        still carries this cluster's SLURM_CONF (slurmstepd, jobs), by pid."""
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                self.cancel_all()
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.procs.get(name)
            if proc is not None:
                _end(proc)
        for pid in self._tagged():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        self.procs.clear()

    def _tagged(self) -> list[int]:
        needle = f"SLURM_CONF={self.conf}".encode()
        out = []
        for entry in os.scandir("/proc"):
            if entry.name.isdigit() and int(entry.name) != os.getpid():
                with contextlib.suppress(OSError):
                    if needle in Path(f"/proc/{entry.name}/environ").read_bytes().split(b"\0"):
                        out.append(int(entry.name))
        return out

    def __enter__(self) -> LoopbackCluster:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def _end(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main(argv: list[str]) -> int:
    if argv[:1] == ["--check"]:
        reason = missing()
        print(reason or "the Slurm binaries are here")
        return 1 if reason else 0
    root = Path(argv[0]) if argv else Path(tempfile.mkdtemp(prefix="mlsm-slurm-"))
    started = time.monotonic()
    cluster = LoopbackCluster(root).start()
    print(f"# loopback Slurm cluster idle after {time.monotonic() - started:.1f} s in {root}")
    print(f"export SLURM_CONF={cluster.conf}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        cluster.procs["slurmctld"].wait()
    except KeyboardInterrupt:
        pass
    finally:
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
