"""The search space a script declares with hooks.params: read from space.json or its source."""

from __future__ import annotations

import ast
import dataclasses
import json
import math
from pathlib import Path
from typing import Any

from mlsm.handlers.builtin.files import read_json
from mlsm.machine.core.errors import InputError

_PLAIN = (type(None), bool, int, float, str)
KINDS = ("loguniform", "uniform", "intrange", "choice", "fixed")
_ARG_NAMES = {"loguniform": ("low", "high", "default"), "uniform": ("low", "high", "default"),
              "intrange": ("low", "high", "default", "log"), "choice": ("choices", "default")}


@dataclasses.dataclass(frozen=True)
class Param:
    """One declared parameter: its kind, range or choices, and its default (the baseline)."""

    name: str
    kind: str
    default: Any
    low: float | None = None
    high: float | None = None
    choices: tuple[Any, ...] = ()
    log: bool = False

    @property
    def tunable(self) -> bool:
        return self.kind != "fixed"

    @property
    def _encoded(self) -> bool:
        """Choices Optuna cannot hold (lists, objects) are searched as their JSON text."""
        return self.kind == "choice" and not all(isinstance(c, _PLAIN) for c in self.choices)

    def encode(self, value: Any) -> Any:
        """A value as the study stores it."""
        return json.dumps(value, sort_keys=True) if self._encoded else value

    def decode(self, value: Any) -> Any:
        """A value from the study as train.py takes it."""
        return json.loads(value) if self._encoded else value

    def distribution(self) -> Any:
        """The Optuna distribution of a tunable parameter."""
        import optuna.distributions as d

        if self.kind == "choice":
            return d.CategoricalDistribution([self.encode(c) for c in self.choices])
        low, high = float(self.low or 0.0), float(self.high or 0.0)  # set for every range kind
        if self.kind == "intrange":
            return d.IntDistribution(int(low), int(high), log=self.log)
        return d.FloatDistribution(low, high, log=self.kind == "loguniform")

    def describe(self) -> str:
        """One line for PLAN.md and REPORT.md."""
        if self.kind == "fixed":
            return f"`{self.name}` fixed at {fmt(self.default)}"
        if self.kind == "choice":
            span = "one of " + ", ".join(fmt(c) for c in self.choices)
        else:
            scale = {"loguniform": "log-uniform", "uniform": "uniform"}.get(
                self.kind, "integer, log scale" if self.log else "integer")
            span = f"{scale} in [{fmt(self.low)}, {fmt(self.high)}]"
        return f"`{self.name}`: {span} (default {fmt(self.default)})"


def fmt(value: Any) -> str:
    """A value as people read it: floats with 4 significant digits."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def tunable(space: list[Param]) -> list[Param]:
    """The parameters the search may change."""
    return [p for p in space if p.tunable]


def read_space(path: Path) -> list[Param] | None:
    """The space in a space.json; None when absent or not JSON; InputError when malformed."""
    doc = read_json(path)
    if doc is None:
        return None
    return parse_space(doc, str(path))


def parse_space(doc: Any, origin: str) -> list[Param]:
    """Validate a space document; errors name the parameter and the bad value."""
    if not isinstance(doc, dict):
        raise InputError(f"{origin}: the search space must be a JSON object, got {doc!r}")
    return [_param(name, spec, origin) for name, spec in doc.items()]


def _param(name: str, spec: Any, origin: str) -> Param:
    if not isinstance(spec, dict):
        raise InputError(f"{origin}: parameter {name!r} must be an object, got {spec!r}")
    kind = spec.get("type")
    if kind not in KINDS:
        raise InputError(f"{origin}: parameter {name!r} has unknown type {kind!r} "
                         f"(known: {', '.join(KINDS)})")
    default = spec.get("default")
    if kind == "fixed":
        return Param(name, kind, default)
    if kind == "choice":
        return Param(name, kind, default, choices=_choices(name, spec.get("choices"), origin))
    low, high = _bound(name, "low", spec, origin), _bound(name, "high", spec, origin)
    log = kind == "loguniform" or spec.get("log") is True
    if not low < high or (log and low <= 0):
        raise InputError(f"{origin}: parameter {name!r} has a bad range [{low!r}, {high!r}]"
                         + (" (a log scale needs low > 0)" if log else ""))
    if kind == "intrange" and not (float(low).is_integer() and float(high).is_integer()):
        raise InputError(f"{origin}: integer parameter {name!r} has bounds {low!r}, {high!r}")
    return Param(name, kind, default, low=low, high=high, log=log)


def _bound(name: str, key: str, spec: dict[str, Any], origin: str) -> float:
    value = spec.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InputError(f"{origin}: parameter {name!r} needs a finite number {key!r}, "
                         f"got {value!r}")
    return value


def _choices(name: str, value: Any, origin: str) -> tuple[Any, ...]:
    if not isinstance(value, list | tuple) or not value:
        raise InputError(f"{origin}: parameter {name!r} needs a non-empty list of choices, "
                         f"got {value!r}")
    return tuple(value)


def scan_source(source: str) -> list[Param] | None:
    """The space declared in a script's `hooks.params(...)` call, read without running it;
    None when there is no such call or its arguments are not literal values."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and _callee(node) == "params":
            try:
                doc = {kw.arg: _spec(kw.value) for kw in node.keywords if kw.arg}
                return parse_space(doc, "train.py")
            except (ValueError, InputError):
                return None
    return None


def _callee(node: ast.Call) -> str | None:
    if isinstance(node.func, ast.Attribute):
        return node.func.attr
    return node.func.id if isinstance(node.func, ast.Name) else None


def _spec(node: ast.expr) -> dict[str, Any]:
    if isinstance(node, ast.Call) and _callee(node) in _ARG_NAMES:
        kind = str(_callee(node))
        spec: dict[str, Any] = {"type": kind}
        spec.update(zip(_ARG_NAMES[kind], (ast.literal_eval(a) for a in node.args), strict=False))
        spec.update({kw.arg: ast.literal_eval(kw.value) for kw in node.keywords if kw.arg})
        spec.setdefault("default", _implied_default(spec))
        return spec
    return {"type": "fixed", "default": ast.literal_eval(node)}


def _implied_default(spec: dict[str, Any]) -> Any:
    """The default hooks.params uses when none is given: the first choice, else the midpoint
    (geometric on a log scale, rounded for integers)."""
    if spec["type"] == "choice":
        choices = spec.get("choices")
        return choices[0] if isinstance(choices, list | tuple) and choices else None
    low, high = spec.get("low"), spec.get("high")
    if not isinstance(low, int | float) or not isinstance(high, int | float):
        return None
    log = spec["type"] == "loguniform" or spec.get("log") is True
    mid = math.sqrt(low * high) if log and low > 0 and high > 0 else (low + high) / 2
    return round(mid) if spec["type"] == "intrange" else mid
