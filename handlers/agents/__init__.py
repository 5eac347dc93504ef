"""Agent backends behind one interface; `get_backend` picks one by name, importing it lazily."""

from __future__ import annotations

import importlib

from mlsm.handlers.agents.base import AgentBackend
from mlsm.machine.core.errors import ConfigError

_BACKENDS = {
    "command": "mlsm.handlers.agents.command:CommandAgent",
    "builtin": "mlsm.handlers.agents.command:BuiltinAgent",
    "claude": "mlsm.handlers.agents.claude:ClaudeAgent",
    "codex": "mlsm.handlers.agents.codex:CodexAgent",
}


def get_backend(name: str) -> AgentBackend:
    """The backend called `name`."""
    try:
        module_name, _, attr = _BACKENDS[name].partition(":")
    except KeyError:
        raise ConfigError(f"unknown agent {name!r}: use one of {', '.join(_BACKENDS)}") from None
    backend: AgentBackend = getattr(importlib.import_module(module_name), attr)()
    return backend
