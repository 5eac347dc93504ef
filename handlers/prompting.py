"""Render the per-role prompt templates and the agent instructions shipped as package data."""

from __future__ import annotations

import string
from importlib import resources
from typing import Any

from mlsm.handlers.agents.base import Role

_FALLBACK = {
    "plan": "Read $exp_dir/IDEA.md and write a research plan to $product.",
    "code": "Write or improve the training script $product (iteration $iteration).",
    "analyze": (
        "Analyze iteration $iteration in $run_dir and write $product as JSON: "
        '{"decision": "continue" or "finish", "reason": "..."}.'
    ),
    "report": "Write the final report of the experiment to $product.",
}


def template(name: str) -> str:
    """The text of `prompts/<name>.md`, or a minimal fallback for a role."""
    try:
        return resources.files("mlsm.handlers").joinpath("prompts", f"{name}.md").read_text(
            encoding="utf-8"
        )
    except (FileNotFoundError, OSError):
        return _FALLBACK.get(name, "")


def render(role: Role, context: dict[str, Any]) -> str:
    """The prompt for `role` with $variables filled from `context` (unknown ones left as is)."""
    return string.Template(template(role)).safe_substitute(
        {k: "" if v is None else str(v) for k, v in context.items()}
    )


def instructions() -> str:
    """The standing instructions every agent step gets (the equivalent of a CLAUDE.md)."""
    return template("instructions")


def history_markdown(history: list[dict[str, Any]]) -> str:
    """A short table of previous iterations for the prompts."""
    if not history:
        return "(no iterations yet)"
    lines = ["| iteration | outcome | metric | exit |", "|---|---|---|---|"]
    for row in history[-20:]:
        value = row.get("value")
        metric = f"{row.get('metric')}={value:.6g}" if isinstance(value, int | float) else "-"
        lines.append(
            f"| {row.get('iteration')} | {row.get('outcome')} | {metric} | {row.get('reason')} |"
        )
    return "\n".join(lines)
