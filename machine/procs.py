"""Process supervision: spawn in a new session, identify (boot id, pid, start ticks), kill trees."""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import fnmatch
import os
import select
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import IO, Any

import psutil

from mlsm.machine.store import now_iso

RUN_ID_VAR = "MLSM_RUN_ID"


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


@dataclasses.dataclass(frozen=True)
class ProcRecord:
    """Who a supervised process is, as stored in status.json."""

    pid: int
    pgid: int
    start_ticks: int | None
    boot_id: str
    run_id: str
    cmd: list[str]
    started_at: str

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> ProcRecord:
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in obj.items() if k in fields})


def same_process(rec: ProcRecord) -> bool:
    """True when the recorded process is still running: same boot, pid and start ticks."""
    if rec.boot_id != boot_id():
        return False
    ticks = start_ticks(rec.pid)
    if ticks is None or ticks != rec.start_ticks:
        return False
    return not _is_zombie(rec.pid)


def _is_zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


def new_run_id() -> str:
    return uuid.uuid4().hex[:16]


# Our own Popen children: the orphan reaper must never reap one (Popen.wait owns its status).
_owned: set[int] = set()
_owned_lock = threading.Lock()
PR_SET_CHILD_SUBREAPER = 36


def spawn(
    argv: list[str],
    cwd: Path,
    env: Mapping[str, str],
    stdout: IO[Any] | int,
    stdin: int = subprocess.DEVNULL,
    stderr: IO[Any] | int = subprocess.STDOUT,
    record_cmd: list[str] | None = None,
) -> tuple[subprocess.Popen[bytes], ProcRecord]:
    """Start `argv` in its own session with MLSM_RUN_ID set; return it and its identity."""
    run_id = env.get(RUN_ID_VAR) or new_run_id()
    full_env = dict(env)
    full_env[RUN_ID_VAR] = run_id
    with _owned_lock:
        proc = subprocess.Popen(argv, cwd=cwd, env=full_env, stdin=stdin, stdout=stdout,
                                stderr=stderr, start_new_session=True, close_fds=True)
        _owned.add(proc.pid)
    rec = ProcRecord(
        pid=proc.pid, pgid=proc.pid, start_ticks=start_ticks(proc.pid), boot_id=boot_id(),
        run_id=run_id, cmd=list(record_cmd or argv), started_at=now_iso(),
    )
    return proc, rec


