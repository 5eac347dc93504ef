"""Property-based fuzz of every reader of an experiment's files: bounded, typed, one error type."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlsm.handlers.agents import base
from mlsm.handlers.inputs import read_text_file
from mlsm.hooks import rundir
from mlsm.machine.core import config, results, status
from mlsm.machine.core.errors import ConfigError, InputError
from mlsm.machine.core.results import Objective, Row
from mlsm.machine.core.states import State

FUZZ = settings(max_examples=40, deadline=2000, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
BOUND_S = 1.0  # a reader that takes longer than this on one small input is not bounded

# ----- strategies -------------------------------------------------------------------------------

HUGE = st.integers(min_value=-10**400, max_value=10**400)
SCALARS = (st.none() | st.booleans() | st.integers() | HUGE
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=40))
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=20)


@st.composite
def deep(draw: st.DrawFn) -> str:
    """Nesting far past the parser's recursion limit, as text."""
    depth = draw(st.integers(min_value=900, max_value=200_000))
    opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
    return opener * depth + "1" + closer * depth


def shaped(keys: tuple[str, ...]) -> st.SearchStrategy[dict[str, Any]]:
    """Objects with the file kind's own keys holding any JSON value, plus strays."""
    return st.dictionaries(st.sampled_from(keys) | st.text(max_size=8), JSON, max_size=8)


def as_text(doc: Any) -> str:
    return json.dumps(doc)  # NaN and Infinity come out as JSON's common extension


def documents(keys: tuple[str, ...]) -> st.SearchStrategy[bytes]:
    """What a hostile writer leaves: the kind's shape, any JSON, deep nesting, any bytes."""
    return st.one_of(shaped(keys).map(as_text), JSON.map(as_text), deep(),
                     st.text(max_size=200)).map(str.encode) | st.binary(max_size=300)


KINDS = ("regular", "fifo", "devzero", "directory", "absent", "dangling", "sparse")
FILE_KINDS = st.just("regular") | st.sampled_from(KINDS)  # a regular file half the time
EXIT_KEYS = ("returncode", "signal", "reason", "detail", "seconds", "started_at", "ended_at",
             "duration_s", "pid", "leftovers", "run_id")
BEAT_KEYS = ("pid", "seq", "step", "total_steps", "t", "boot_id", "boottime",
             "expect_next_within")
RESULT_KEYS = ("metrics", "objective", "goal")
DECISION_KEYS = ("decision", "reason", "metric")
STATUS_KEYS = (*(f.name for f in dataclasses.fields(status.Status)), "schema", "best")
ROW_KEYS = tuple(f.name for f in dataclasses.fields(Row))


# ----- the planted file -------------------------------------------------------------------------


@contextmanager
def folder() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as d:
        yield Path(d)


def plant(path: Path, kind: str, data: bytes) -> None:
    """`path` as one kind of hostile file; `data` is the content of a regular one."""
    if kind == "regular":
        path.write_bytes(data)
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "devzero":
        os.symlink("/dev/zero", path)
    elif kind == "directory":
        path.mkdir()
    elif kind == "dangling":
        os.symlink(path.parent / "nowhere", path)
    elif kind == "sparse":
        with path.open("wb") as fh:
            fh.truncate(200 << 20)


def timed(fn: Callable[[], Any]) -> Any:
    started = time.monotonic()
    try:
        return fn()
    finally:
        assert time.monotonic() - started < BOUND_S, "a reader took too long"


def assert_finite(value: Any) -> None:
    """No float anywhere in `value` is NaN or infinite."""
    if isinstance(value, float):
        assert math.isfinite(value), value
    elif isinstance(value, dict):
        for item in value.values():
            assert_finite(item)
    elif isinstance(value, list | tuple):
        for item in value:
            assert_finite(item)


# ----- hooks/rundir -----------------------------------------------------------------------------

