"""In-training API: heartbeats, metrics, parameters and the result, written under $MLSM_RUN_DIR."""

from __future__ import annotations

import atexit
import contextlib
import math
import os
import sys
import time
from _thread import RLock
from itertools import chain, groupby
from operator import add, eq, itemgetter

from . import _io, rundir
from ._space import (
    ParamsError,
    Space,
    choice,
    declare,
    describe_all,
    intrange,
    loguniform,
    merge,
    uniform,
)

try:
    from . import _speedups  # the compiled fast path of log(); optional, same output
except ImportError:  # built where no C compiler was found
    _speedups = None  # type: ignore[assignment]

TYPE_CHECKING = False  # typing costs milliseconds at import; only the type checker needs it
if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path
    from types import FrameType, ModuleType
    from typing import Any


__all__ = [
    "Params",
    "ParamsError",
    "Space",
    "checkpoint_dir",
    "choice",
    "enabled",
    "flush",
    "heartbeat",
    "intrange",
    "log",
    "loguniform",
    "params",
    "rank",
    "result",
    "resumed",
    "stop_requested",
    "uniform",
]

GOALS = ("minimize", "maximize")
_MAX_ROWS = 4096  # flush early too, so a tight loop cannot pile up memory within one interval
_monotonic = time.monotonic  # a module global: the fast paths skip one attribute lookup

# Configuration, read once at import by _configure().
_RUN_DIR: str | None = None
_INTERVAL = 1.0
_FLUSH_EVERY = 1.0
_BOOT_ID = ""  # this boot's id, written beside each heartbeat's CLOCK_BOOTTIME
_COMPILED = False  # log() is the compiled Recorder's: _speedups built, MLSM_HOOKS_COMPILED != 0
_RANK = 0  # $RANK under torchrun (or srun): only rank 0 writes metrics, params and the result
_WORLD: int | None = None  # $WORLD_SIZE when a launcher set it: the beats then name their rank
_RESUMED = False  # MLSM_RESUMED=1: this start continues an interrupted one of its iteration
_ckpt: str | None = None  # checkpoint_dir(), made on first use
_stop = False  # SIGTERM arrived while the training polls stop_requested()
_polled = False  # the training polls stop_requested(): SIGTERM sets _stop instead of killing

# Per-process state, renewed by _reset() at import and in every forked child.
_on = False
_next_beat = math.inf
_next_flush = math.inf
_due = math.inf  # min(_next_beat, _next_flush): log() compares the clock with one number
_buf: Any = []  # the rows: a list, or the compiled Recorder (which has append() and len())
# That Recorder: one per process, so a `log` imported before a fork still works in the child.
_rec: _speedups.Recorder | None = None
_seq = 0
_step: Any = None
_total: int | None = None
_lock = RLock()
_metrics: _io.Appender | None = None
_FLOAT = {float}
_formats: dict[tuple[str, ...], str] = {}  # metrics.jsonl line template per key set


class Params(dict["str", "Any"]):
    """The parameters to train with: `cfg.lr` and `cfg["lr"]` both work."""

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"no parameter named {name!r}") from None


class _Coerced(dict["str", "Any"]):
    """Metrics with an int, tensor or bad value: written by the exact (slower) path."""

    __slots__ = ()


def enabled() -> bool:
    """Whether this process runs under mlsm (MLSM_RUN_DIR is set); else every hook does nothing."""
    return _RUN_DIR is not None


def rank() -> int:
    """This process's rank ($RANK, set by torchrun or srun; 0 for a single process)."""
    return _RANK


