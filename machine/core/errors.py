"""The one error type mlsm raises, and the exit codes the CLI maps errors to."""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """Process exit codes of the `mlsm` command; stable, documented in the README."""

    OK = 0
    RUN_FAILED = 1
    USAGE = 2
    ERROR = 3
    LOCKED = 4
    UNHEALTHY = 5
    ACTED = 6
    NO_RESULT = 7  # `mlsm run` ended DONE, but no training produced the objective
    INTERRUPTED = 130


class MlsmError(Exception):
    """A problem the person can fix; its message is one sentence that says what and how."""

    exit_code: ExitCode = ExitCode.ERROR


class ConfigError(MlsmError):
    """A bad option, environment variable or `mlsm.toml` key."""


class InputError(MlsmError):
    """A bad file in the experiment directory (IDEA.md, status.json, a product)."""


class LockedError(MlsmError):
    """Another daemon already holds the experiment's lock."""

    exit_code = ExitCode.LOCKED


class AgentUnavailableError(MlsmError):
    """The configured agent cannot be started at all (binary missing, bad command)."""
