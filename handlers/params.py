"""A search space declared in mlsm.toml's `[params]`, for scripts that never import mlsm.

    [params]
    lr = "loguniform(1e-4, 1e-1)"
    dropout = "uniform(0, 0.5)"
    layers = "int(1, 8)"
    epochs = [5, 10, 20]

The baseline runs the script as it is; later iterations pass the values the agent chose
(`params.json`) as `--lr 0.003` flags, or as `LR=0.003` variables with `params-style = "env"`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlsm.hooks import _space, rundir
from mlsm.machine.core.errors import ConfigError

STYLES = ("flags", "env")
_CALL = re.compile(r"^\s*(uniform|loguniform|int|intlog)\s*\(\s*([^,()]+)\s*,\s*([^,()]+)\s*\)\s*$")


def parse(table: Mapping[str, Any], origin: str = "mlsm.toml") -> dict[str, _space.Space]:
    """Each `[params]` entry as a space; ConfigError (one sentence) for one it cannot read."""
    return {name: _one(name, value, origin) for name, value in table.items()}


def _one(name: str, value: Any, origin: str) -> _space.Space:
    if not re.fullmatch(r"[A-Za-z_][\w-]*", name):
        raise ConfigError(f"{origin}: [params] name {name!r} is not a flag name")
    try:
        if isinstance(value, list) and value:
            return _space.choice(value)
        match = _CALL.match(value) if isinstance(value, str) else None
        if match is None:
            raise ValueError("not a space")
        kind, low, high = match.group(1), float(match.group(2)), float(match.group(3))
        if kind in ("int", "intlog"):
            return _space.intrange(int(low), int(high), log=kind == "intlog")
        return (_space.loguniform if kind == "loguniform" else _space.uniform)(low, high)
    except (ValueError, _space.ParamsError) as exc:
        raise ConfigError(
            f"{origin}: [params] {name} = {value!r} is not a search space ({exc}); use "
            f'"uniform(a, b)", "loguniform(a, b)", "int(a, b)", "intlog(a, b)" or a list'
        ) from None


def prepare(run_dir: Path, table: Mapping[str, Any]) -> dict[str, Any]:
    """Write space.json for the agent and return the values of this run: {} for the baseline
    (no params.json), else params.json checked against the space (ConfigError when off)."""
    spaces = parse(table)
    rundir.write_json(run_dir / rundir.SPACE, _space.describe_all(spaces), durable=False)
    chosen = rundir.read_object(run_dir / rundir.PARAMS)
    if not chosen:
        return {}
    try:
        values = {k: spaces[k].check(k, v) for k, v in chosen.items() if k in spaces}
        _space.merge(spaces, chosen)  # unknown names and bad values: one sentence
    except _space.ParamsError as exc:
        raise ConfigError(str(exc)) from None
    rundir.write_json(run_dir / rundir.PARAMS_USED, values, durable=False)
    return values


def as_flags(values: Mapping[str, Any]) -> list[str]:
    """`--name value` for each (a true boolean as a bare `--name`, a false one left out)."""
    out: list[str] = []
    for name, value in values.items():
        if value is True:
            out.append(f"--{name}")
        elif value is not False:
            out += [f"--{name}", value if isinstance(value, str) else json.dumps(value)]
    return out


def as_env(values: Mapping[str, Any]) -> dict[str, str]:
    """`NAME=value` for each (upper case, dashes as underscores)."""
    return {name.upper().replace("-", "_"): value if isinstance(value, str) else
            json.dumps(value) for name, value in values.items()}
