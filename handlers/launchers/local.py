"""The `local` launcher: a process tree in its own session here, identified by boot, pid, ticks."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import select
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import NamedTuple

import psutil

from mlsm.handlers.launchers.base import Handle, KillReport, Spec
from mlsm.machine.core.store import now_iso

RUN_ID_VAR = "MLSM_RUN_ID"
EXPERIMENT_VAR = "MLSM_EXPERIMENT"
PR_SET_CHILD_SUBREAPER = 36
PAGE = os.sysconf("SC_PAGE_SIZE")
KILL_ROUNDS = 50
REATTACH_POLL_S = 0.25

# Our own Popen children: the orphan reaper must never reap one (Popen.wait owns its status).
_owned: set[int] = set()
_owned_lock = threading.Lock()
# Runs this process spawned while a subreaper: each of their processes is under its main
# process or, orphaned, adopted by us, so a look at our own subtree finds them all.
_launched: set[str] = set()
_subreaper = False


@functools.cache
def boot_id() -> str:
    """This boot's id: a recorded pid from another boot is never the same process."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return f"btime-{psutil.boot_time():.0f}"


def start_ticks(pid: int) -> int | None:
    """Start time of `pid` in clock ticks since boot (field 22 of /proc/pid/stat)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may contain spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[19])


def new_run_id() -> str:
    return uuid.uuid4().hex[:16]


def _pid(handle: Handle) -> int:
    pid = handle.get("pid")
    return pid if isinstance(pid, int) and not isinstance(pid, bool) and pid > 0 else 0


def same_process(handle: Handle) -> bool:
    """True when the recorded process still runs: same boot, pid and start ticks."""
    pid = _pid(handle)
    if not pid or handle.get("boot_id") != boot_id():
        return False
    ticks = start_ticks(pid)
    if ticks is None or ticks != handle.get("start_ticks"):
        return False
    return not _is_zombie(pid) and _tagged(pid, handle)


def _tags(handle: Handle) -> list[bytes]:
    """The environment entries every process of the run carries (its run, its experiment)."""
    tags = [f"{RUN_ID_VAR}={handle.get('run_id')}".encode()]
    if handle.get("experiment"):
        tags.append(f"{EXPERIMENT_VAR}={handle['experiment']}".encode())
    return tags


def _tagged(pid: int, handle: Handle) -> bool:
    """Whether `pid` carries the run's tags: a forged status.json cannot aim at a stranger."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            names = set(fh.read().split(b"\0"))
    except OSError:
        return False
    return all(tag in names for tag in _tags(handle))


