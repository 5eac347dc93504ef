"""Launchers by name, imported lazily (one module per launcher, one line here to add one)."""

from __future__ import annotations

import importlib

from mlsm.handlers.launchers.base import Handle, Launcher
from mlsm.machine.core.errors import ConfigError

LAUNCHERS = {
    "local": "mlsm.handlers.launchers.local:LocalLauncher",
    "slurm": "mlsm.handlers.launchers.slurm:SlurmLauncher",
    "torchrun": "mlsm.handlers.launchers.torchrun:TorchrunLauncher",
}
_cache: dict[str, Launcher] = {}


def get_launcher(name: str) -> Launcher:
    """The launcher called `name` (one instance per process)."""
    if name not in _cache:
        try:
            module_name, _, attr = LAUNCHERS[name].partition(":")
        except KeyError:
            raise ConfigError(f"unknown launcher {name!r}: use one of "
                              f"{', '.join(LAUNCHERS)}") from None
        _cache[name] = getattr(importlib.import_module(module_name), attr)()
    return _cache[name]


def launcher_of(handle: Handle) -> Launcher:
    """The launcher that made `handle` (handles from before launchers existed are local)."""
    return get_launcher(str(handle.get("launcher") or "local"))
