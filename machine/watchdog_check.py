"""`mlsm watchdog`: a one-shot health check of recorded processes, heartbeats and budgets."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import time
from pathlib import Path
from typing import Any

from mlsm.handlers.training import finalize_exit, write_kill_note
from mlsm.machine import procs
from mlsm.machine.config import Config, resolve
from mlsm.machine.errors import ExitCode, MlsmError
from mlsm.machine.journal import make_logger
from mlsm.machine.procs import ProcRecord
from mlsm.machine.sentinel import output_size, read_heartbeat
from mlsm.machine.states import WORKING
from mlsm.machine.store import parse_iso, read_status


@dataclasses.dataclass
class Finding:
    """One observation; `kill` names the record to kill when --kill is given."""

    dir: str
    level: str  # "ok" | "info" | "problem"
    message: str
    kill: str | None = None  # "training" | "agent"
    reason: str | None = None
    seconds: float | None = None


def daemon_running(exp_dir: Path) -> bool:
    """True when some process holds the experiment's lock."""
    try:
        fh = (exp_dir / ".mlsm" / "lock").open("a+")
    except OSError:
        return False
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
        return False


def load_config(exp_dir: Path) -> Config:
    """The settings the daemon resolved (flags included), else resolve them afresh."""
    with contextlib.suppress(OSError, ValueError, TypeError):
        doc = json.loads((exp_dir / ".mlsm" / "config.json").read_text(encoding="utf-8"))
        doc["train_env"] = tuple(doc.get("train_env") or ())
        return Config(**doc)
    return resolve(exp_dir, {})


def check(exp_dir: Path, now: float | None = None) -> list[Finding]:
    """Everything wrong (or right) with one experiment, without changing anything."""
    now = time.time() if now is None else now
    status = read_status(exp_dir)
    if status is None:
        raise MlsmError(f"{exp_dir} has no status.json: it is not a started mlsm experiment")
    cfg = load_config(exp_dir)
    d = str(exp_dir)
    out = [Finding(d, "info", f"state {status['state']}, iteration {status['iteration']}, "
                              f"daemon {'running' if daemon_running(exp_dir) else 'not running'}")]
    for key in ("training", "agent"):
        doc = status.get(key)
        if isinstance(doc, dict):
            out.extend(_check_process(exp_dir, key, doc, cfg, now))
    started = parse_iso(status.get("started_at"))
    hours = (now - started) / 3600 if started else 0.0
    if status["state"] in WORKING and cfg.max_hours and hours >= cfg.max_hours:
        kill = next((k for k in ("training", "agent") if isinstance(status.get(k), dict)), None)
        out.append(Finding(d, "problem", f"wall-time budget spent: {hours:.2f} h of "
                                         f"{cfg.max_hours:g} h", kill, "max_hours"))
    if len(out) == 1:
        out.append(Finding(d, "ok", "healthy"))
    return out


def _check_process(exp_dir: Path, key: str, doc: dict[str, Any], cfg: Config,
                   now: float) -> list[Finding]:
    rec = ProcRecord.from_json(doc)
    d = str(exp_dir)
    if not procs.same_process(rec):
        why = "a new boot since" if rec.boot_id != procs.boot_id() else (
            "that pid now belongs to another process" if procs.start_ticks(rec.pid) else "gone")
        return [Finding(d, "info", f"recorded {key} (pid {rec.pid}) is not running ({why})")]
    started = parse_iso(rec.started_at) or now
    if key == "agent":
        return _check_agent(d, doc, cfg, now - started)
    run_dir = Path(doc.get("run_dir") or exp_dir)
    return [_check_training(d, rec, run_dir, cfg, now, now - started)]


def _check_agent(d: str, doc: dict[str, Any], cfg: Config, age: float) -> list[Finding]:
    if cfg.agent_timeout and age > cfg.agent_timeout:
        return [Finding(d, "problem", f"agent (pid {doc['pid']}) has run {age:.0f}s, over "
                                      f"--agent-timeout {cfg.agent_timeout:g}s", "agent",
                        "agent_timeout", age)]
    transcript = Path(doc.get("transcript") or "")
    with contextlib.suppress(OSError):
        quiet = time.time() - transcript.stat().st_mtime
        if cfg.agent_idle_timeout and quiet > cfg.agent_idle_timeout:
            return [Finding(d, "problem", f"agent (pid {doc['pid']}) wrote nothing for "
                                          f"{quiet:.0f}s", "agent", "agent_idle", quiet)]
    return [Finding(d, "ok", f"agent (pid {doc['pid']}) running for {age:.0f}s")]