def checkpoint_dir() -> Path:
    """This iteration's checkpoint folder ($MLSM_RUN_DIR/checkpoints), kept across STOP and
    resume, a crash and a relaunch; save there, and load from it when `resumed()`.

    Outside mlsm (or in a script an agent runs): a temporary folder, removed at exit, so a
    run by hand never resumes and leaves nothing behind.
    """
    global _ckpt
    from pathlib import Path

    if _ckpt is None:
        if _RUN_DIR is None:
            import shutil
            import tempfile

            _ckpt = tempfile.mkdtemp(prefix="mlsm-checkpoints-")
            atexit.register(shutil.rmtree, _ckpt, True)
        else:
            _ckpt = os.path.join(_RUN_DIR, rundir.CHECKPOINTS)
            os.makedirs(_ckpt, exist_ok=True)
    return Path(_ckpt)


def resumed() -> bool:
    """Whether this start continues an interrupted start of the same iteration (STOP and
    resume, a crash, a preemption, a retry): then load the checkpoint, if one was saved."""
    return _RESUMED


def stop_requested() -> bool:
    """Whether mlsm asked the training to stop (SIGTERM: STOP, --run-timeout, shutdown, a
    preemption); it has --grace seconds to save a checkpoint and exit before SIGKILL.

    Once a training calls this, a SIGTERM flushes and sets the flag instead of ending the
    process, so a loop that checks it every step saves first (more SIGTERMs, say from
    torchrun's agent passing the stop on, change nothing; SIGKILL follows after --grace).
    """
    global _polled
    _polled = True
    return _stop


def heartbeat(step: int | None = None, *, expect_next_within: float | None = None) -> None:
    """Tell mlsm the training is alive; call it every step: it writes heartbeat.json at most once
    per MLSM_HEARTBEAT_INTERVAL seconds (default 1), and costs a clock read otherwise.

    `expect_next_within` (seconds) always writes and widens the staleness limit until the next
    beat, e.g. before a long evaluation. A `step` of None keeps the last step reported.
    """
    if expect_next_within is None and _monotonic() < _next_beat:
        return
    _beat(step, expect_next_within)


def log(step: int | None = None, *, total_steps: int | None = None, **metrics: float) -> None:
    """Record metrics for `step` in metrics.jsonl; also a heartbeat. Cheap enough for every step.

    Rows are buffered and written on the first call after MLSM_FLUSH_INTERVAL seconds (default
    1), on flush(), result(), normal exit and SIGTERM; a crash loses only the unwritten rows.
    Each line is `{"step": .., "t": <unix time, ms>, "<name>": <value>, ..}`: floats with 12
    significant digits (an integral float may read back as an int), ints exact, NaN and
    infinities as the strings "nan", "inf", "-inf" (so `float(value)` reads every value back),
    anything else as null. Tensors are detached here and read at flush time, so logging one
    does not wait for the device each step. `total_steps` is remembered once given.

    (This is the Python log(). Where mlsm's extension is built, `log` is the compiled one,
    which keeps plain-float calls itself and hands every other call to this function.)
    """
    if not _on:
        return
    if total_steps is not None and total_steps != _total:
        _remember_total(total_steps)
    for value in metrics.values():
        if type(value) is not float:
            metrics = _Coerced({k: _scalar(v) for k, v in metrics.items()})
            break
    now = _monotonic()
    _buf.append((step, now, metrics))
    if now >= _due or len(_buf) >= _MAX_ROWS:
        _tick(step, now)


_log_py = log  # _reset() rebinds `log` to the compiled one where it can; this one stays


def _log_rank(step: int | None = None, *, total_steps: int | None = None,
              **metrics: float) -> None:
    """log() on a rank other than 0: rank 0 writes the metrics, this rank only beats."""
    if total_steps is not None and total_steps != _total:
        _remember_total(total_steps)
    if _on and _monotonic() >= _next_beat:
        _beat(step, None)


def _tick(step: Any, now: float) -> None:
    """log()'s rare branch: a flush or a heartbeat is due, or the buffer is full."""
    if now >= _next_flush or len(_buf) >= _MAX_ROWS:
        flush()
    if now >= _next_beat:
        _beat(step, None)