def is_stopped(pid: int) -> bool:
    """Whether `pid` is stopped by a signal (state T) or traced (t)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
        return stat[stat.rindex(b")") + 2:][:1] in (b"T", b"t")
    except (OSError, ValueError):
        return False


def _is_zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


def _disown(pid: int) -> None:
    with _owned_lock:
        _owned.discard(pid)


def _wait_pidfd(pid: int, timeout: float | None) -> None:
    """Sleep until `pid` exits or `timeout` passes; a pidfd wakes us at once (no polling)."""
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        time.sleep(min(timeout if timeout is not None else REATTACH_POLL_S, REATTACH_POLL_S))
        return
    try:
        select.select([fd], [], [], timeout)
    finally:
        os.close(fd)


class LocalRun:
    """A local run: our own child (spawned) or a process found again (re-attached)."""

    def __init__(self, handle: Handle, popen: subprocess.Popen[bytes] | None) -> None:
        self.handle = handle
        self._popen = popen

    @property
    def returncode(self) -> int | None:
        return None if self._popen is None else self._popen.returncode

    def release(self) -> None:
        self._write_stdin(b"go\n")

    def cancel(self) -> None:
        self._write_stdin(b"")
        self.wait(None)

    def _write_stdin(self, data: bytes) -> None:
        stdin = self._popen.stdin if self._popen is not None else None
        if stdin is None:
            return
        with contextlib.suppress(OSError):
            if data:
                stdin.write(data)
            stdin.close()

    def begun(self) -> bool:
        return True  # a local run never queues

    def wait(self, timeout: float | None) -> bool:
        """Wait for the exit; a pidfd wakes us the moment it happens (Popen.wait polls)."""
        if self._popen is None:
            if same_process(self.handle):
                _wait_pidfd(_pid(self.handle), timeout)
            return not same_process(self.handle)
        if self._popen.poll() is None:
            _wait_pidfd(self._popen.pid, timeout)
        if self._popen.poll() is None:
            return False
        _disown(self._popen.pid)
        return True


class LocalLauncher:
    """Runs commands here, each in its own session, tagged with its run id."""

    name = "local"

    def spawn(self, spec: Spec) -> LocalRun:
        env = dict(spec.env)
        run_id = env.setdefault(RUN_ID_VAR, new_run_id())
        if spec.experiment is not None:
            env[EXPERIMENT_VAR] = str(spec.experiment)
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
        out = os.open(spec.stdout, flags, 0o644)
        try:
            err = os.open(spec.stderr, flags, 0o644) if spec.stderr else subprocess.STDOUT
            try:
                popen = self._popen(spec, env, out, err)
            finally:
                if err != subprocess.STDOUT:
                    os.close(err)
        finally:
            os.close(out)
        _launched.add(run_id)
        handle: Handle = {
            "launcher": self.name, "pid": popen.pid, "pgid": popen.pid,
            "start_ticks": start_ticks(popen.pid), "boot_id": boot_id(), "run_id": run_id,
            "cmd": list(spec.record_cmd or spec.argv), "started_at": now_iso(),
        }
        if spec.experiment is not None:
            handle["experiment"] = str(spec.experiment)
        if spec.devices is not None:
            handle["devices"] = spec.devices
        return LocalRun(handle, popen)

    def _popen(self, spec: Spec, env: dict[str, str], out: int,
               err: int) -> subprocess.Popen[bytes]:
        stdin = subprocess.PIPE if spec.handshake else subprocess.DEVNULL
        with _owned_lock:
            popen = subprocess.Popen(spec.argv, cwd=spec.cwd, env=env, stdin=stdin, stdout=out,
                                     stderr=err, start_new_session=True, close_fds=True)
            _owned.add(popen.pid)
        return popen

    def reattach(self, handle: Handle) -> LocalRun | None:
        return LocalRun(handle, None) if same_process(handle) else None

    def alive(self, handle: Handle) -> bool:
        return same_process(handle)

    def signal(self, handle: Handle, signum: int) -> bool:
        if not same_process(handle):
            return False
        with contextlib.suppress(psutil.Error):
            main = psutil.Process(_pid(handle))
            for proc in [main, *main.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    proc.send_signal(signum)
        return True

    def kill(self, handle: Handle, grace: float) -> KillReport:
        return kill_tree(handle, grace)

    def leftovers(self, handle: Handle, grace: float) -> int:
        """The main process has exited: kill whatever of its run is left (its tag remains)."""
        if not handle.get("run_id"):
            return 0
        return kill_tree({**handle, "pid": 0}, grace).found

    def usage(self, handle: Handle) -> tuple[int, int]:
        procs = alive(tree(handle))
        return len(procs), sum(_rss(p.pid) for p in procs)

    def kill_gpu_holders(self, handle: Handle, grace: float) -> list[int]:
        devices = handle.get("devices")
        if not isinstance(devices, str) or not devices:
            return []
        from mlsm.handlers import gpus  # NVML only for a run the pool handed GPUs

        procs = []
        for pid in sorted(gpus.holders(devices)):
            with contextlib.suppress(psutil.Error):
                if _escaped_from(pid, handle):
                    procs.append(psutil.Process(pid))
        if procs:
            _signal_all(procs, signal.SIGTERM)
            left = wait_gone(procs, grace)
            _signal_all(left, signal.SIGKILL)
            wait_gone(left, 5.0)
            reap_orphans()
        return [p.pid for p in procs]

    def strays(self, experiment: Path, keep: list[str]) -> list[Handle]:
        return [{"launcher": self.name, "run_id": run_id, "pid": 0, "pids": pids, "pgid": pgid}
                for run_id, (pids, pgid) in stray_runs(experiment, keep).items()]

    def why_gone(self, handle: Handle) -> str:
        if handle.get("boot_id") != boot_id():
            return "a new boot since"
        return "that pid now belongs to another process" if start_ticks(_pid(handle)) \
            else "gone"

    def describe(self, handle: Handle) -> str:
        if not handle.get("pid") and handle.get("pids"):
            return "pids " + ", ".join(str(p) for p in handle["pids"])
        return f"pid {handle.get('pid')}"


# ----- finding and killing trees ---------------------------------------------------------------
class Scan(NamedTuple):
    """One pass over /proc: children by parent pid, pids carrying each needle, groups by pid,
    and the run id of each tagged pid (read in the same pass: a pid hopper's pid is gone by the
    time a second read comes)."""

    children: dict[int, list[int]]
    tagged: dict[bytes, set[int]]
    groups: dict[int, int]
    runs: dict[int, str]


def _scan(needles: Iterable[bytes], since: int | None = None,
          pids: Iterable[int] | None = None) -> Scan:
    """One pass over /proc: children by parent pid, and the pids whose environment has a needle.

    The tags live in the environment, so they survive setsid and re-parenting; one pass keeps
    the cost at one read per process however large the tree is. A process that started before
    `since` (clock ticks since boot: the run's own start) cannot carry the run's tags, so its
    environment is not read: on a busy machine that is nearly every process. `pids`: look
    only at these (default: every process).
    """
    wanted = tuple(needles)
    scan = Scan({}, {n: set() for n in wanted}, {}, {})
    # Newest first: a pid hopper's current pid lives ~10 ms, less than a pass over a busy /proc,
    # so it is read right after the listing, while it still lives.
    every = sorted((int(name) for name in os.listdir("/proc") if name.isdigit()), reverse=True)
    for pid in every if pids is None else pids:
        try:
            stat = _read_proc(f"/proc/{pid}/stat", 4096)
            fields = stat[stat.rindex(b")") + 2:].split()
            scan.children.setdefault(int(fields[1]), []).append(pid)
            scan.groups[pid] = int(fields[2])
            if wanted and (since is None or int(fields[19]) >= since):
                names = _read_proc(f"/proc/{pid}/environ").split(b"\0")
                for needle in wanted:
                    if needle in names:
                        scan.tagged[needle].add(pid)
                        scan.runs[pid] = _run_id_in(names) or ""
        except (OSError, ValueError, IndexError):
            continue
    return scan


def _read_proc(path: str, size: int = 1 << 20) -> bytes:
    """A /proc file in one unbuffered read (half the cost of open(); the scan does hundreds)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, size)
    finally:
        os.close(fd)


