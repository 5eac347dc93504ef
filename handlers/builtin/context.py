"""The step the daemon asked for: MLSM_* variables plus the experiment's resolved settings."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlsm.machine.errors import ConfigError

ROLES = ("plan", "code", "analyze", "report")


@dataclasses.dataclass(frozen=True)
class Settings:
    """The keys of `.mlsm/config.json` the builtin agent uses (defaults when absent)."""

    max_iterations: int = 10
    patience: int = 0
    max_failures: int = 3
    objective: str | None = None
    goal: str | None = None
    max_hours: float | None = None


@dataclasses.dataclass(frozen=True)
class Step:
    """One invocation: a role, the experiment directory, the iteration and its logs folder."""

    role: str
    exp_dir: Path
    iteration: int
    run_dir: Path
    settings: Settings


def iter_dir(exp_dir: Path, iteration: int) -> Path:
    """The logs folder of one iteration: logs/iter_NNN."""
    return exp_dir / "logs" / f"iter_{iteration:03d}"


def private_dir(exp_dir: Path) -> Path:
    """Where mlsm keeps its own files (the builtin agent's study lives here too)."""
    return exp_dir / ".mlsm"


def step_from_env(environ: Mapping[str, str]) -> Step:
    """Read the step from the MLSM_* variables; errors name the variable and its value."""
    role = environ.get("MLSM_ROLE", "")
    if role not in ROLES:
        raise ConfigError(f"MLSM_ROLE must be one of {', '.join(ROLES)}, got {role!r}")
    exp_dir = Path(environ.get("MLSM_DIR") or os.getcwd()).resolve()
    if not exp_dir.is_dir():
        raise ConfigError(f"MLSM_DIR {str(exp_dir)!r} is not a directory")
    raw = environ.get("MLSM_ITERATION", "0")
    try:
        iteration = int(raw)
    except ValueError:
        raise ConfigError(f"MLSM_ITERATION must be a whole number, got {raw!r}") from None
    if iteration < 0:
        raise ConfigError(f"MLSM_ITERATION must be >= 0, got {raw!r}")
    run_dir = Path(environ.get("MLSM_RUN_DIR") or _default_run_dir(role, exp_dir, iteration))
    return Step(role, exp_dir, iteration, run_dir, read_settings(exp_dir))


def _default_run_dir(role: str, exp_dir: Path, iteration: int) -> Path:
    if role in ("plan", "report"):
        return exp_dir / "logs" / role
    return iter_dir(exp_dir, iteration)


def read_settings(exp_dir: Path) -> Settings:
    """The settings in `.mlsm/config.json`; a missing file means the defaults."""
    path = private_dir(exp_dir) / "config.json"
    try:
        doc: Any = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return Settings()
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path} cannot be read as JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path} must hold a JSON object, got {type(doc).__name__}")
    return Settings(
        max_iterations=_int(doc, "max_iterations", 10, path),
        patience=_int(doc, "patience", 0, path),
        max_failures=_int(doc, "max_failures", 3, path),
        objective=_str(doc, "objective", path),
        goal=_goal(doc, path),
        max_hours=_float(doc, "max_hours", path),
    )


def _int(doc: dict[str, Any], key: str, default: int, path: Path) -> int:
    value = doc.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{path}: {key!r} must be a whole number >= 0, got {value!r}")
    return value


def _float(doc: dict[str, Any], key: str, path: Path) -> float | None:
    value = doc.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{path}: {key!r} must be a number, got {value!r}")
    return float(value)


def _str(doc: dict[str, Any], key: str, path: Path) -> str | None:
    value = doc.get(key)
    if value is None or (isinstance(value, str) and value.strip()):
        return value.strip() if isinstance(value, str) else None
    raise ConfigError(f"{path}: {key!r} must be a non-empty string, got {value!r}")


def _goal(doc: dict[str, Any], path: Path) -> str | None:
    goal = _str(doc, "goal", path)
    if goal not in (None, "minimize", "maximize"):
        raise ConfigError(f"{path}: 'goal' must be 'minimize' or 'maximize', got {goal!r}")
    return goal