def become_subreaper() -> bool:
    """Adopt our descendants' orphans (prctl), so a killed tree's orphans are reaped at once.

    Where pid 1 does not reap (many containers), orphans would otherwise stay zombies.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def reap_orphans() -> int:
    """Reap exited children that are not our own Popen children; returns how many."""
    reaped = 0
    with _owned_lock:
        try:
            kids = psutil.Process().children()
        except psutil.Error:
            return 0
        for kid in kids:
            if kid.pid in _owned:
                continue
            with contextlib.suppress(ChildProcessError, OSError):
                if os.waitpid(kid.pid, os.WNOHANG)[0]:
                    reaped += 1
    return reaped


def _disown(pid: int) -> None:
    with _owned_lock:
        _owned.discard(pid)


def wait_exit(popen: subprocess.Popen[bytes], timeout: float | None) -> bool:
    """Wait up to `timeout` for our child to exit; True when it has (and is reaped).

    A pidfd wakes us the moment the child exits; Popen.wait(timeout) would poll with
    sleeps of up to 50 ms, which adds that much to every step of an iteration.
    """
    if popen.poll() is not None:
        _disown(popen.pid)
        return True
    try:
        fd = os.pidfd_open(popen.pid)
    except (AttributeError, OSError):
        try:
            popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        _disown(popen.pid)
        return True
    try:
        select.select([fd], [], [], timeout)
    finally:
        os.close(fd)
    if popen.poll() is None:
        return False
    _disown(popen.pid)
    return True


def _scan(run_id: str) -> tuple[dict[int, list[int]], set[int]]:
    """One pass over /proc: children by parent pid, and the pids tagged MLSM_RUN_ID=<run_id>.

    The tag is in the environment, so it survives setsid and re-parenting; one pass keeps
    the cost at one read per process however large the tree is.
    """
    needle = f"{RUN_ID_VAR}={run_id}".encode()
    children: dict[int, list[int]] = {}
    tagged: set[int] = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            with open(f"/proc/{pid}/stat", "rb") as fh:
                stat = fh.read()
            ppid = int(stat[stat.rindex(b")") + 2:].split()[1])
            children.setdefault(ppid, []).append(pid)
            with open(f"/proc/{pid}/environ", "rb") as fh:
                if needle in fh.read().split(b"\0"):
                    tagged.add(pid)
        except (OSError, ValueError):
            continue
    return children, tagged


def _descendants(roots: Iterable[int], children: Mapping[int, list[int]]) -> set[int]:
    out: set[int] = set()
    todo = list(roots)
    while todo:
        pid = todo.pop()
        if pid not in out:
            out.add(pid)
            todo.extend(children.get(pid, ()))
    return out


def tree(rec: ProcRecord) -> list[psutil.Process]:
    """The recorded process, its descendants, and every process tagged with its run (and theirs)."""
    children, tagged = _scan(rec.run_id)
    roots = set(tagged)
    if same_process(rec):
        roots.add(rec.pid)
    pids = _descendants(roots, children)
    pids.discard(os.getpid())
    procs = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            procs.append(psutil.Process(pid))
    return procs


def _signal_all(rec: ProcRecord, procs: Iterable[psutil.Process], sig: int) -> None:
    if rec.boot_id == boot_id():
        with contextlib.suppress(OSError):
            os.killpg(rec.pgid, sig)
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
    """Poll until every process is dead or `timeout` passes; return the survivors."""
    deadline = clock() + timeout
    delay = 0.001
    left = alive(procs)
    while left and clock() < deadline:
        time.sleep(min(delay, max(0.0, deadline - clock())))
        delay = min(delay * 2, 0.05)
        left = alive(left)
    return left


def kill_tree(rec: ProcRecord, grace: float) -> int:
    """SIGTERM the whole tree, wait `grace`, SIGKILL what is left. Returns how many were found."""
    procs = tree(rec)
    _signal_all(rec, procs, signal.SIGTERM)
    left = wait_gone(procs, grace)
    # A child may have forked during the grace period: look again before the KILL.
    left = alive({p.pid: p for p in [*left, *tree(rec)]}.values())
    if left:
        _signal_all(rec, left, signal.SIGKILL)
        left = wait_gone(left, 5.0)
    reap_orphans()
    return len(procs)


def signal_main(rec: ProcRecord, sig: int) -> bool:
    """Send `sig` to the recorded process and its descendants (e.g. SIGUSR1 for a stack dump)."""
    if not same_process(rec):
        return False
    with contextlib.suppress(psutil.Error):
        for proc in [psutil.Process(rec.pid), *psutil.Process(rec.pid).children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                proc.send_signal(sig)
    return True


# Environment of AI-written training code: an allow-list, never the agent's secrets.
TRAIN_ENV_ALLOW = (
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "LC_*", "TZ", "TERM",
    "TMPDIR", "PWD", "VIRTUAL_ENV", "CONDA_PREFIX", "CONDA_DEFAULT_ENV", "PYTHONPATH",
    "PYTHONHASHSEED", "LD_LIBRARY_PATH", "CUDA_*", "NVIDIA_*", "NCCL_*", "OMP_NUM_THREADS",
    "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TORCH_*", "PYTORCH_*", "HF_HOME",
    "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "XDG_CACHE_HOME", "MLSM_*",
)
SECRET_PATTERNS = (
    "ANTHROPIC_*", "OPENAI_*", "CLAUDE_*", "CODEX_*", "*_API_KEY", "*_TOKEN", "*_SECRET*",
    "*PASSWORD*", "AWS_*", "AZURE_*", "GOOGLE_APPLICATION_CREDENTIALS", "GCP_*", "GH_*",
    "GITHUB_*", "HF_TOKEN", "WANDB_API_KEY", "SSH_AUTH_SOCK",
)


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def training_env(environ: Mapping[str, str], extra: Iterable[str] = ()) -> dict[str, str]:
    """The allow-listed environment for training; names the person adds in config pass too."""
    extra = tuple(extra)
    env = {}
    for name, value in environ.items():
        if name in extra or (_matches(name, TRAIN_ENV_ALLOW)
                             and not _matches(name, SECRET_PATTERNS)):
            env[name] = value
    env["PYTHONUNBUFFERED"] = "1"
    return env