def _descendants(roots: Iterable[int], children: Mapping[int, list[int]]) -> set[int]:
    out: set[int] = set()
    todo = list(roots)
    while todo:
        pid = todo.pop()
        if pid not in out:
            out.add(pid)
            todo.extend(children.get(pid, ()))
    return out


def _subtree_roots(handle: Handle) -> list[int] | None:
    """Where every process of a run we spawned is, while we are a subreaper: under its main
    process, or among the orphans we adopted. None: anywhere (look at every process)."""
    if not _subreaper or handle.get("run_id") not in _launched:
        return None
    with _owned_lock:
        adopted = _children() - _owned  # our own children are other runs' main processes
    return [*adopted, *([_pid(handle)] if _pid(handle) else [])]


def _walk(roots: Iterable[int]) -> set[int]:
    """`roots` and their descendants, from the kernel's children lists."""
    out: set[int] = set()
    todo = list(roots)
    while todo:
        pid = todo.pop()
        if pid in out:
            continue
        out.add(pid)
        with contextlib.suppress(OSError, ValueError):
            todo.extend(_child_pids(pid))
    return out


def _child_pids(pid: int | str) -> list[int]:
    """`pid`'s children, from each of its threads' children list (CONFIG_PROC_CHILDREN)."""
    return [int(kid) for tid in os.listdir(f"/proc/{pid}/task")
            for kid in _read_proc(f"/proc/{pid}/task/{tid}/children").split()]


def tree(handle: Handle) -> list[psutil.Process]:
    """The recorded process, its descendants, and every process tagged with its run (and theirs)."""
    return _targets(handle)[0]


LOOKS = 5
"""How many looks `_targets` takes while it finds nobody but the run's group is not empty."""


