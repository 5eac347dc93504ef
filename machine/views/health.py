"""`mlsm watchdog`: a one-shot health check of recorded processes, heartbeats and budgets."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from mlsm.handlers.launchers import get_launcher, launcher_of, local
from mlsm.handlers.launchers.base import Handle
from mlsm.handlers.sentinel import MAX_RANKS
from mlsm.handlers.training import final_exit
from mlsm.hooks import rundir
from mlsm.hooks.layout import Layout
from mlsm.machine.core.config import Config, resolve
from mlsm.machine.core.errors import ExitCode, MlsmError
from mlsm.machine.core.journal import make_logger
from mlsm.machine.core.states import WORKING
from mlsm.machine.core.status import Status, read_status
from mlsm.machine.core.store import parse_iso
from mlsm.machine.views.status import daemon_running


@dataclasses.dataclass
class Finding:
    """One observation; `kill` names the record to kill when --kill is given."""

    dir: str
    level: str  # "ok" | "info" | "problem"
    message: str
    kill: str | None = None  # "training" | "agent" | "strays"
    reason: str | None = None
    seconds: float | None = None
    handle: Handle | None = dataclasses.field(default=None, repr=False)


def load_config(exp_dir: Path) -> Config:
    """The settings the daemon resolved (flags included), else resolve them afresh."""
    with contextlib.suppress(OSError, ValueError, TypeError):
        doc = json.loads(Layout(exp_dir).config_json.read_text(encoding="utf-8"))
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
    running = daemon_running(exp_dir)
    out = [Finding(d, "info", f"state {status.state}, iteration {status.iteration}, "
                              f"daemon {'running' if running else 'not running'}")]
    frozen = _frozen_daemon(exp_dir) if running else None
    if frozen:
        out.append(Finding(d, "problem", f"the daemon (pid {frozen}) is frozen (stopped by a "
                                         f"signal): STOP and budgets do nothing until it runs; "
                                         f"resume it with `kill -CONT {frozen}`"))
    if not running and status.state in WORKING:
        out.append(Finding(d, "problem", f"no daemon is running, but the run is in "
                                         f"{status.state.upper()}: restart it with "
                                         f"`mlsm watch {exp_dir}` (it re-attaches)"))
    for key in ("training", "agent"):
        doc = getattr(status, key)
        if isinstance(doc, dict):
            out.extend(_check_process(exp_dir, key, doc, cfg, now))
    out.extend(_check_strays(exp_dir, status, cfg))
    hours = _since(status.started_boot, parse_iso(status.started_at), now) / 3600
    if status.state in WORKING and cfg.max_hours and hours >= cfg.max_hours:
        kill = next((k for k in ("training", "agent") if isinstance(getattr(status, k), dict)),
                    None)
        out.append(Finding(d, "problem", f"wall-time budget spent: {hours:.2f} h of "
                                         f"{cfg.max_hours:g} h", kill, "max_hours"))
    if len(out) == 1:
        out.append(Finding(d, "ok", "healthy"))
    return out


def _since(boot: dict[str, Any] | None, wall: float | None, now: float) -> float:
    """Seconds since a moment recorded on both clocks: the boot clock where it is the same
    boot (a wall-clock step cannot fake staleness or a spent budget), else the wall clock."""
    t = rundir.finite((boot or {}).get("t"))
    if t is not None and (boot or {}).get("boot_id") == local.boot_id():
        return max(0.0, time.clock_gettime(time.CLOCK_BOOTTIME) - t)
    return max(0.0, now - wall) if wall is not None else 0.0


def _frozen_daemon(exp_dir: Path) -> int | None:
    """The pid in the lock file when that process is stopped (SIGSTOP, a debugger)."""
    try:
        pid = int(Layout(exp_dir).lock.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if local.is_stopped(pid) else None


def _check_strays(exp_dir: Path, status: Status, cfg: Config) -> list[Finding]:
    """Processes of finished runs that are still alive (leftovers a training spawned)."""
    keep = [str(doc.get("run_id")) for doc in (status.training, status.agent)
            if isinstance(doc, dict)]
    launcher = get_launcher(cfg.launcher)
    return [Finding(str(exp_dir), "problem", f"leftover processes of a finished run "
                                             f"({launcher.describe(h)}, run {h['run_id']})",
                    "strays", "leftovers", handle=h)
            for h in launcher.strays(exp_dir.resolve(), keep)]


def _check_process(exp_dir: Path, key: str, doc: dict[str, Any], cfg: Config,
                   now: float) -> list[Finding]:
    launcher = launcher_of(doc)
    d = str(exp_dir)
    if not launcher.alive(doc):
        return [Finding(d, "info", f"recorded {key} ({launcher.describe(doc)}) is not running "
                                   f"({launcher.why_gone(doc)})")]
    started = parse_iso(doc.get("started_at")) or now
    if key == "agent":
        return _check_agent(d, doc, cfg, now - started)
    run_dir = Path(doc.get("run_dir") or exp_dir)
    return [_check_training(d, doc, run_dir, cfg, now, now - started)]


def _check_agent(d: str, doc: dict[str, Any], cfg: Config, age: float) -> list[Finding]:
    who = launcher_of(doc).describe(doc)
    if cfg.agent_timeout and age > cfg.agent_timeout:
        return [Finding(d, "problem", f"agent ({who}) has run {age:.0f}s, over "
                                      f"--agent-timeout {cfg.agent_timeout:g}s", "agent",
                        "agent_timeout", age)]
    transcript = Path(doc.get("transcript") or "")
    with contextlib.suppress(OSError):
        quiet = time.time() - transcript.stat().st_mtime
        if cfg.agent_idle_timeout and quiet > cfg.agent_idle_timeout:
            return [Finding(d, "problem", f"agent ({who}) wrote nothing for {quiet:.0f}s",
                            "agent", "agent_idle", quiet)]
    return [Finding(d, "ok", f"agent ({who}) running for {age:.0f}s")]


def _check_training(d: str, doc: Handle, run_dir: Path, cfg: Config, now: float,
                    age: float) -> Finding:
    who = launcher_of(doc).describe(doc)
    if cfg.run_timeout and age > cfg.run_timeout:
        return Finding(d, "problem", f"training ({who}) has run {age:.0f}s, over "
                                     f"--run-timeout {cfg.run_timeout:g}s", "training",
                       "run_timeout", age)
    beats = rundir.read_heartbeats(run_dir)
    if beats:
        return _judge_beats(d, who, beats, cfg, now, age)
    quiet = now - _last_output(run_dir, now - age)
    if age > cfg.startup_grace and quiet > cfg.output_timeout:
        return Finding(d, "problem", f"training ({who}) never beat and wrote nothing "
                                     f"for {quiet:.0f}s", "training", "stale_heartbeat", quiet)
    return Finding(d, "ok", f"training ({who}) running {age:.0f}s (no heartbeats; "
                            f"output {rundir.output_size(run_dir)} bytes)")


def _judge_beats(d: str, who: str, beats: dict[int, dict[str, Any]], cfg: Config, now: float,
                 age: float) -> Finding:
    """Every rank's heartbeat, as the daemon judges them: the rank whose limit ran out first
    is named; a rank the world names that never beat is judged from the start."""
    world = max([1, *(w for b in beats.values()
                      if (w := rundir.whole(b.get("world"))) is not None and w <= MAX_RANKS)])
    due: list[tuple[float, int, float, float]] = []  # (when its limit ran out, rank, quiet, limit)
    for rank in sorted(set(range(world)) | set(beats)):
        beat = beats.get(rank)
        if beat is None:
            quiet, limit = age, max(cfg.heartbeat_timeout, cfg.startup_grace)
        else:
            quiet = _quiet(beat, now)
            limit = max(cfg.heartbeat_timeout, rundir.finite(beat.get("expect_next_within")) or 0)
        due.append((now - quiet + limit, rank, quiet, limit))
    ranks = f"{len(due)} ranks, " if len(due) > 1 else ""
    _, rank, quiet, limit = min(due)
    if quiet > limit:
        named = f"rank {rank} went silent first: " if ranks else ""
        return Finding(d, "problem", f"training ({who}) is stale: {named}no heartbeat for "
                                     f"{quiet:.0f}s (limit {limit:g}s)", "training",
                       "stale_heartbeat", quiet)
    newest = min(_quiet(b, now) for b in beats.values())
    return Finding(d, "ok", f"training ({who}) healthy, {ranks}last heartbeat {newest:.0f}s ago")


def _quiet(beat: dict[str, Any], now: float) -> float:
    """Seconds since `beat`, on the boot clock where it is the same boot."""
    t = rundir.finite(beat.get("t"))
    return _since({"boot_id": beat.get("boot_id"), "t": beat.get("boottime")}, t, now)


def _last_output(run_dir: Path, default: float) -> float:
    times = [default]
    for name in (rundir.STDOUT, rundir.STDERR):
        with contextlib.suppress(OSError):
            times.append((run_dir / name).stat().st_mtime)
    return max(times)


def act(exp_dir: Path, finding: Finding) -> None:
    """Kill the finding's tree and record it in the journal (and exit.json for training)."""
    status = read_status(exp_dir) or Status()
    doc = finding.handle if finding.kill == "strays" else getattr(status, finding.kill or "", None)
    if not isinstance(doc, dict):
        return
    cfg = load_config(exp_dir)
    launcher = launcher_of(doc)
    run_dir = Path(doc.get("run_dir") or exp_dir)
    if finding.kill == "training":
        rundir.write_kill_note(run_dir, finding.reason or "watchdog", finding.message,
                               finding.seconds)
    report = launcher.kill(doc, cfg.grace)
    if finding.kill == "training" and rundir.read_exit(run_dir) is None:
        rundir.write_exit(run_dir, final_exit(run_dir, parse_iso(doc.get("started_at")), None,
                                              doc.get("run_id")))
    log, sink = make_logger(Layout(exp_dir).logs, exp_dir.name, console=None)
    log.warning("watchdog_killed", kind=finding.kill, run=launcher.describe(doc),
                processes=report.found, reason=finding.reason, detail=finding.message)
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
            doc = {k: v for k, v in dataclasses.asdict(f).items() if k != "handle"}
            print(json.dumps({**doc, "acted": acted}) if as_json
                  else f"{f.dir}: {f.level}: {text}")
    return code
