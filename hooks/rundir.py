"""One run's folder: file names, readers and writers shared by the shim, the hooks and the daemon.

Standard library only: the shim and the in-training hooks import it, and neither may pull in the
daemon's dependencies. Every reader is bounded and non-blocking (a FIFO or /dev/zero planted under
a run's name cannot stall or flood the daemon), and none raises.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import signal
import stat
import time
from pathlib import Path

TYPE_CHECKING = False  # typing costs ~4 ms at import, in every shim; only the checker needs it
if TYPE_CHECKING:
    from typing import Any

EXIT = "exit.json"
KILL = "kill.json"
HEARTBEAT = "heartbeat.json"
RESULT = "result.json"
METRICS = "metrics.jsonl"
PARAMS = "params.json"
PARAMS_USED = "params_used.json"
SPACE = "space.json"
STDOUT = "stdout.log"
STDERR = "stderr.log"
TRAIN = "train.py"
DECISION = "decision.json"
ANALYSIS = "analysis.md"
COMMIT = "commit.txt"
TENSORBOARD = "tb"
CHECKPOINTS = "checkpoints"  # hooks.checkpoint_dir(): kept across attempts, never set aside
_RANK_BEAT = re.compile(r"heartbeat\.rank_([1-9][0-9]{0,5})\.json")
_RANK_DIR = re.compile(r"rank_([0-9]{1,6})")

ATTEMPT_FILES = (
    TRAIN, STDOUT, STDERR, EXIT, KILL, HEARTBEAT, METRICS, RESULT, SPACE, PARAMS_USED, TENSORBOARD,
)
"""What one training attempt writes; an interrupted attempt's copies move to attempt_K/."""

SMALL_JSON_CAP = 1 << 20  # exit, kill, heartbeat, result, decision: a megabyte is plenty
TAIL_CAP = 64 << 10  # how much of a log's end the daemon reads to find a value
NOT_STARTED = 75  # the shim's exit code when the daemon vanished before it said go


def read_capped(path: Path, cap: int) -> bytes | None:
    """A regular file's bytes, or None: absent, a symlink, special (FIFO, device), too large."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > cap:
            return None
        data = os.read(fd, cap + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    return data if len(data) <= cap else None


def read_object(path: Path, cap: int = SMALL_JSON_CAP) -> dict[str, Any] | None:
    """A JSON object file, or None when absent, special, oversized, torn or not an object."""
    data = read_capped(path, cap)
    if data is None:
        return None
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        return None
    return doc if isinstance(doc, dict) else None


def read_tail(path: Path, limit: int = TAIL_CAP) -> str:
    """The last `limit` bytes of a regular file as text ('' when unreadable)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return ""
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return ""
        os.lseek(fd, max(0, st.st_size - limit), os.SEEK_SET)
        return os.read(fd, limit).decode("utf-8", "replace")
    except OSError:
        return ""
    finally:
        os.close(fd)


def write_json(path: Path, doc: dict[str, Any], *, durable: bool = True) -> None:
    """Replace `path` atomically with `doc` (temp file `.NAME.PID.tmp` beside it); may raise."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("w", encoding="utf-8") as fh:
            json.dump(doc, fh, indent=2, sort_keys=True, default=str)
            fh.write("\n")
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


# ----- exit and kill records -------------------------------------------------------------------
def exit_record(returncode: int | None, started: float | None, *, reason: str | None = None,
                detail: str | None = None, pid: int | None = None) -> dict[str, Any]:
    """The exit.json document of a training that ended with `returncode` (None: unknown)."""
    sig = None
    if returncode is not None and returncode < 0:
        with contextlib.suppress(ValueError):
            sig = signal.Signals(-returncode).name
    now = time.time()
    return {
        "returncode": returncode, "signal": sig,
        "reason": reason or ("signal" if sig else "exited" if returncode is not None else "lost"),
        "detail": detail, "seconds": None, "started_at": started, "ended_at": now,
        "duration_s": (now - started) if started else None, "pid": pid,
    }


def with_kill_note(record: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """`record` with the reason the daemon gave in kill.json before it killed the run."""
    note = read_kill_note(run_dir)
    if note.get("reason"):
        record = {**record, "reason": note["reason"], "seconds": note.get("seconds"),
                  "detail": note.get("detail") or record.get("detail")}
        if record.get("returncode") is None and record.get("signal") is None:
            record["signal"] = "SIGKILL"
    return record


def read_exit(run_dir: Path) -> dict[str, Any] | None:
    """exit.json, or None when absent or unusable."""
    return read_object(run_dir / EXIT)


def write_exit(run_dir: Path, record: dict[str, Any]) -> bool:
    """Write exit.json durably; False when the disk refused (the caller still has the record)."""
    try:
        write_json(run_dir / EXIT, record)
    except OSError:
        return False
    return True


def write_kill_note(run_dir: Path, reason: str, detail: str, seconds: float | None = None) -> None:
    """Tell the shim (and a later reader) why the tree is about to be killed."""
    note = {"reason": reason, "detail": detail, "seconds": seconds, "t": time.time()}
    with contextlib.suppress(OSError):  # advisory and on the STOP path: no fsync here
        write_json(run_dir / KILL, note, durable=False)


def read_kill_note(run_dir: Path) -> dict[str, Any]:
    """kill.json, or {} when the run was not killed on purpose."""
    return read_object(run_dir / KILL) or {}


# ----- heartbeat, result, metrics --------------------------------------------------------------
_BEAT_FLOATS = ("t", "boottime", "expect_next_within")
_BEAT_INTS = ("pid", "step", "total_steps", "rank", "world")


def heartbeat_name(rank: int) -> str:
    """Rank 0 (and a single process) beats in heartbeat.json, rank K in heartbeat.rank_K.json."""
    return HEARTBEAT if rank == 0 else f"heartbeat.rank_{rank}.json"


def rank_dir_name(rank: int) -> str:
    """The folder of rank K's stdout.log and stderr.log under a distributed launcher."""
    return f"rank_{rank}"


