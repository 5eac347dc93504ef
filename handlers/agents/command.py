"""The `command` agent (any executable) and the `builtin` agent, which is one such command."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from mlsm.handlers.agents.base import AgentOutcome, AgentStep
from mlsm.hooks.layout import Layout
from mlsm.machine.core.config import Config
from mlsm.machine.core.errors import AgentUnavailableError


def step_env(step: AgentStep, base: dict[str, str]) -> dict[str, str]:
    """The MLSM_* variables every agent process sees."""
    env = dict(base)
    env.update(
        MLSM_ROLE=step.role,
        MLSM_DIR=str(step.exp_dir),
        MLSM_ITERATION=str(step.iteration),
        MLSM_RUN_DIR=str(step.run_dir),
        MLSM_PROMPT_FILE=str(step.prompt_file),
        MLSM_PRODUCT=str(step.product),
        MLSM_INSTRUCTIONS_FILE=str(Layout(step.exp_dir).instructions),
    )
    return env


def tail(path: Path, limit: int = 400) -> str:
    """The last `limit` characters of a transcript, on one line, for error messages."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - limit))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return " ".join(text.split())


class CommandAgent:
    """Runs `--agent-cmd` (shell-split, no shell) with the step described in MLSM_* variables."""

    name = "command"

    def preflight(self, config: Config) -> None:
        argv = config.agent_argv()
        if shutil.which(argv[0]) is None:
            raise AgentUnavailableError(
                f"agent command {argv[0]!r} not found: check --agent-cmd "
                f"(it must be an executable on PATH or a path to one)"
            )

    def argv(self, step: AgentStep) -> list[str]:
        return step.config.agent_argv()

    def access(self, step: AgentStep) -> str:
        return "unrestricted: a command agent runs as you (mlsm checks its product only)"

    def env(self, step: AgentStep, base: dict[str, str]) -> dict[str, str]:
        return step_env(step, base)

    def collect(self, step: AgentStep, returncode: int) -> AgentOutcome:
        if returncode != 0:
            what = f"was killed by signal {-returncode}" if returncode < 0 else (
                f"exited with code {returncode}")
            last = tail(step.transcript)
            return AgentOutcome(
                ok=False,
                reason=f"the {step.role} agent {what}" + (f"; last output: {last}" if last else ""),
            )
        return AgentOutcome(ok=True)


class BuiltinAgent(CommandAgent):
    """The offline research assistant: `python -m mlsm.handlers.builtin` as a supervised process."""

    name = "builtin"

    def preflight(self, config: Config) -> None:
        return None

    def argv(self, step: AgentStep) -> list[str]:
        return [sys.executable, "-P", "-m", "mlsm.handlers.builtin"]

    def access(self, step: AgentStep) -> str:
        return "mlsm's own offline agent: writes its role's product and .mlsm/ study files"
