"""The one small interface every agent backend implements, and the products it must leave."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Literal, Protocol

from mlsm.hooks.layout import Layout
from mlsm.hooks.rundir import DECISION, finite, read_capped, read_object
from mlsm.machine.core.config import Config

Role = Literal["plan", "code", "analyze", "report"]
ROLES: tuple[Role, ...] = ("plan", "code", "analyze", "report")
DECISIONS = ("continue", "finish")

DECISION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "decision": {"type": "string", "enum": list(DECISIONS)},
        "reason": {"type": "string"},
        "metric": {"type": "number"},
    },
    "required": ["decision", "reason"],
    "additionalProperties": False,
}


@dataclasses.dataclass(frozen=True)
class AgentStep:
    """One request to an agent: a role, where to work, and the product expected back."""

    role: Role
    exp_dir: Path
    run_dir: Path
    iteration: int
    attempt: int
    prompt: str
    prompt_file: Path
    transcript: Path
    config: Config
    spent_usd: float = 0.0  # what the experiment's agents have cost so far (the daemon's ledger)

    @property
    def product(self) -> Path:
        return product_path(self.role, self.exp_dir, self.run_dir)


@dataclasses.dataclass(frozen=True)
class AgentOutcome:
    """What a finished agent step reports, in the same shape for every backend."""

    ok: bool
    reason: str | None = None
    retryable: bool = True
    turns: int | None = None
    cost_usd: float = 0.0
    session_id: str | None = None


class AgentBackend(Protocol):
    """A way to run an agent step as one supervised, killable process tree."""

    name: str

    def preflight(self, config: Config) -> None:
        """Raise AgentUnavailableError (one clear sentence) if this agent cannot start."""

    def argv(self, step: AgentStep) -> list[str]:
        """The command line to spawn in the experiment directory (stdin closed)."""

    def env(self, step: AgentStep, base: dict[str, str]) -> dict[str, str]:
        """The environment of the agent process, starting from `base`."""

    def collect(self, step: AgentStep, returncode: int) -> AgentOutcome:
        """Read the transcript after exit, write derived products, report the outcome."""

    def access(self, step: AgentStep) -> str:
        """What this step may write and run, in a few words, for the runner log."""


def product_path(role: Role, exp_dir: Path, run_dir: Path) -> Path:
    """Where the product of `role` lives."""
    return run_dir / DECISION if role == "analyze" else Layout(exp_dir).product(role, 0)


PRODUCT_CAP = {"plan": 4 << 20, "code": 4 << 20, "analyze": 1 << 20, "report": 16 << 20}
"""The largest product each role may leave (bytes): past it the step failed."""


def check_product(role: Role, path: Path) -> str | None:
    """None when the product is present and valid, else a sentence saying what is wrong."""
    name = path.name
    if not path.exists() and not path.is_symlink():
        return f"the {role} agent did not write {name}"
    if path.is_symlink():
        return f"{name} is a symbolic link: write a regular file instead"
    if not path.is_file():
        return f"{name} is not a regular file"
    data = read_capped(path, PRODUCT_CAP[role])
    if data is None:
        return (f"{name} cannot be read or is larger than {PRODUCT_CAP[role] >> 20} MB: "
                f"write a smaller file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return f"{name} is not UTF-8 text"
    if not text.strip():
        return f"the {role} agent left {name} empty"
    if role == "analyze":
        return check_decision(text)
    return None


def check_decision(text: str) -> str | None:
    """Validate decision.json text: {"decision": "continue"|"finish", "reason": "..."}."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        return f"decision.json is not valid JSON ({exc.msg} at line {exc.lineno})"
    except (ValueError, RecursionError):  # a number past Python's digit limit; deep nesting
        return "decision.json is not a JSON document mlsm reads (too deep or too long a number)"
    if not isinstance(obj, dict):
        return "decision.json must be a JSON object"
    decision = obj.get("decision")
    if not isinstance(decision, str) or decision not in DECISIONS:
        return f"decision.json: 'decision' must be 'continue' or 'finish', got {_short(decision)}"
    if not isinstance(obj.get("reason"), str) or not obj["reason"].strip():
        return "decision.json: 'reason' must be a non-empty string"
    metric = obj.get("metric")
    if metric is not None and finite(metric) is None:
        return f"decision.json: 'metric' must be a finite number, got {_short(metric)}"
    return None


def _short(value: Any) -> str:
    """A value as a message quotes it: at most 80 characters."""
    text = repr(value) if not isinstance(value, int) or abs(value) < 10**80 else "a huge number"
    return text if len(text) <= 80 else text[:77] + "..."


def read_decision(path: Path) -> dict[str, Any]:
    """Read a decision already validated by `check_product`; the reason is kept to one line.
    A file that changed since (unreadable, or no longer valid) reads as decision None."""
    obj = read_object(path, PRODUCT_CAP["analyze"]) or {}
    reason = obj.get("reason")
    reason = " ".join(reason.split()) if isinstance(reason, str) else ""
    decision = obj.get("decision")
    out = {**obj, "decision": decision if isinstance(decision, str) and decision in DECISIONS
           else None, "reason": reason[:2000]}
    out.pop("metric", None)
    if (metric := finite(obj.get("metric"))) is not None:
        out["metric"] = metric
    return out