def flush() -> None:
    """Write the buffered metrics to metrics.jsonl now."""
    global _next_flush
    with _lock:
        _next_flush = _monotonic() + _FLUSH_EVERY
        _set_due()
        if not len(_buf) or _metrics is None:
            return
        offset = time.time() - _monotonic()  # buffered times are monotonic: convert at once
        if _rec is not None:
            _metrics.append("".join(_texts(_rec.drain(offset), offset)))
            return
        _metrics.append(_encode(_take(), offset))


def _take() -> list[tuple[Any, float, dict[str, Any]]]:
    """Every buffered row, removed from the buffer."""
    if _rec is not None:
        rows: list[tuple[Any, float, dict[str, Any]]] = _rec.take()
        return rows
    rows = _buf[:]
    del _buf[: len(rows)]  # not a new list: a row appended meanwhile by a thread stays
    return rows


def _texts(parts: list[Any], offset: float) -> Iterator[str]:
    """The compiled Recorder's drain: its lines as they are, the Python path's rows encoded."""
    for is_text, group in groupby(parts, key=str.__instancecheck__):
        run = list(group)
        yield "".join(run) if is_text else _encode(run, offset)


def _set_due() -> None:
    """log() calls _tick() once the clock reaches the next flush or heartbeat."""
    global _due
    _due = min(_next_flush, _next_beat)
    if _rec is not None:
        _rec.due = _due


def params(**defaults: Any) -> Params:
    """The defaults (plain values or spaces such as `loguniform(1e-4, 1e-1)`) with mlsm's overrides.

    Under mlsm the overrides come from params.json; one that is unknown or does not fit its
    space raises ParamsError. The space goes to space.json, the values used to params_used.json.
    Call it once per training script: each call describes the whole space.
    """
    spaces = declare(defaults)
    if _RUN_DIR is None:
        return Params({key: space.default for key, space in spaces.items()})
    values = merge(spaces, _read_overrides())
    if _on and not _RANK:
        _write_json(rundir.SPACE, describe_all(spaces))
        _write_json(rundir.PARAMS_USED, values)
    return Params(values)


def result(goal: str = "minimize", objective: str | None = None, **metrics: float) -> None:
    """Record the final metrics in result.json; `objective` (default: the first) is the one to
    `goal` ("minimize" or "maximize"). Also flushes metrics and prints one `mlsm-result:` line.
    """
    name = _check_result(goal, objective, metrics)
    if not _on or _RANK:
        return
    flush()
    values = {key: _plain(value) for key, value in metrics.items()}
    doc = {"metrics": values, "objective": name, "goal": goal, "t": time.time()}
    _write_json(rundir.RESULT, doc, durable=True)
    ordered = [name, *(key for key in metrics if key != name)]
    summary = " ".join(f"{key}={_fmt(values[key])}" for key in ordered)
    print(f"mlsm-result: {summary} goal={goal}", flush=True)


def _check_result(goal: str, objective: str | None, metrics: dict[str, Any]) -> str:
    """The objective's name; ValueError for a bad goal or objective, under mlsm or not."""
    if goal not in GOALS:
        raise ValueError(f"goal must be 'minimize' or 'maximize', not {goal!r}")
    if not metrics:
        raise ValueError("result() needs at least one metric, e.g. result(val_loss=0.31)")
    name = next(iter(metrics)) if objective is None else objective
    if name not in metrics:
        given = ", ".join(metrics)
        raise ValueError(f"objective {name!r} is not among the metrics given ({given})")
    return name