def rank_files(run_dir: Path) -> list[Path]:
    """The per-rank heartbeats and log folders of an attempt (set aside with the rest)."""
    try:
        names = os.listdir(run_dir)
    except OSError:
        return []
    return [run_dir / n for n in sorted(names) if _RANK_BEAT.fullmatch(n) or _RANK_DIR.fullmatch(n)]


def read_heartbeats(run_dir: Path) -> dict[int, dict[str, Any]]:
    """Every rank's heartbeat by rank (rank 0 from heartbeat.json); absent ranks are left out."""
    beats = {0: read_heartbeat(run_dir)}
    for path in rank_files(run_dir):
        found = _RANK_BEAT.fullmatch(path.name)
        if found:
            beats[int(found.group(1))] = read_heartbeat(run_dir, int(found.group(1)))
    return {rank: beat for rank, beat in beats.items() if beat is not None}


def read_heartbeat(run_dir: Path, rank: int = 0) -> dict[str, Any] | None:
    """The heartbeat document, or None when absent or mid-replace; a time that is not a finite
    number, or a pid or step that is not a sane whole number, reads as None."""
    doc = read_object(run_dir / heartbeat_name(rank))
    if doc is None:
        return None
    for key in _BEAT_FLOATS:
        if key in doc:
            doc[key] = finite(doc[key])
    for key in _BEAT_INTS:
        if key in doc:
            doc[key] = whole(doc[key])
    if "boot_id" in doc and not isinstance(doc["boot_id"], str):
        doc["boot_id"] = None
    return doc


def read_result(run_dir: Path) -> dict[str, Any] | None:
    """result.json as `hooks.result` wrote it: {"metrics": {...}, "objective", "goal"}."""
    return read_object(run_dir / RESULT)


def finite(value: Any) -> float | None:
    """`value` as a finite float of sane size, else None (booleans are not numbers)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def whole(value: Any) -> int | None:
    """`value` as a whole number that fits 64 bits, else None (booleans are not numbers)."""
    if isinstance(value, bool) or not isinstance(value, int) or abs(value) >= 1 << 63:
        return None
    return value


def last_logged(run_dir: Path, name: str) -> float | None:
    """The last value of metric `name` that `hooks.log` wrote to metrics.jsonl (its tail only)."""
    for line in reversed(read_tail(run_dir / METRICS).splitlines()):
        if f'"{name}"' not in line:
            continue
        with contextlib.suppress(ValueError, RecursionError):
            row = json.loads(line)
            value = finite(row.get(name)) if isinstance(row, dict) else None
            if value is not None:
                return value
    return None


_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"


def last_printed(run_dir: Path, name: str) -> float | None:
    """The last `name: 0.31` / `name=0.31` a plain script printed to stdout (its tail only)."""
    pattern = re.compile(rf"(?<![\w.]){re.escape(name)}\s*[:=]\s*({_NUMBER})(?![\w.])")
    matches = pattern.findall(read_tail(run_dir / STDOUT))
    return finite(float(matches[-1])) if matches else None


def keep_tail(path: Path, cap: int, keep: int) -> int:
    """When `path` is over `cap` bytes, cut it to its last `keep` bytes behind a marker line;
    returns how many bytes went. One O_NOFOLLOW descriptor does it all (a link planted under
    the log's name is never followed, nor truncated), in 1 MB steps (memory stays small).
    Writers append (O_APPEND), so they carry on at the new end."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return 0
    try:
        st = os.fstat(fd)
        start = st.st_size - keep
        marker = f"[mlsm: {start} bytes dropped to keep this log small]\n".encode()
        if not stat.S_ISREG(st.st_mode) or st.st_size <= cap or start <= len(marker):
            return 0
        end = _move_down(fd, start, len(marker), st.st_size + keep)
        os.pwrite(fd, marker, 0)
        os.ftruncate(fd, len(marker) + end - start)
    except OSError:
        return 0
    finally:
        os.close(fd)
    return start


def _move_down(fd: int, src: int, dest: int, limit: int) -> int:
    """Copy the file's bytes from `src` (up to its end, or `limit`) down to `dest` < `src`;
    returns the offset where the copy stopped."""
    while src < limit:
        chunk = os.pread(fd, min(1 << 20, limit - src), src)
        if not chunk:
            break
        os.pwrite(fd, chunk, dest)
        src, dest = src + len(chunk), dest + len(chunk)
    return src


def output_size(run_dir: Path) -> int:
    """Combined size of the training's stdout and stderr logs."""
    total = 0
    for name in (STDOUT, STDERR):
        with contextlib.suppress(OSError):
            total += (run_dir / name).stat().st_size
    return total
