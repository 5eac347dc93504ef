"""The step the daemon asked for: MLSM_* variables plus the experiment's resolved settings."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from mlsm.hooks.layout import Layout
from mlsm.machine.core.errors import ConfigError

ROLES = ("plan", "code", "analyze", "report")


def template_names() -> tuple[str, ...]:
    """The templates shipped in handlers/builtin/templates/, by name (file name without .py)."""
    folder = resources.files("mlsm.handlers.builtin") / "templates"
    return tuple(sorted(f.name[:-3] for f in folder.iterdir()
                        if f.name.endswith(".py") and not f.name.startswith("_")))


@dataclasses.dataclass(frozen=True)
class Settings:
    """The keys of `.mlsm/config.json` the builtin agent uses (defaults when absent)."""

    max_iterations: int = 10
    patience: int = 0
    max_failures: int = 3
    objective: str | None = None
    goal: str | None = None
    max_hours: float | None = None
    template: str | None = None


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
    return Layout(exp_dir).iteration_dir(iteration)


def private_dir(exp_dir: Path) -> Path:
    """Where mlsm keeps its own files (the builtin agent's study lives here too)."""
    return Layout(exp_dir).private


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
    run_dir = Path(environ.get("MLSM_RUN_DIR") or Layout(exp_dir).step_dir(role, iteration))
    return Step(role, exp_dir, iteration, run_dir, read_settings(exp_dir))


def read_settings(exp_dir: Path) -> Settings:
    """The settings in `.mlsm/config.json`; a missing file means the defaults."""
    path = Layout(exp_dir).config_json
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
        template=_template(doc, path),
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


def _template(doc: dict[str, Any], path: Path) -> str | None:
    name = _str(doc, "template", path)
    names = template_names()
    if name is not None and name not in names:
        raise ConfigError(f"{path}: 'template' (--template) must be one of {', '.join(names)}, "
                          f"got {name!r}")
    return name
