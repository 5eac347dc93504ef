"""`mlsm status` and `mlsm logs`: read-only views of experiments (never touch a run)."""

from __future__ import annotations

import fcntl
import json
import time
from pathlib import Path
from typing import Any

from mlsm.handlers.launchers import launcher_of
from mlsm.hooks import rundir
from mlsm.hooks.layout import Layout
from mlsm.machine.core.errors import ExitCode, InputError
from mlsm.machine.core.status import Status, read_status
from mlsm.machine.core.store import parse_iso


def daemon_running(exp_dir: Path) -> bool:
    """True when some process holds the experiment's lock (a daemon drives it)."""
    try:
        fh = Layout(exp_dir).lock.open("a+")
    except OSError:
        return False
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
        return False


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
    return {"pid": doc.get("pid"), "alive": launcher_of(doc).alive(doc),
            "started_at": doc.get("started_at"), "role": doc.get("role"), "cmd": doc.get("cmd"),
            "launcher": doc.get("launcher") or "local"}


def snapshot(exp_dir: Path, now: float | None = None) -> dict[str, Any]:
    """Everything `mlsm status` shows about one experiment, as a stable JSON document."""
    now = time.time() if now is None else now
    if not exp_dir.is_dir():
        raise InputError(f"{exp_dir} is not a directory")
    layout = Layout(exp_dir)
    status = read_status(exp_dir)
    if status is None:
        if not layout.idea.exists():
            raise InputError(f"{exp_dir} is not an mlsm experiment (no status.json, no IDEA.md)")
        status = Status(max_iterations=0)
    running = daemon_running(exp_dir)
    objective = status.objective
    doc: dict[str, Any] = {
        "dir": str(exp_dir.resolve()), "state": status.state,
        "previous_state": status.previous_state, "iteration": status.iteration,
        "max_iterations": status.max_iterations or None, "best": status.best,
        "objective": objective.to_json() if objective else None,
        "cost_usd": status.cost_usd, "complete": status.complete,
        "stop_reason": status.stop_reason, "error": status.error,
        "agent": _proc(status.agent), "training": _proc(status.training),
        "daemon_pid": status.daemon_pid, "daemon_running": running,
        "stop_file": layout.stop.exists(), "waiting_for": status.waiting_for,
    }
    entered = parse_iso(status.entered_at)
    doc["time_in_state_s"] = None if entered is None else round(now - entered, 1)
    doc.update(_training_progress(layout, status, now, running))
    return doc


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
        out["step"] = last.get("step", out["step"])
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


def _line(doc: dict[str, Any]) -> str:
    parts = [f"{doc['dir']}: {str(doc['state']).upper()}"]
    if not doc.get("daemon_running") and doc["state"] not in ("done", "failed", "idle"):
        parts.append("(daemon not running)")
    if doc.get("previous_state"):
        parts.append(f"(from {doc['previous_state']})")
    parts.append(f"iteration {doc['iteration']}/{doc['max_iterations']}")
    if doc.get("time_in_state_s") is not None:
        parts.append(f"for {doc['time_in_state_s']:.0f}s")
    for key in ("agent", "training"):
        if doc.get(key):
            p = doc[key]
            parts.append(f"{key} pid {p['pid']} ({'alive' if p['alive'] else 'gone'})")
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
    """Print status for each directory; non-zero when any is not a readable experiment."""
    if follow:
        from mlsm.machine.views import live

        return live.follow(dirs)
    code = ExitCode.OK
    for d in dirs:
        try:
            doc = snapshot(d)
        except InputError as exc:
            print(f"mlsm: error: {exc}")
            code = ExitCode.ERROR
            continue
        print(json.dumps(doc, sort_keys=True) if as_json else _line(doc))
    return code


def logs(exp_dir: Path, follow: bool, iteration: int | None, which: str) -> ExitCode:
    """Print (and with `follow`, keep printing) the runner log or an iteration's output."""
    layout = Layout(exp_dir)
    path = layout.runner_log if iteration is None else \
        layout.iteration_dir(iteration) / f"{which}.log"
    if not path.is_file():
        raise InputError(f"{path} does not exist yet")
    import sys

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