RUN_READERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "exit": (rundir.EXIT, EXIT_KEYS), "heartbeat": (rundir.HEARTBEAT, BEAT_KEYS),
    "result": (rundir.RESULT, RESULT_KEYS), "kill": (rundir.KILL, EXIT_KEYS),
}


READ = {"exit": rundir.read_exit, "heartbeat": rundir.read_heartbeat,
        "result": rundir.read_result, "kill": rundir.read_kill_note}


@pytest.mark.parametrize("reader", sorted(RUN_READERS))
@FUZZ
@given(data=st.data())
def test_run_folder_readers_never_raise(reader: str, data: st.DataObject) -> None:
    name, keys = RUN_READERS[reader]
    kind, content = data.draw(FILE_KINDS), data.draw(documents(keys))
    with folder() as d:
        plant(d / name, kind, content)
        doc = timed(lambda: READ[reader](d))
        assert doc is None or isinstance(doc, dict)
        if reader == "heartbeat" and doc is not None:
            for key in ("t", "boottime", "expect_next_within"):
                assert doc.get(key) is None or math.isfinite(doc[key])
            for key in ("pid", "step", "total_steps"):
                assert doc.get(key) is None or rundir.whole(doc[key]) is not None


@FUZZ
@given(FILE_KINDS, st.binary(max_size=2000), st.integers(0, 4096))
def test_read_object_and_tail_are_bounded(kind: str, data: bytes, cap: int) -> None:
    with folder() as d:
        plant(d / "f", kind, data)
        doc = timed(lambda: rundir.read_object(d / "f", cap))
        assert doc is None or (isinstance(doc, dict) and len(data) <= cap)
        tail = timed(lambda: rundir.read_tail(d / "f", cap))
        assert isinstance(tail, str) and len(tail.encode("utf-8", "surrogatepass")) <= 3 * cap


LINES = st.lists(st.one_of(shaped(("step", "t", "loss")).map(as_text), deep(),
                           st.text(max_size=60)), max_size=20).map("\n".join)
PRINTED = st.lists(st.one_of(st.text(max_size=40), st.builds(
    "loss{}{}".format, st.sampled_from([": ", "=", " = "]),
    st.from_regex(r"[-+]?[0-9]{0,500}\.?[0-9]{0,20}([eE][-+]?[0-9]{1,5})?", fullmatch=True))),
    max_size=20).map("\n".join)


@FUZZ
@given(FILE_KINDS, LINES, PRINTED)
def test_logged_and_printed_values_are_finite(kind: str, logged: str, printed: str) -> None:
    with folder() as d:
        plant(d / rundir.METRICS, kind, logged.encode())
        plant(d / rundir.STDOUT, kind, printed.encode())
        for read in (rundir.last_logged, rundir.last_printed):
            value = timed(lambda read=read: read(d, "loss"))  # type: ignore[misc]
            assert value is None or (isinstance(value, float) and math.isfinite(value))


@FUZZ
@given(JSON)
def test_finite_and_whole(value: Any) -> None:
    number = rundir.finite(value)
    assert number is None or (type(number) is float and math.isfinite(number))
    whole = rundir.whole(value)
    assert whole is None or (type(whole) is int and abs(whole) < 1 << 63)


# ----- machine/core/status ----------------------------------------------------------------------

STATES = st.sampled_from([s.value for s in State])
STATUS_DOCS = st.one_of(
    shaped(STATUS_KEYS),
    st.fixed_dictionaries({"schema": st.sampled_from([1, 2]), "state": STATES,
                           "iteration": st.integers(0, 5)}, optional={
        "history": st.lists(shaped(ROW_KEYS), max_size=3), "training": shaped(("pid", "run_id",
        "run_dir", "launcher", "started_at", "cmd")), "agent": shaped(("pid", "transcript")),
        "cost_usd": JSON, "previous_state": STATES | JSON, "objective": shaped(
            ("name", "goal", "source")), "seq": JSON, "started_at": JSON}),
    JSON)


