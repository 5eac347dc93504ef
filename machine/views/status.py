"""`mlsm status` and `mlsm logs`: read-only views of experiments (never touch a run)."""

from __future__ import annotations

import fcntl
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from mlsm.hooks import rundir
from mlsm.hooks.layout import IDEA, Layout
from mlsm.machine.core.errors import ExitCode, InputError
from mlsm.machine.core.status import Status, read_status
from mlsm.machine.core.store import parse_iso


def daemon_running(exp_dir: Path) -> bool:
    """True when some process holds the experiment's lock (a daemon drives it).

    The daemon flocks the directory itself (and `.mlsm/lock`, which holds its pid); a probe
    opens both read-only, so a view creates nothing and works without write access.
    """
    return any(_held(path) for path in (exp_dir, Layout(exp_dir).lock))


def _held(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def _lock_holder(exp_dir: Path) -> int | None:
    """The pid the daemon wrote into its lock file, if readable."""
    text = rundir.read_tail(Layout(exp_dir).lock, 64).strip()
    return int(text) if text.isdigit() else None


def _present(path: Path) -> bool:
    """Whether `path` exists; False when it cannot be told (a directory we may not search)."""
    try:
        return path.exists()
    except OSError:
        return False


def _has_files(d: Path) -> bool:
    return _present(Layout(d).idea) or _present(Layout(d).status)


def is_experiment(d: Path) -> bool:
    """Has IDEA.md or status.json, or a daemon holds it (waiting for IDEA.md)."""
    return _has_files(d) or daemon_running(d)


def experiments_under(root: Path) -> list[Path]:
    """The subdirectories of a discovery root that are experiments (IDEA.md or status.json)."""
    try:
        subdirs = sorted(p for p in root.iterdir()
                         if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return []
    return [d for d in subdirs if _has_files(d)]


def expand(dirs: list[Path]) -> list[Path]:
    """DIRS with each discovery root replaced by the experiments in it."""
    out: list[Path] = []
    for d in dirs:
        found = [] if not d.is_dir() or is_experiment(d) else experiments_under(d)
        out.extend(found or [d])
    return out


def _last_line(path: Path, limit: int = 8192) -> Any:
    for line in reversed(rundir.read_tail(path, limit).splitlines()):
        try:
            return json.loads(line)
        except ValueError:
            continue
    return None


def _proc(doc: Any) -> dict[str, Any] | None:
    if not isinstance(doc, dict):
        return None
    from mlsm.handlers.launchers import launcher_of  # psutil only when a process is recorded

    launcher = launcher_of(doc)
    return {"pid": doc.get("pid"), "job_id": doc.get("job_id"), "alive": launcher.alive(doc),
            "name": launcher.describe(doc), "started_at": doc.get("started_at"),
            "role": doc.get("role"), "cmd": doc.get("cmd"),
            "launcher": doc.get("launcher") or "local"}


def _with_gpus(proc: dict[str, Any] | None, doc: Any) -> dict[str, Any] | None:
    """The training's entry plus its GPU group, and each GPU's utilisation and memory while
    the run lives (NVML is loaded only for a run that was handed GPUs)."""
    devices = doc.get("devices") if isinstance(doc, dict) else None
    if proc is None or not isinstance(devices, str) or not devices:
        return proc
    from mlsm.handlers import gpus

    return {**proc, "devices": devices, "gpus": gpus.usage(devices) if proc["alive"] else []}


def _gpu_text(proc: dict[str, Any]) -> str:
    """`gpus 0,1 (37% 1200/81559 MB, 40% 1180/81559 MB)`."""
    stats = [f"{g['util_pct']}% {g['mem_used_mb']}/{g['mem_total_mb']} MB"
             for g in proc.get("gpus") or [] if g.get("util_pct") is not None]
    return f"gpus {proc['devices']}" + (f" ({', '.join(stats)})" if stats else "")


def snapshot(exp_dir: Path, now: float | None = None) -> dict[str, Any]:
    """Everything `mlsm status` shows about one experiment, as a stable JSON document."""
    now = time.time() if now is None else now
    if not exp_dir.is_dir():
        raise InputError(f"{exp_dir} is not a directory")
    layout = Layout(exp_dir)
    status = read_status(exp_dir)
    running = daemon_running(exp_dir)
    if status is None and not running and not _present(layout.idea):
        raise InputError(f"{exp_dir} is not an mlsm experiment (no status.json, no IDEA.md)")
    current = status or Status(max_iterations=0)
    doc = _document(layout, current, running)
    if status is None and running:  # watched before IDEA.md: the lock names the daemon
        doc["daemon_pid"] = _lock_holder(exp_dir)
    entered = None if status is None else parse_iso(status.entered_at)
    doc["time_in_state_s"] = None if entered is None else round(now - entered, 1)
    doc.update(_training_progress(layout, current, now, running))
    return doc


def _document(layout: Layout, status: Status, running: bool) -> dict[str, Any]:
    objective = status.objective
    return {
        "dir": str(layout.root.resolve()), "state": status.state,
        "previous_state": status.previous_state, "iteration": status.iteration,
        "max_iterations": status.max_iterations or None, "best": status.best,
        "objective": objective.to_json() if objective else None,
        "cost_usd": status.cost_usd, "complete": status.complete,
        "stop_reason": status.stop_reason, "error": status.error,
        "agent": _proc(status.agent),
        "training": _with_gpus(_proc(status.training), status.training),
        "daemon_pid": status.daemon_pid, "daemon_running": running,
        "stop_file": _present(layout.stop),
        "waiting_for": IDEA if _waits_for_idea(layout, status, running) else status.waiting_for,
    }


def _waits_for_idea(layout: Layout, status: Status, running: bool) -> bool:
    """A daemon idles here until a usable IDEA.md arrives (none yet, or it was refused)."""
    return (running and status.state == "idle" and not status.waiting_for
            and (status.error is not None or not _present(layout.idea)))


def _training_progress(layout: Layout, status: Status, now: float,
                       running: bool) -> dict[str, Any]:
    run_dir = layout.iteration_dir(status.iteration)
    beat = rundir.read_heartbeat(run_dir)
    last = _last_line(run_dir / rundir.METRICS)
    out: dict[str, Any] = {"heartbeat_age_s": None, "step": None, "total_steps": None,
                           "eta_s": None, "latest_metrics": None}
    if isinstance(beat, dict):
        t = rundir.finite(beat.get("t"))
        out["heartbeat_age_s"] = round(now - t, 1) if t is not None else None
        out["step"], out["total_steps"] = beat.get("step"), beat.get("total_steps")
    if isinstance(last, dict):
        out["latest_metrics"] = {k: v for k, v in last.items() if k not in ("t",)}
        out["step"] = rundir.whole(last.get("step")) if "step" in last else out["step"]
    started = parse_iso((status.training or {}).get("started_at"))
    step, total = out["step"], out["total_steps"]
    if running and started and isinstance(step, int) and isinstance(total, int) \
            and 0 < step < total:
        out["eta_s"] = round((now - started) / step * (total - step), 1)
    return out


def _progress_text(doc: dict[str, Any], width: int = 20) -> str:
    """`step 120/600 [####----------------] 20% ETA 35s`, or `step 120` without a total."""
    step, total = doc.get("step"), doc.get("total_steps")
    if not (isinstance(step, int) and isinstance(total, int) and total > 0):
        return f"step {step}"
    frac = min(1.0, max(0.0, step / total))
    bar = "#" * round(frac * width) + "-" * (width - round(frac * width))
    eta = f" ETA {doc['eta_s']:.0f}s" if doc.get("eta_s") is not None else ""
    return f"step {step}/{total} [{bar}] {frac:.0%}{eta}"


def _waiting_line(doc: dict[str, Any]) -> str:
    """`DIR: IDLE, waiting for IDEA.md (daemon pid 42)`, and the refusal if there was one."""
    pid = doc.get("daemon_pid")
    text = f"{doc['dir']}: IDLE, waiting for {IDEA}" + (f" (daemon pid {pid})" if pid else "")
    if doc.get("error"):
        text += f"\n  error: {doc['error']}"
    return text


def _line(doc: dict[str, Any]) -> str:
    if doc.get("state") == "idle" and doc.get("waiting_for") == IDEA:
        return _waiting_line(doc)
    parts = [f"{doc['dir']}: {str(doc['state']).upper()}"]
    if not doc.get("daemon_running") and doc["state"] not in ("done", "failed", "idle"):
        parts.append("(daemon not running)")
    if doc.get("previous_state"):
        parts.append(f"(from {doc['previous_state']})")
    limit = doc.get("max_iterations")
    parts.append(f"iteration {doc['iteration']}" + (f"/{limit}" if limit else ""))
    if doc.get("time_in_state_s") is not None:
        parts.append(f"for {doc['time_in_state_s']:.0f}s")
    for key in ("agent", "training"):
        if doc.get(key):
            p = doc[key]
            parts.append(f"{key} {p['name']} ({'alive' if p['alive'] else 'gone'})")
            if p.get("devices"):
                parts.append(_gpu_text(p))
    if doc.get("step") is not None:
        parts.append(_progress_text(doc))
    if doc.get("latest_metrics"):
        parts.append(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                              for k, v in doc["latest_metrics"].items() if k != "step"))
    if doc.get("heartbeat_age_s") is not None:
        parts.append(f"heartbeat {doc['heartbeat_age_s']:.0f}s ago")
    best = doc.get("best")
    if best:
        parts.append(f"best {best['metric']}={best['value']:.6g} (iteration {best['iteration']})")
    if doc.get("cost_usd"):
        parts.append(f"cost ${doc['cost_usd']:.4f}")
    text = ", ".join(parts)
    for key in ("error", "stop_reason", "waiting_for"):
        if doc.get(key):
            text += f"\n  {key.replace('_', ' ')}: {doc[key]}"
    return text


def show(dirs: list[Path], as_json: bool, follow: bool) -> ExitCode:
    """Print status for each experiment; non-zero when any is not a readable experiment.

    With `as_json`: one document, an object for one experiment DIR, else a list of objects.
    """
    if follow:
        from mlsm.machine.views import live

        return live.follow(dirs)
    targets = expand(dirs)
    code = ExitCode.OK
    docs: list[dict[str, Any]] = []
    for d in targets:
        try:
            doc = snapshot(d)
        except InputError as exc:
            print(f"mlsm: error: {exc}", file=sys.stderr)
            code = ExitCode.ERROR
            continue
        docs.append(doc)
        if not as_json:
            print(_line(doc))
    if as_json and (docs or len(targets) > 1):
        single = targets == dirs and len(dirs) == 1
        print(json.dumps(docs[0] if single else docs, sort_keys=True))
    return code


def current_iteration(exp_dir: Path) -> int | None:
    """The iteration status.json names, else the highest `logs/iter_NNN`; None before any."""
    layout = Layout(exp_dir)
    try:
        status = read_status(exp_dir)
    except InputError:
        status = None
    if status is not None and status.iteration > 0:
        return status.iteration
    try:
        names = [p.name for p in layout.logs.iterdir() if p.is_dir()]
    except OSError:
        return None
    numbers = [int(n[5:]) for n in names if n.startswith("iter_") and n[5:].isdigit()]
    return max(numbers, default=None)


def _log_path(exp_dir: Path, iteration: int | None, which: str | None) -> Path:
    layout = Layout(exp_dir)
    if iteration is None and which is None:
        return layout.runner_log
    if iteration is None:
        iteration = current_iteration(exp_dir)
        if iteration is None:
            raise InputError(f"{exp_dir} has no iteration yet: training has not run there "
                             f"(see `mlsm logs {exp_dir}` for the runner log)")
    return layout.iteration_dir(iteration) / f"{which or 'stdout'}.log"


def logs(exp_dir: Path, follow: bool, iteration: int | None, which: str | None) -> ExitCode:
    """Print (and with `follow`, keep printing) the runner log or an iteration's output.

    `which` ("stdout"/"stderr") without `iteration` means the current iteration's file.
    """
    path = _log_path(exp_dir, iteration, which)
    if not path.is_file():
        raise InputError(f"{path} does not exist yet")
    with path.open("rb") as fh:
        while True:
            chunk = fh.read(65536)
            if chunk:
                sys.stdout.buffer.write(chunk)
                sys.stdout.flush()
                continue
            if not follow:
                return ExitCode.OK
            time.sleep(0.5)  # tailing a file: nothing to wait on but time