def _targets(handle: Handle, group: int = 0) -> tuple[list[psutil.Process], int]:
    """`tree`, plus every member of the run's process group; and that group (0: none).

    The group counts only once one of the run's own processes was seen in it (or when the
    caller already saw one: `group`): a forged handle cannot aim a killpg, and a group whose
    members are all gone may one day be someone else's. A look that finds nobody while the
    recorded group still has members is taken again (up to LOOKS): a pid hopper's pid can die
    between the listing and the read, and the next look sees its successor.
    """
    procs: list[psutil.Process] = []
    for _ in range(LOOKS):
        procs, found = _look(handle, group)
        if procs or found or not _occupied(handle.get("pgid")):
            return procs, found
    return procs, group


def _signallable(pgid: object) -> int:
    """`pgid` when it names a group we may signal as a whole (never init's, nor ours); else 0."""
    if not isinstance(pgid, int) or isinstance(pgid, bool) or pgid <= 1 or pgid == os.getpgrp():
        return 0
    return pgid


def _occupied(pgid: object) -> bool:
    """Whether process group `pgid` (not init's, not ours) has a member, a zombie included."""
    group = _signallable(pgid)
    if not group:
        return False
    try:
        os.killpg(group, 0)
    except OSError:
        return False
    return True


def _look(handle: Handle, group: int) -> tuple[list[psutil.Process], int]:
    """One look at /proc for `_targets`."""
    needles = _tags(handle) if handle.get("run_id") else []
    since = handle.get("start_ticks") if handle.get("boot_id") == boot_id() else None
    subtree = _subtree_roots(handle)
    scan = _scan(needles, since if isinstance(since, int) else None,
                 None if subtree is None else _walk(subtree))
    roots = set.intersection(*(scan.tagged[n] for n in needles)) if needles else set()
    if same_process(handle):
        roots.add(_pid(handle))
    pids = _descendants(roots, scan.children)
    pgid = _signallable(handle.get("pgid"))
    if not group and pgid and any(scan.groups.get(p) == pgid for p in pids):
        group = pgid
    group = _signallable(group)
    if group:
        pids |= {pid for pid, g in scan.groups.items() if g == group}
    pids.discard(os.getpid())
    procs = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            procs.append(psutil.Process(pid))
    return procs, group


def _rss(pid: int) -> int:
    """Resident bytes of `pid` from /proc/pid/statm (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as fh:
            return int(fh.read().split()[1]) * PAGE
    except (OSError, ValueError, IndexError):
        return 0


def _leader_group(handle: Handle) -> int:
    """The recorded process's group, while that process runs and still leads it; else 0."""
    pgid = handle.get("pgid")
    if not isinstance(pgid, int) or isinstance(pgid, bool) or not same_process(handle):
        return 0
    try:
        return pgid if os.getpgid(_pid(handle)) == pgid else 0
    except OSError:
        return 0


def _signal_all(procs: Iterable[psutil.Process], sig: int, group: int = 0) -> None:
    """Signal `group` (0: none) as a whole, then each of `procs`."""
    if group:
        with contextlib.suppress(OSError):
            os.killpg(group, sig)
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(sig)


def alive(procs: Iterable[psutil.Process]) -> list[psutil.Process]:
    """Those still running; a zombie counts as dead."""
    out = []
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                out.append(proc)
    return out


def wait_gone(procs: list[psutil.Process], timeout: float,
              clock: Callable[[], float] = time.monotonic) -> list[psutil.Process]:
    """Poll until every process is dead or `timeout` passes; return the survivors.

    Every 5 ms for the first second (a tree that dies on SIGTERM is seen gone within 5 ms of
    it, not up to twice as late as a doubling back-off would), then every 50 ms.
    """
    start = clock()
    deadline = start + timeout
    left = alive(procs)
    while left and clock() < deadline:
        delay = 0.005 if clock() - start < 1.0 else 0.05
        time.sleep(min(delay, max(0.0, deadline - clock())))
        left = alive(left)
    return left