def assert_usable(s: status.Status) -> None:
    """A parsed Status is of the types the engine and the views assume."""
    assert s.state in {x.value for x in State} and rundir.whole(s.iteration) is not None
    assert math.isfinite(s.cost_usd) if isinstance(s.cost_usd, float) else True
    for row in s.history:
        assert isinstance(row.iteration, int) and isinstance(row.outcome, str)
        assert row.value is None or math.isfinite(row.value)
    for handle in (s.training, s.agent):
        assert handle is None or isinstance(handle, dict)
    assert_finite(s.to_json())
    json.dumps(s.to_json(), allow_nan=False)


@FUZZ
@given(STATUS_DOCS)
def test_status_parse_is_a_status_or_one_input_error(doc: Any) -> None:
    try:
        parsed = timed(lambda: status.parse(Path("status.json"), doc))
    except InputError as exc:
        assert "\n" not in str(exc) and len(str(exc)) < 400
        return
    assert_usable(parsed)


@FUZZ
@given(FILE_KINDS, st.one_of(STATUS_DOCS.map(as_text).map(str.encode), deep().map(
    str.encode), st.binary(max_size=300)))
def test_read_status_never_blocks_or_raises_otherwise(kind: str, data: bytes) -> None:
    with folder() as d:
        plant(d / "status.json", kind, data)
        try:
            parsed = timed(lambda: status.read_status(d))
        except InputError as exc:
            assert "\n" not in str(exc)
            return
        if parsed is not None:
            assert_usable(parsed)


# ----- machine/core/results ---------------------------------------------------------------------

OBJECTIVES = st.builds(Objective, st.sampled_from(["loss", "acc", "x"]),
                       st.sampled_from(results.GOALS), st.just("flag")) | st.none()


@FUZZ
@given(OBJECTIVES, documents(RESULT_KEYS), LINES, PRINTED)
def test_measure_is_finite(objective: Objective | None, result: bytes, logged: str,
                           printed: str) -> None:
    with folder() as d:
        (d / rundir.RESULT).write_bytes(result)
        (d / rundir.METRICS).write_text(logged)
        (d / rundir.STDOUT).write_text(printed)
        value, source = timed(lambda: results.measure(d, objective))
        assert value is None or math.isfinite(value)
        assert (value is None) == (source is None)


@FUZZ
@given(shaped(EXIT_KEYS), OBJECTIVES, JSON, st.sampled_from(["result", "logged", None]))
def test_make_row_is_typed_and_finite(record: dict[str, Any], objective: Objective | None,
                                      value: Any, source: str | None) -> None:
    row = results.make_row(1, record, objective, value, source)
    assert row.outcome in ("ok", "failed", "no_result")
    assert row.value is None or math.isfinite(row.value)
    assert row.returncode is None or rundir.whole(row.returncode) is not None
    assert isinstance(row.leftovers, int) and row.leftovers >= 0
    for text in (row.reason, row.detail, row.run_id):
        assert text is None or (isinstance(text, str) and len(text) <= results.TEXT_CAP)
    json.dumps(row.to_json(), allow_nan=False)


@FUZZ
@given(shaped(ROW_KEYS))
def test_row_from_json_is_typed_or_value_error(doc: dict[str, Any]) -> None:
    try:
        row = Row.from_json(doc)
    except ValueError:
        return
    assert isinstance(row.iteration, int) and isinstance(row.outcome, str)
    json.dumps(row.to_json(), allow_nan=False)
    results.ledger_text([row], Objective("loss", "minimize", "flag"))
    results.history_markdown([row], None)


# ----- handlers/agents/base: decisions and products ---------------------------------------------


@FUZZ
@given(documents(DECISION_KEYS))
def test_check_decision_is_none_or_one_sentence(data: bytes) -> None:
    text = data.decode("utf-8", "replace")
    problem = timed(lambda: base.check_decision(text))
    if problem is not None:
        assert isinstance(problem, str) and "\n" not in problem and len(problem) < 300
        return
    decision = json.loads(text)
    assert decision["decision"] in base.DECISIONS