def _beat(step: Any, expect: float | None) -> None:
    """Write heartbeat.json (pid, seq, step, total_steps, t, expect_next_within) atomically."""
    global _next_beat, _seq, _step
    if expect is not None:
        expect = _check_expect(expect)
    if not _on:
        return
    with _lock:  # threads share one temp file name
        _next_beat = _monotonic() + _INTERVAL
        _set_due()
        _seq += 1
        if step is not None:
            _step = step
        wait = "null" if expect is None else repr(expect)
        ranked = "" if _WORLD is None else f', "rank": {_RANK}, "world": {_WORLD}'
        text = (f'{{"pid": {os.getpid()}, "seq": {_seq}, "step": {_int(_step)}, '
                f'"total_steps": {_int(_total)}, "t": {time.time():.6f}, '
                f'"boot_id": "{_BOOT_ID}", "boottime": {_boottime():.6f}, '
                f'"expect_next_within": {wait}{ranked}}}\n')
        _io.replace(_path(rundir.heartbeat_name(_RANK)), text, durable=False)


def _boottime() -> float:
    """Seconds since boot (CLOCK_BOOTTIME): a wall-clock step cannot make a beat look stale."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def _read_boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as fh:
            return fh.read().strip()
    except OSError:
        return ""


def _check_expect(expect: Any) -> float:
    seconds = float(expect)
    if not (math.isfinite(seconds) and seconds >= 0):
        raise ValueError(f"expect_next_within must be seconds >= 0, not {expect!r}")
    return seconds


def _remember_total(total_steps: Any) -> None:
    global _total
    try:
        _total = int(total_steps)
    except (TypeError, ValueError):
        _io.say_once("total_steps", f"total_steps={total_steps!r} is not an integer; ignored")
    if _rec is not None:
        _rec.set_total(_total)


def _scalar(value: Any) -> Any:
    """A float or int, or a detached tensor (read at flush); None for what is not a number."""
    if type(value) is float or type(value) is int:
        return value
    detach = getattr(value, "detach", None)
    if detach is not None:
        return detach()
    try:
        return float(value)
    except (TypeError, ValueError):
        _io.say_once("metric", f"a metric value {value!r} is not a number; written as null")
        return None


def _encode(rows: list[tuple[Any, float, dict[str, Any]]], offset: float) -> str:
    """metrics.jsonl lines for `rows`: per run of rows with the same metric names, one C-level
    `%` over a cached template, or _row() per row where the template cannot take them.

    The per-row work stays in C (zip, map, itemgetter): json.dumps, or any Python loop over
    the rows, costs more than a log() call may.
    """
    steps, monos, dicts = zip(*rows, strict=True)
    stamps = list(map(offset.__add__, monos))  # buffered times are monotonic: make them unix
    names = list(map(dict.keys, dicts))
    same = list(map(eq, names, names[1:]))  # same[i]: rows i and i + 1 have the same names
    parts, start = [], 0
    while start < len(rows):
        try:
            end = same.index(False, start) + 1
        except ValueError:
            end = len(rows)
        parts.append(_encode_run(steps[start:end], stamps[start:end], dicts[start:end]))
        start = end
    return "".join(parts)


def _encode_run(steps: tuple[Any, ...], stamps: list[float],
                dicts: tuple[dict[str, Any], ...]) -> str:
    """Lines for rows that share their metric names; the template takes them when every value
    is a finite float and every step formats as %d (NaN, inf, ints, tensors, odd steps: _row)."""
    keys = tuple(dicts[0])
    if keys:
        values = list(map(itemgetter(*keys), dicts))
        flat = values if len(keys) == 1 else list(chain.from_iterable(values))
        total = sum(flat) if set(map(type, flat)) == _FLOAT else math.nan
        if total - total == 0.0:  # all finite (an overflow to inf only costs the slow path)
            if len(keys) == 1:
                args = chain.from_iterable(zip(steps, stamps, values, strict=True))
            else:  # (step, t) + (v1, v2, ..) per row
                args = chain.from_iterable(map(add, zip(steps, stamps, strict=True), values))
            template = _formats.get(keys) or _format(keys)
            with contextlib.suppress(TypeError, ValueError, OverflowError):  # step None, "3", inf
                return (template * len(steps)) % tuple(args)
    return "".join(map(_row, steps, stamps, dicts))


def _quote(name: str) -> str:
    """A metric name as a JSON string literal, for both paths (ASCII: the compiled path
    writes it as bytes)."""
    import json

    return json.dumps(name)


def _format(keys: tuple[str, ...]) -> str:
    quoted = [_quote(key).replace("%", "%%") for key in keys]
    _formats[keys] = template = (
        '{"step": %d, "t": %.3f' + "".join(f", {q}: %.12g" for q in quoted) + "}\n")
    return template


def _row(step: Any, stamp: float, metrics: dict[str, Any]) -> str:
    """One line for a row the template cannot take: odd step, non-finite or non-float values."""
    fields = "".join([f", {_quote(k)}: {_number(v)}" for k, v in metrics.items()])
    return f'{{"step": {_int(step)}, "t": {stamp:.3f}{fields}}}\n'


def _number(value: Any) -> str:
    """A JSON number; NaN and infinities as the strings "nan", "inf", "-inf"; else null.

    Floats keep 12 significant digits (float32 values round-trip exactly): shortest repr()
    costs twice as much, and the fast path formats with %.12g too. Ints stay exact.
    """
    if type(value) is float:
        if value - value == 0.0:  # finite
            return f"{value:.12g}"
    elif type(value) is int:
        return str(value)
    else:
        try:
            value = float(value)
        except Exception:  # a foreign object (tensor, array) may raise anything; never crash
            return "null"
        if value - value == 0.0:
            return f"{value:.12g}"
    return '"nan"' if value != value else ('"inf"' if value > 0 else '"-inf"')


def _plain(value: Any) -> float | str | None:
    """A metric as result.json holds it: an exact float, "nan"/"inf"/"-inf", or null."""
    try:
        number = float(value)
    except Exception:  # a foreign object (tensor, array) may raise anything; never crash
        return None
    if math.isfinite(number):
        return number
    return "nan" if number != number else ("inf" if number > 0 else "-inf")


def _int(value: Any) -> str:
    if value is None:
        return "null"
    try:
        return str(int(value))
    except Exception:  # a foreign object may raise anything; never crash
        return "null"


def _fmt(value: float | str | None) -> str:
    if not isinstance(value, float):
        return str(value).lower()
    return f"{value:.4f}" if value == 0 or 1e-3 <= abs(value) < 1e6 else f"{value:.4g}"


def _read_overrides() -> dict[str, Any]:
    """params.json as a dict; absent means no overrides, unreadable is the agent's error."""
    import json

    try:
        with open(_path(rundir.PARAMS), "rb") as fh:
            doc = json.load(fh)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ParamsError(f"cannot read params.json ({exc}); it must be one JSON object.") from exc
    if not isinstance(doc, dict):
        raise ParamsError(f"params.json must be one JSON object of values, not {doc!r:.60}.")
    return doc


