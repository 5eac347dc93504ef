"""Read-only views of experiments for `mlsm status` and `mlsm logs` (never touches a run)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from mlsm.machine.errors import ExitCode, InputError
from mlsm.machine.procs import ProcRecord, same_process
from mlsm.machine.store import parse_iso, read_json_object, read_status


def _last_line(path: Path, limit: int = 8192) -> Any:
    try:
        with path.open("rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            fh.seek(max(0, size - limit))
            lines = fh.read().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            return json.loads(line)
        except ValueError:
            continue
    return None


def _proc(doc: Any) -> dict[str, Any] | None:
    if not isinstance(doc, dict):
        return None
    rec = ProcRecord.from_json(doc)
    return {"pid": rec.pid, "alive": same_process(rec), "started_at": rec.started_at,
            "role": doc.get("role"), "cmd": rec.cmd}


def snapshot(exp_dir: Path, now: float | None = None) -> dict[str, Any]:
    """Everything `mlsm status` shows about one experiment, as a stable JSON document."""
    now = time.time() if now is None else now
    if not exp_dir.is_dir():
        raise InputError(f"{exp_dir} is not a directory")
    status = read_status(exp_dir)
    if status is None:
        if not (exp_dir / "IDEA.md").exists():
            raise InputError(f"{exp_dir} is not an mlsm experiment (no status.json, no IDEA.md)")
        status = {"state": "idle", "iteration": 0, "max_iterations": None}
    doc: dict[str, Any] = {
        "dir": str(exp_dir.resolve()), "state": status.get("state"),
        "previous_state": status.get("previous_state"), "iteration": status.get("iteration"),
        "max_iterations": status.get("max_iterations"), "best": status.get("best"),
        "cost_usd": status.get("cost_usd", 0.0), "complete": status.get("complete", False),
        "stop_reason": status.get("stop_reason"), "error": status.get("error"),
        "agent": _proc(status.get("agent")), "training": _proc(status.get("training")),
        "daemon_pid": status.get("daemon_pid"), "stop_file": (exp_dir / "STOP").exists(),
        "waiting_for": status.get("waiting_for"),
    }
    entered = parse_iso(status.get("entered_at"))
    doc["time_in_state_s"] = None if entered is None else round(now - entered, 1)
    doc.update(_training_progress(exp_dir, status, now))
    return doc


def _training_progress(exp_dir: Path, status: dict[str, Any], now: float) -> dict[str, Any]:
    it = status.get("iteration") or 0
    run_dir = exp_dir / "logs" / f"iter_{it:03d}"
    beat = read_json_object(run_dir / "heartbeat.json")
    last = _last_line(run_dir / "metrics.jsonl")
    out: dict[str, Any] = {"heartbeat_age_s": None, "step": None, "total_steps": None,
                           "eta_s": None, "latest_metrics": None}
    if isinstance(beat, dict):
        t = beat.get("t")
        out["heartbeat_age_s"] = round(now - t, 1) if isinstance(t, int | float) else None
        out["step"], out["total_steps"] = beat.get("step"), beat.get("total_steps")
    if isinstance(last, dict):
        out["latest_metrics"] = {k: v for k, v in last.items() if k not in ("t",)}
        out["step"] = last.get("step", out["step"])
    started = parse_iso((status.get("training") or {}).get("started_at"))
    step, total = out["step"], out["total_steps"]
    if started and isinstance(step, int) and isinstance(total, int) and 0 < step < total:
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
        from mlsm.machine import live

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
    path = exp_dir / "logs" / "runner.log" if iteration is None else \
        exp_dir / "logs" / f"iter_{iteration:03d}" / f"{which}.log"
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