@FUZZ
@given(st.sampled_from(base.ROLES), FILE_KINDS, documents(DECISION_KEYS))
def test_check_product_and_read_decision(role: base.Role, kind: str, data: bytes) -> None:
    with folder() as d:
        plant(d / "product", kind, data)
        problem = timed(lambda: base.check_product(role, d / "product"))
        assert problem is None or (isinstance(problem, str) and "\n" not in problem)
        decision = timed(lambda: base.read_decision(d / "product"))
        assert decision["decision"] in (*base.DECISIONS, None)
        assert isinstance(decision["reason"], str) and len(decision["reason"]) <= 2000
        assert decision.get("metric") is None or math.isfinite(decision["metric"])
        if role == "analyze" and problem is None:
            assert decision["decision"] in base.DECISIONS


# ----- handlers/inputs --------------------------------------------------------------------------


@FUZZ
@given(st.sampled_from((*KINDS, "outside")), st.binary(max_size=500))
def test_read_text_file_is_text_or_one_problem(kind: str, data: bytes) -> None:
    with folder() as d:
        if kind == "outside":
            os.symlink("/etc/hostname", d / "IDEA.md")
        else:
            plant(d / "IDEA.md", kind, data)
        text, problem = timed(lambda: read_text_file(d / "IDEA.md"))
        assert text is None or problem is None
        if text is not None:
            assert text.strip() and "\0" not in text and kind == "regular"
        if problem is not None:
            assert "\n" not in problem
        if kind == "absent":
            assert (text, problem) == (None, None)


# ----- machine/core/config ----------------------------------------------------------------------


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)  # TOML spells inf and nan as Python does
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


KEYS = st.sampled_from([o.name.replace("_", "-") for o in config.OPTIONS]) | st.text(
    alphabet="abcdefghij-_", min_size=1, max_size=8)
TOML_SCALARS = st.booleans() | HUGE | st.floats() | st.text(max_size=30)
TOML = st.dictionaries(KEYS, TOML_SCALARS | st.lists(TOML_SCALARS, max_size=3), max_size=6).map(
    lambda doc: "".join(f"{k} = {toml_value(v)}\n" for k, v in doc.items()))


DEEP_TOML = st.integers(900, 100_000).map(lambda n: f"a = {'[' * n}1{']' * n}\n".encode())


def assert_config(cfg: config.Config) -> None:
    for opt in config.OPTIONS:
        value = getattr(cfg, opt.name)
        if opt.kind == "float":
            assert isinstance(value, float) and math.isfinite(value), (opt.name, value)
        if opt.kind == "choice" and value is not None:
            assert value in opt.choices


@FUZZ
@given(FILE_KINDS, st.one_of(TOML.map(str.encode), DEEP_TOML, st.binary(max_size=300)))
def test_read_toml_and_resolve_are_config_or_one_config_error(kind: str, data: bytes) -> None:
    with folder() as d:
        plant(d / "mlsm.toml", kind, data)
        try:
            cfg = timed(lambda: config.resolve(d, {}, {}))
        except ConfigError as exc:
            assert "\n" not in str(exc) and len(str(exc)) < 2000, str(exc)[:500]
            return
        assert_config(cfg)


ENVIRON = st.dictionaries(st.sampled_from([o.env for o in config.OPTIONS]),
                          st.text(max_size=30) | HUGE.map(str), max_size=4)
FLAGS = st.dictionaries(st.sampled_from([o.name for o in config.OPTIONS]), JSON, max_size=4)


@FUZZ
@given(FLAGS, ENVIRON)
def test_resolve_flags_and_environment(flags: dict[str, Any], environ: dict[str, str]) -> None:
    try:
        cfg = timed(lambda: config.resolve(None, flags, environ))
        if cfg.agent == "command":
            cfg.agent_argv()
    except ConfigError as exc:
        assert "\n" not in str(exc), str(exc)[:500]
        return
    assert_config(cfg)