def _write_json(name: str, doc: Any, *, durable: bool = False) -> None:
    import json

    # repr() for what JSON cannot hold, e.g. a fixed parameter that is a class
    _io.replace(_path(name), json.dumps(doc, indent=2, default=repr) + "\n", durable=durable)


def _path(name: str) -> str:
    assert _RUN_DIR is not None
    return os.path.join(_RUN_DIR, name)


def _seconds(name: str, default: float) -> float:
    """A number of seconds >= 0 from the environment; a bad value warns and keeps the default."""
    raw = os.environ.get(name, "")
    try:
        value = float(raw) if raw else default
    except ValueError:
        value = math.nan
    if math.isfinite(value) and value >= 0:
        return value
    _io.say_once(name, f"ignoring {name}={raw!r} (not seconds >= 0); using {default:g}")
    return default


def _is_shim() -> bool:
    """True in `python -m mlsm.hooks.shim` (or `.ranklogs`, torchrun's per-rank wrapper): it
    imports this package but is not the training."""
    argv = getattr(sys, "orig_argv", [])
    module = argv[argv.index("-m") + 1 :][:1] if "-m" in argv else []
    return module in (["mlsm.hooks.shim"], ["mlsm.hooks.ranklogs"])


def _whole(name: str) -> int | None:
    """A whole number >= 0 from the environment; absent or bad (told once) is None."""
    raw = os.environ.get(name, "").strip()
    if raw.isdigit():
        return int(raw)
    if raw:
        _io.say_once(name, f"ignoring {name}={raw!r} (not a whole number >= 0)")
    return None