def kill_tree(handle: Handle, grace: float) -> KillReport:
    """SIGTERM the whole tree, wait `grace`, SIGKILL what is left. One /proc pass per round.

    The run's group gets the SIGKILL whatever the look after the grace found: a pid hopper
    (a process that forks and exits faster than /proc can be read) is missed by a signal aimed
    at the pid that was read, but not by one aimed at its group.
    """
    procs, group = _targets(handle, _leader_group(handle))
    procs = alive(procs)
    if not procs and not group:
        return KillReport(0)
    _signal_all(procs, signal.SIGTERM, group)
    left = wait_gone(procs, grace)
    for rounds in range(KILL_ROUNDS):  # a pid hopper forks anew between scan and kill
        again, _ = _targets(handle, group)
        left = alive({p.pid: p for p in [*left, *again]}.values())
        if not left:
            if group and not rounds:
                _signal_all([], signal.SIGKILL, group)  # a member this look missed
            break
        _signal_all(left, signal.SIGKILL, group)
        left = wait_gone(left, 5.0)
    reap_orphans()
    return KillReport(len(procs), len(left))


def strays(experiment: Path, keep: Iterable[str]) -> dict[str, list[int]]:
    """Processes tagged with `experiment` whose run is not in `keep`: run id → pids."""
    return {run: pids for run, (pids, _) in stray_runs(experiment, keep).items()}


def stray_runs(experiment: Path, keep: Iterable[str]) -> dict[str, tuple[list[int], int]]:
    """`strays`, each run with the process group its processes were seen in (0: unknown)."""
    needle = f"{EXPERIMENT_VAR}={experiment}".encode()
    scan = _scan([needle])
    keep_set = set(keep)
    out: dict[str, tuple[list[int], int]] = {}
    for pid in sorted(scan.tagged[needle] - {os.getpid()}):
        run = scan.runs.get(pid)
        if run and run not in keep_set:
            out.setdefault(run, ([], scan.groups.get(pid, 0)))[0].append(pid)
    return out


def _escaped_from(pid: int, handle: Handle) -> bool:
    """Whether `pid`, found on the run's GPUs, is the run's: our user's, tagged with this run
    or with none, and started during the run with no ancestor older than the run short of
    us (the subreaper that adopts a run's orphans) or init; a person's own job is neither."""
    since = handle.get("start_ticks")
    if pid == os.getpid() or not isinstance(since, int) or handle.get("boot_id") != boot_id():
        return False
    if psutil.Process(pid).uids().real != os.getuid():
        return False
    if _run_id_of(pid) == handle.get("run_id"):
        return True
    if _run_id_of(pid) is not None:
        return False  # another run's (or another experiment's) process
    while pid not in (0, 1, os.getpid()):
        ticks = start_ticks(pid)
        if ticks is None or ticks < since:
            return False
        pid = psutil.Process(pid).ppid()
    return True


def _run_id_of(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            return _run_id_in(fh.read().split(b"\0"))
    except OSError:
        return None


def _run_id_in(environ: list[bytes]) -> str | None:
    """The run id among a process's environment entries."""
    prefix = f"{RUN_ID_VAR}=".encode()
    for item in environ:
        if item.startswith(prefix):
            return item[len(prefix):].decode(errors="replace")
    return None


# ----- the daemon as a subreaper -------------------------------------------------------------
def become_subreaper() -> bool:
    """Adopt our descendants' orphans (prctl), so a killed tree's orphans are reaped at once.

    Where pid 1 does not reap (many containers), orphans would otherwise stay zombies.
    """
    global _subreaper
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        ok = int(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False
    _subreaper = _subreaper or (ok and _children_listed())
    return ok


def _children_listed() -> bool:
    """Whether the kernel lists children in /proc (CONFIG_PROC_CHILDREN)."""
    return os.path.exists(f"/proc/self/task/{threading.get_native_id()}/children")


def reap_orphans() -> int:
    """Reap exited children that are not our own Popen children; returns how many."""
    reaped = 0
    with _owned_lock:
        for pid in _children():
            if pid in _owned:
                continue
            with contextlib.suppress(ChildProcessError, OSError):
                if os.waitpid(pid, os.WNOHANG)[0]:
                    reaped += 1
    return reaped


def _children() -> set[int]:
    """Our children: from each thread's /proc children list (microseconds), else psutil (a
    pass over every process)."""
    try:
        return set(_child_pids("self"))
    except (OSError, ValueError):
        with contextlib.suppress(psutil.Error):
            return {kid.pid for kid in psutil.Process().children()}
    return set()



