"""The training shim: wait for the daemon's go, run the training, record its exit in exit.json.

It starts with every training, so it imports little: `posix_spawnp` instead of subprocess (whose
imports cost ~4 ms here), nothing from typing at run time.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import sys
import time
from pathlib import Path

from mlsm.hooks import rundir

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import FrameType

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)


def _record(run_dir: Path, returncode: int, started: float, detail: str | None = None,
            reason: str | None = None) -> None:
    """Write exit.json (with the daemon's kill reason, if it gave one); a full disk is told."""
    record = rundir.with_kill_note(rundir.exit_record(
        returncode, started, detail=detail, pid=os.getpid(), reason=reason), run_dir)
    if not rundir.write_exit(run_dir, record):
        with contextlib.suppress(OSError):  # stderr.log may be on the same full disk
            print("mlsm: could not write exit.json; the daemon records the exit code itself",
                  file=sys.stderr, flush=True)


LIMITS = (("MLSM_LIMIT_NOFILE", resource.RLIMIT_NOFILE), ("MLSM_LIMIT_AS", resource.RLIMIT_AS))
OUT_OF_MEMORY = ("MemoryError", "Cannot allocate memory", "std::bad_alloc", "out of memory")


def _apply_limits() -> None:
    """The daemon's per-process limits, set on the shim itself so that the training inherits
    them (the shim is small: a few tens of MB of address space, a handful of files)."""
    for name, which in LIMITS:
        value = os.environ.get(name, "")
        if value.isdigit():
            _soft, hard = resource.getrlimit(which)
            new = int(value) if hard == resource.RLIM_INFINITY else min(int(value), hard)
            resource.setrlimit(which, (new, new if which == resource.RLIMIT_AS else hard))


def _memory_verdict(run_dir: Path, returncode: int) -> str | None:
    """`memory_limit` when a training under --max-memory died of an allocation failure."""
    if returncode == 0 or not os.environ.get("MLSM_LIMIT_AS"):
        return None
    tail = rundir.read_tail(run_dir / rundir.STDERR, 8192)
    return "memory_limit" if any(word in tail for word in OUT_OF_MEMORY) else None


def _wait_for_go() -> bool:
    """The daemon writes 'go' once our identity is persisted; EOF first means it died."""
    line = sys.stdin.buffer.readline()
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    return line.strip() == b"go"


def run(run_dir: Path, argv: list[str]) -> int:
    """Run `argv` to completion, forwarding signals, and record how it ended."""
    if not _wait_for_go():
        return rundir.NOT_STARTED
    started = time.time()
    try:
        child = _spawn(argv)
    except OSError as exc:
        message = f"cannot start training command {argv[0]!r}: {exc.strerror or exc}"
        print(f"mlsm: {message}", file=sys.stderr, flush=True)
        _record(run_dir, 127, started, message)
        return 127
    returncode = _wait_forwarding(child)
    if os.path.basename(argv[0]) == "bwrap" and 128 < returncode < 160:
        returncode = 128 - returncode  # bwrap passes a signal death on as 128 + n
    _record(run_dir, returncode, started, reason=_memory_verdict(run_dir, returncode))
    return returncode if returncode >= 0 else 128 - returncode


def _spawn(argv: list[str]) -> int:
    """Start the training (stdin is /dev/null already) with the limits and the default
    SIGPIPE/SIGXFSZ that Python ignores for itself; OSError when it cannot start."""
    _apply_limits()
    return os.posix_spawnp(argv[0], argv, os.environ,
                           setsigdef=(signal.SIGPIPE, signal.SIGXFSZ))


def _wait_forwarding(pid: int) -> int:
    """Forward our signals to `pid` until it ends; its exit code (-N for signal N)."""
    done = False

    def forward(signum: int, _frame: FrameType | None) -> None:
        if not done:  # once reaped, the pid may be another process's
            with contextlib.suppress(OSError):
                os.kill(pid, signum)

    for sig in FORWARDED:
        signal.signal(sig, forward)
    _, status = os.waitpid(pid, 0)
    done = True
    return os.waitstatus_to_exitcode(status)


def main(args: list[str] | None = None) -> int:
    args = sys.argv[1:] if args is None else args
    if len(args) < 3 or args[1] != "--":
        print("usage: python -m mlsm.hooks.shim RUN_DIR -- COMMAND...", file=sys.stderr)
        return 2
    return run(Path(args[0]), args[2:])


if __name__ == "__main__":
    code = main()
    with contextlib.suppress(OSError, ValueError):
        sys.stdout.flush()
        sys.stderr.flush()
    # No interpreter teardown (15 ms here): a STOP waits for this process to be gone, and
    # everything it wrote is closed already.
    os._exit(code)