def _configure() -> None:
    """Read the environment once: with MLSM_RUN_DIR every hook writes there, else none does."""
    global _RUN_DIR, _INTERVAL, _FLUSH_EVERY, _COMPILED, _BOOT_ID, _RANK, _WORLD, _RESUMED
    raw = os.environ.get("MLSM_RUN_DIR", "")
    # An agent step (MLSM_ROLE set) also has MLSM_RUN_DIR: a script it runs must not write
    # heartbeats, metrics or a result into the training's folder.
    on = raw and not _is_shim() and not os.environ.get("MLSM_ROLE")
    _RUN_DIR = os.path.abspath(raw) if on else None  # train.py may chdir
    _INTERVAL = _seconds("MLSM_HEARTBEAT_INTERVAL", 1.0)
    _FLUSH_EVERY = _seconds("MLSM_FLUSH_INTERVAL", 1.0)
    _RANK, _WORLD = _whole("RANK") or 0, _whole("WORLD_SIZE")
    _RESUMED = _RUN_DIR is not None and os.environ.get("MLSM_RESUMED") == "1"
    _BOOT_ID = _read_boot_id() if _RUN_DIR is not None else ""
    _COMPILED = _speedups is not None and os.environ.get("MLSM_HOOKS_COMPILED") != "0"
    _reset()


def _reset() -> None:
    """Fresh state for this process: a forked child must not write the rows its parent logged."""
    global _on, _next_beat, _next_flush, _buf, _rec, _lock, _metrics, log
    _on = _RUN_DIR is not None
    _next_beat = 0.0 if _on else math.inf  # the first beat writes at once
    _next_flush = _monotonic() + _FLUSH_EVERY if _on else math.inf
    if _on and _COMPILED and not _RANK:
        if _rec is None:
            _rec = _speedups.Recorder(_MAX_ROWS, _log_py, _tick, _quote)
        _rec.clear()  # the same Recorder: a `log` the training imported before fork is its
        _rec.set_total(_total)
        _buf, log = _rec, _rec.log
    else:  # rank 0 writes the metrics: another rank's log() only beats
        _rec, _buf, log = None, [], _log_rank if _RANK else _log_py
    _set_due()
    _lock = RLock()  # another thread may have held the parent's at fork time
    _metrics = _io.Appender(_path(rundir.METRICS)) if _on and not _RANK else None


def _install() -> None:
    """Stack dumps on SIGUSR1, a last flush at exit and on SIGTERM, fresh state after fork."""
    import faulthandler
    import signal

    if hasattr(signal, "SIGUSR1"):
        # no usable stderr (closed or None) leaves nowhere to dump to anyway
        with contextlib.suppress(AttributeError, OSError, RuntimeError, ValueError):
            faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True)
    atexit.register(_at_exit)
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_reset)
    _catch_sigterm(signal)


def _catch_sigterm(signal: ModuleType) -> None:
    """Flush on SIGTERM, then die of it as before; only where nobody handles it yet."""
    try:
        if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:
        pass  # imported outside the main thread, where signals cannot be set


def _on_sigterm(signum: int, _frame: FrameType | None) -> None:
    global _stop
    import signal

    flush()
    if _polled:  # the training checks stop_requested(): it saves, then exits
        _stop = True
        return
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)  # the default action: the exit status still says SIGTERM


def _at_exit() -> None:
    flush()


_configure()
if _RUN_DIR is not None:
    _install()
