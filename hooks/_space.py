"""Search-space declarations for `hooks.params` and the checks of the agent's overrides."""

from __future__ import annotations

import math

TYPE_CHECKING = False  # typing costs milliseconds at import; only the type checker needs it
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping
    from typing import Any

_MISSING: Any = object()  # "no default given": None is a legitimate choice


class ParamsError(ValueError):
    """A parameter declaration, or an override from params.json, that does not fit its space."""


class Space:
    """One declared parameter: its default, what an override may be, and its JSON form."""

    kind = "fixed"

    def __init__(self, default: Any) -> None:
        self.default = default

    def check(self, key: str, value: Any) -> Any:
        """The override as this parameter's value, or ParamsError saying why it does not fit."""
        ok, converted = _like(self.default, value)
        if not ok:
            raise ParamsError(_bad(key, value, f"is not {_a(type(self.default).__name__)}", self))
        return converted

    def describe(self) -> str:
        return f"{_a(type(self.default).__name__)} (fixed, default {self.default!r})"

    def to_json(self) -> dict[str, Any]:
        return {"type": self.kind, "default": self.default}


class Range(Space):
    """A number between low and high (both included), sampled linearly or on a log scale."""

    def __init__(self, kind: str, low: float, high: float, default: Any, *,
                 integer: bool, log: bool) -> None:
        self.kind, self.integer, self.log = kind, integer, log
        self.low, self.high = self._bound(low), self._bound(high)
        if not self.low < self.high or (log and self.low <= 0):
            lowest = "0 < " if log else ""
            raise ParamsError(f"{kind}({low!r}, {high!r}) needs {lowest}low < high.")
        super().__init__(self._middle() if default is None else default)
        if not self.fits(self.default):
            raise ParamsError(f"{kind} default {default!r} is not {self.describe()}.")
        self.default = _number(self.default, integer=integer)

    def _bound(self, value: Any) -> Any:
        number = _number(value, integer=self.integer)
        if number is None or not math.isfinite(number):
            kind = "an integer" if self.integer else "a finite number"
            raise ParamsError(f"{self.kind} bounds must be {kind}, got {value!r}.")
        return number

    def _middle(self) -> Any:
        mid = math.sqrt(self.low * self.high) if self.log else (self.low + self.high) / 2
        return round(mid) if self.integer else mid

    def fits(self, value: Any) -> bool:
        number = _number(value, integer=self.integer)
        return number is not None and self.low <= number <= self.high

    def check(self, key: str, value: Any) -> Any:
        number = _number(value, integer=self.integer)
        if number is None:
            what = "an integer" if self.integer else "a number"
            raise ParamsError(_bad(key, value, f"is not {what}", self))
        if not self.low <= number <= self.high:
            raise ParamsError(_bad(key, value, "is out of range", self))
        return number

    def describe(self) -> str:
        what = "an integer" if self.integer else "a number"
        scale = ", log scale" if self.log and self.integer else ""
        return f"{what} in [{self.low!r}, {self.high!r}] ({self.kind}{scale})"

    def to_json(self) -> dict[str, Any]:
        doc = {"type": self.kind, "low": self.low, "high": self.high, "default": self.default}
        if self.integer:
            doc["log"] = self.log
        return doc


class Choice(Space):
    """One of a fixed list of values (compared as JSON values: 1 == 1.0, True != 1)."""

    kind = "choice"

    def __init__(self, choices: Iterable[Any], default: Any) -> None:
        if isinstance(choices, str | bytes) or not isinstance(choices, list | tuple):
            raise ParamsError(f"choice() needs a list of values, got {choices!r}.")
        self.choices = list(choices)
        if not self.choices:
            raise ParamsError("choice() needs at least one value.")
        super().__init__(self.choices[0] if default is _MISSING else default)
        if not any(_same(self.default, c) for c in self.choices):
            raise ParamsError(f"choice default {default!r} is not {self.describe()}.")

    def check(self, key: str, value: Any) -> Any:
        for candidate in self.choices:
            if _same(value, candidate):
                return candidate  # the declared object, e.g. a tuple where JSON gave a list
        raise ParamsError(_bad(key, value, "is not among the choices", self))

    def describe(self) -> str:
        return f"one of {self.choices!r}"

    def to_json(self) -> dict[str, Any]:
        return {"type": self.kind, "choices": self.choices, "default": self.default}


def uniform(low: float, high: float, *, default: float | None = None) -> Space:
    """A float in [low, high], searched linearly; default: the midpoint."""
    return Range("uniform", low, high, default, integer=False, log=False)


def loguniform(low: float, high: float, *, default: float | None = None) -> Space:
    """A float in [low, high] (0 < low), searched on a log scale; default: the geometric mean."""
    return Range("loguniform", low, high, default, integer=False, log=True)


def intrange(low: int, high: int, *, default: int | None = None, log: bool = False) -> Space:
    """An int in [low, high], both included; default: the (geometric, if log) midpoint."""
    return Range("intrange", low, high, default, integer=True, log=log)


def choice(choices: Iterable[Any], *, default: Any = _MISSING) -> Space:
    """One of `choices` (JSON values); default: the first."""
    return Choice(choices, default)


def declare(defaults: Mapping[str, Any]) -> dict[str, Space]:
    """Every keyword of params() as a Space; a plain value is a fixed parameter."""
    return {k: v if isinstance(v, Space) else Space(v) for k, v in defaults.items()}


def merge(spaces: Mapping[str, Space], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The defaults with each override checked against its space and applied."""
    for key in overrides:
        if key not in spaces:
            declared = ", ".join(sorted(spaces)) or "none"
            raise ParamsError(f"params.json sets unknown parameter {key}={overrides[key]!r}; "
                              f"declared parameters: {declared}.")
    values = {key: space.default for key, space in spaces.items()}
    values.update({key: spaces[key].check(key, value) for key, value in overrides.items()})
    return values


def describe_all(spaces: Mapping[str, Space]) -> dict[str, dict[str, Any]]:
    """The space.json document: each parameter's type, bounds or choices, and default."""
    return {key: space.to_json() for key, space in spaces.items()}


def _bad(key: str, value: Any, problem: str, space: Space) -> str:
    return f"params.json sets {key}={value!r}, which {problem}; allowed: {space.describe()}."


def _a(noun: str) -> str:
    return f"an {noun}" if noun[:1] in "aeiou" else f"a {noun}"


def _number(value: Any, *, integer: bool) -> int | float | None:
    """`value` as an int (integral floats too: JSON writers emit 32.0) or float; else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not integer:
        return float(value)
    if isinstance(value, int):
        return value
    return int(value) if value.is_integer() else None


def _like(default: Any, value: Any) -> tuple[bool, Any]:
    """Whether an override of a fixed parameter has the default's type, and its converted form."""
    if default is None:
        return True, value  # nothing to compare with: accept any JSON value
    if isinstance(default, bool):
        return isinstance(value, bool), value
    if isinstance(default, int | float):
        number = _number(value, integer=isinstance(default, int))
        return number is not None, number
    if isinstance(default, tuple) and isinstance(value, list):
        return True, tuple(value)
    return isinstance(value, type(default)), value


def _same(a: Any, b: Any) -> bool:
    """Equality as JSON sees it: bools apart from numbers, lists equal to tuples."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and bool(a == b)
