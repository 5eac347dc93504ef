"""The person's lifecycle hooks: `.mlsm/hooks/on-<state>` or `[hooks]` in mlsm.toml, never fatal."""

from __future__ import annotations

import os
import shlex
import threading
import tomllib
from pathlib import Path
from typing import Any

from mlsm.handlers.launchers import get_launcher
from mlsm.handlers.launchers.base import Spec
from mlsm.hooks.layout import Layout
from mlsm.machine.core.errors import ConfigError
from mlsm.machine.core.states import State

STATES = tuple(s.value for s in State)


def hook_commands(exp_dir: Path) -> dict[str, list[list[str]]]:
    """Every state's commands, read once when the daemon opens the experiment (a training
    that writes `.mlsm/hooks/` or mlsm.toml later changes nothing until a restart)."""
    table = _toml_hooks(exp_dir)
    out: dict[str, list[list[str]]] = {}
    for state in STATES:
        cmds: list[list[str]] = []
        exe = Layout(exp_dir).hooks_dir / f"on-{state}"
        if exe.is_file() and os.access(exe, os.X_OK):
            cmds.append([str(exe)])
        cmd = table.get(f"on-{state}") or table.get(f"on_{state}")
        if isinstance(cmd, str) and cmd.strip():
            try:
                cmds.append(shlex.split(cmd))
            except ValueError as exc:
                raise ConfigError(f"{Layout(exp_dir).toml}: hook on-{state} {cmd!r} cannot be "
                                  f"split like a shell line ({exc}): fix its quotes") from None
        if cmds:
            out[state] = cmds
    return out


def _toml_hooks(exp_dir: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(Layout(exp_dir).toml.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # config errors are reported by config resolution, not here
    table = data.get("hooks")
    return table if isinstance(table, dict) else {}


def run_hooks(exp_dir: Path, commands: list[list[str]], state: str, previous: str | None,
              iteration: int, timeout: float, grace: float,
              log: Any) -> list[threading.Thread]:
    """Start each hook in its own session and a thread that times it out; returns the threads."""
    threads = []
    for argv in commands:
        thread = threading.Thread(
            target=_run_one, args=(exp_dir, argv, state, previous, iteration, timeout, grace,
                                   log), name=f"hook-{state}", daemon=True)
        thread.start()
        threads.append(thread)
    return threads


def _run_one(exp_dir: Path, argv: list[str], state: str, previous: str | None,
             iteration: int, timeout: float, grace: float, log: Any) -> None:
    env = {**os.environ, "MLSM_STATE": state, "MLSM_PREVIOUS_STATE": previous or "",
           "MLSM_DIR": str(exp_dir), "MLSM_ITERATION": str(iteration)}
    out_path = Layout(exp_dir).hooks_log
    launcher = get_launcher("local")
    try:
        run = launcher.spawn(Spec(argv=argv, cwd=exp_dir, env=env, stdout=out_path))
    except OSError as exc:
        log.error("hook_failed", hook=argv[0], state=state, error=exc.strerror or str(exc))
        return
    if not run.wait(timeout or None):
        launcher.kill(run.handle, grace)
        run.wait(1.0)
        log.error("hook_timeout", hook=argv[0], state=state, timeout_s=timeout)
        return
    if run.returncode != 0:
        log.error("hook_failed", hook=argv[0], state=state, returncode=run.returncode,
                  output=str(out_path))
    else:
        log.info("hook_ran", hook=argv[0], state=state)