def _check_training(d: str, rec: ProcRecord, run_dir: Path, cfg: Config, now: float,
                    age: float) -> Finding:
    if cfg.run_timeout and age > cfg.run_timeout:
        return Finding(d, "problem", f"training (pid {rec.pid}) has run {age:.0f}s, over "
                                     f"--run-timeout {cfg.run_timeout:g}s", "training",
                       "run_timeout", age)
    beat = read_heartbeat(run_dir)
    if beat is not None and isinstance(beat.get("t"), int | float):
        quiet = now - float(beat["t"])
        expect = beat.get("expect_next_within")
        limit = max(cfg.heartbeat_timeout, expect if isinstance(expect, int | float) else 0)
        if quiet > limit:
            return Finding(d, "problem", f"training (pid {rec.pid}) is stale: no heartbeat for "
                                         f"{quiet:.0f}s (limit {limit:g}s)", "training",
                           "stale_heartbeat", quiet)
        return Finding(d, "ok", f"training (pid {rec.pid}) healthy, last heartbeat "
                                f"{quiet:.0f}s ago")
    quiet = now - _last_output(run_dir, now - age)
    if age > cfg.startup_grace and quiet > cfg.output_timeout:
        return Finding(d, "problem", f"training (pid {rec.pid}) never beat and wrote nothing "
                                     f"for {quiet:.0f}s", "training", "stale_heartbeat", quiet)
    return Finding(d, "ok", f"training (pid {rec.pid}) running {age:.0f}s (no heartbeats; "
                            f"output {output_size(run_dir)} bytes)")


def _last_output(run_dir: Path, default: float) -> float:
    times = [default]
    for name in ("stdout.log", "stderr.log"):
        with contextlib.suppress(OSError):
            times.append((run_dir / name).stat().st_mtime)
    return max(times)


def act(exp_dir: Path, finding: Finding) -> None:
    """Kill the finding's tree and record it in the journal (and exit.json for training)."""
    status = read_status(exp_dir) or {}
    doc = status.get(finding.kill or "")
    if not isinstance(doc, dict):
        return
    rec = ProcRecord.from_json(doc)
    cfg = load_config(exp_dir)
    run_dir = Path(doc.get("run_dir") or exp_dir)
    if finding.kill == "training":
        write_kill_note(run_dir, finding.reason or "watchdog", finding.message, finding.seconds)
    found = procs.kill_tree(rec, cfg.grace)
    if finding.kill == "training":
        finalize_exit(run_dir, parse_iso(rec.started_at), finding.reason or "watchdog")
    log, sink = make_logger(exp_dir / "logs", exp_dir.name, console=None)
    log.warning("watchdog_killed", kind=finding.kill, pid=rec.pid, processes=found,
                reason=finding.reason, detail=finding.message)
    sink.close()


def main(dirs: list[Path], kill: bool, as_json: bool) -> ExitCode:
    """Check each directory, print findings, optionally act; exit code says which."""
    code = ExitCode.OK
    for exp_dir in dirs:
        try:
            findings = check(exp_dir.resolve())
        except MlsmError as exc:
            print(json.dumps({"dir": str(exp_dir), "level": "error", "message": str(exc)})
                  if as_json else f"{exp_dir}: error: {exc}")
            code = ExitCode.ERROR
            continue
        for f in findings:
            acted = kill and f.kill is not None
            if acted:
                act(exp_dir.resolve(), f)
            if f.level == "problem":
                code = max(code, ExitCode.ACTED if acted else ExitCode.UNHEALTHY)
            text = f.message + (" -> killed" if acted else "")
            print(json.dumps({**dataclasses.asdict(f), "acted": acted}) if as_json
                  else f"{f.dir}: {f.level}: {text}")
    return code
