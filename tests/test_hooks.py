"""Tests of the in-training API `mlsm.hooks`: files it writes, crash survival, params, signals."""

from __future__ import annotations

import json
import math
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mlsm import hooks

HOOKS_ENV = ("MLSM_RUN_DIR", "MLSM_HEARTBEAT_INTERVAL", "MLSM_FLUSH_INTERVAL", "MLSM_TENSORBOARD")


def child_env(run_dir: Path | None, **extra: str) -> dict[str, str]:
    """This environment without any MLSM_* variable, plus the run dir and `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLSM_")}
    if run_dir is not None:
        env["MLSM_RUN_DIR"] = str(run_dir)
    env.update(extra)
    return env


def run_child(code: str, run_dir: Path | None, cwd: Path, **extra: str,
              ) -> subprocess.CompletedProcess[str]:
    """Run `code` in a real Python process, as a training script would run."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd,
                          env=child_env(run_dir, **extra), capture_output=True, text=True,
                          timeout=60)


def wait_for(pred: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    """Poll `pred` until truthy, failing after `timeout` seconds (a deadline, not a sleep)."""
    deadline = time.monotonic() + timeout
    while not (value := pred()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)
    return value


def rows(run_dir: Path) -> list[dict[str, Any]]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


@pytest.fixture
def run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """This process under mlsm: the env set and the hooks reconfigured (`_configure` is what
    import runs; it skips the signal and atexit handlers, which stay out of pytest)."""
    folder = tmp_path / "iter_001"
    folder.mkdir()
    for name in HOOKS_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLSM_RUN_DIR", str(folder))
    monkeypatch.setenv("MLSM_HEARTBEAT_INTERVAL", "3600")
    monkeypatch.setenv("MLSM_FLUSH_INTERVAL", "3600")
    hooks._configure()
    yield folder
    monkeypatch.undo()
    hooks._configure()


# --- outside mlsm ---------------------------------------------------------------------------


def test_every_hook_is_a_silent_noop_outside_mlsm(tmp_path: Path) -> None:
    (tmp_path / "params.json").write_text('{"lr": 0.5}')  # not under mlsm: never read
    home, tmp = tmp_path / "home", tmp_path / "tmp"
    home.mkdir()
    tmp.mkdir()
    code = """
        from mlsm import hooks
        assert not hooks.enabled()
        cfg = hooks.params(lr=hooks.loguniform(1e-4, 1e-1, default=3e-3), epochs=5)
        assert cfg == {"lr": 3e-3, "epochs": 5} and cfg.lr == 3e-3, cfg
        for step in range(100):
            hooks.heartbeat(step)
            hooks.log(step=step, total_steps=100, loss=0.5)
        hooks.heartbeat(expect_next_within=60)
        hooks.flush()
        hooks.result(val_loss=0.3)
    """
    done = run_child(code, None, tmp_path, HOME=str(home), TMPDIR=str(tmp))
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home", "params.json", "tmp"]
    assert not any(home.iterdir()) and not any(tmp.iterdir())


def test_import_is_standard_library_only(tmp_path: Path) -> None:
    code = """
        import sys
        from mlsm import hooks
        heavy = {"torch", "numpy", "tensorboard", "mlsm.machine", "mlsm.handlers"}
        print(sorted(heavy & set(sys.modules)))
    """
    done = run_child(code, tmp_path, tmp_path)
    assert done.stdout.strip() == "[]", done.stderr


# --- heartbeat --------------------------------------------------------------------------------


def test_heartbeat_is_replaced_atomically_and_seq_counts(tmp_path: Path) -> None:
    code = """
        import sys
        from mlsm import hooks
        for step in range(3000):
            hooks.heartbeat(step)
        sys.stdout.write("done")
    """
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], cwd=tmp_path,
                            env=child_env(tmp_path, MLSM_HEARTBEAT_INTERVAL="0"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen: list[int] = []
    while proc.poll() is None:  # read while the child replaces the file as fast as it can
        try:
            text = (tmp_path / "heartbeat.json").read_text()
        except FileNotFoundError:
            continue  # before the first beat
        seen.append(json.loads(text)["seq"])  # a torn file would fail here
    out, err = proc.communicate()
    assert (proc.returncode, out, err) == (0, "done", "")
    assert seen == sorted(seen)
    beat = json.loads((tmp_path / "heartbeat.json").read_text())
    assert beat["seq"] == 3000 and beat["step"] == 2999 and beat["pid"] == proc.pid
    assert set(beat) == {"pid", "seq", "step", "total_steps", "t", "boot_id", "boottime",
                         "expect_next_within"}
    assert beat["boottime"] > 0 and len(beat["boot_id"]) == 36
    assert [p.name for p in tmp_path.iterdir()] == ["heartbeat.json"]  # no temp file left


def test_heartbeat_is_rate_limited_but_expect_next_within_always_writes(run_dir: Path) -> None:
    beat = run_dir / "heartbeat.json"
    for step in range(1000):
        hooks.heartbeat(step)
    first = json.loads(beat.read_text())
    assert (first["seq"], first["step"], first["expect_next_within"]) == (1, 0, None)
    assert first["pid"] == os.getpid() and abs(first["t"] - time.time()) < 60
    hooks.heartbeat(expect_next_within=120)
    hooks.heartbeat(expect_next_within=0.5)
    last = json.loads(beat.read_text())
    assert (last["seq"], last["step"], last["expect_next_within"]) == (3, 0, 0.5)


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf])
def test_heartbeat_rejects_a_bad_expect_next_within(run_dir: Path, bad: float) -> None:
    with pytest.raises(ValueError, match="expect_next_within"):
        hooks.heartbeat(expect_next_within=bad)
    assert not (run_dir / "heartbeat.json").exists()


def test_a_bad_interval_setting_warns_and_keeps_the_default(tmp_path: Path) -> None:
    code = """
        from mlsm import hooks
        for _ in range(100):
            hooks.heartbeat()
    """
    done = run_child(code, tmp_path, tmp_path, MLSM_HEARTBEAT_INTERVAL="soon")
    assert done.returncode == 0
    assert "MLSM_HEARTBEAT_INTERVAL='soon'" in done.stderr
    assert json.loads((tmp_path / "heartbeat.json").read_text())["seq"] == 1


# --- log ----------------------------------------------------------------------------------------


def test_log_writes_one_json_line_per_call_and_nan_as_a_string(run_dir: Path) -> None:
    hooks.log(step=1, total_steps=10, loss=0.25)
    note: Any = "x"  # not a number: written as null, with one warning
    hooks.log(step=2, loss=math.nan, best=math.inf, worst=-math.inf, epoch=3, note=note)
    hooks.log(loss=0.125)
    assert not (run_dir / "metrics.jsonl").exists()  # buffered until the interval passes
    hooks.flush()
    got = rows(run_dir)
    assert [r["step"] for r in got] == [1, 2, None]
    assert got[0]["loss"] == 0.25 and abs(got[0]["t"] - time.time()) < 60
    assert got[1] == {"step": 2, "t": got[1]["t"], "loss": "nan", "best": "inf",
                      "worst": "-inf", "epoch": 3, "note": None}
    assert math.isnan(float(got[1]["loss"]))  # what a reader does to find NaN
    assert float(got[1]["worst"]) == -math.inf
    beat = json.loads((run_dir / "heartbeat.json").read_text())  # log() beats too
    assert (beat["step"], beat["total_steps"]) == (1, 10)


def test_a_full_buffer_is_written_before_the_interval(run_dir: Path) -> None:
    assert hooks.enabled()
    for step in range(hooks._MAX_ROWS):
        hooks.log(step=step, loss=0.5)
    assert len(rows(run_dir)) == hooks._MAX_ROWS  # memory stays bounded in a tight loop


def test_log_keeps_float32_values_exactly(run_dir: Path) -> None:
    import struct

    value = struct.unpack("f", struct.pack("f", 0.1))[0]  # what loss.item() returns
    hooks.log(step=1, loss=value, big=1e300, tiny=-1e-300)
    hooks.flush()
    row = rows(run_dir)[0]
    assert struct.pack("f", row["loss"]) == struct.pack("f", value)
    assert (row["big"], row["tiny"]) == (1e300, -1e-300)


def test_log_reads_tensors_at_flush_time(run_dir: Path) -> None:
    torch = pytest.importorskip("torch")
    loss = torch.tensor(0.5, requires_grad=True) * 2
    hooks.log(step=1, loss=loss, pair=torch.ones(2))
    hooks.flush()
    assert rows(run_dir)[0] == {"step": 1, "t": rows(run_dir)[0]["t"], "loss": 1.0, "pair": None}


def test_log_flushes_on_the_next_call_once_the_interval_passed(tmp_path: Path) -> None:
    code = """
        import os
        from mlsm import hooks
        hooks.log(step=1, loss=0.5)
        hooks.log(step=2, loss=0.25)
        os._exit(1)  # a crash: neither atexit nor flush() runs
    """
    done = run_child(code, tmp_path, tmp_path, MLSM_FLUSH_INTERVAL="0")
    assert done.returncode == 1
    assert [r["step"] for r in rows(tmp_path)] == [1, 2]


def test_flushed_metrics_survive_a_crash_and_the_rest_is_lost(tmp_path: Path) -> None:
    code = """
        import os
        from mlsm import hooks
        for step in range(3):
            hooks.log(step=step, loss=1.0 / (step + 1))
        hooks.flush()
        hooks.log(step=3, loss=0.1)
        os._exit(1)
    """
    done = run_child(code, tmp_path, tmp_path, MLSM_FLUSH_INTERVAL="3600")
    assert done.returncode == 1
    assert [r["step"] for r in rows(tmp_path)] == [0, 1, 2]


def test_a_normal_exit_flushes(tmp_path: Path) -> None:
    code = """
        from mlsm import hooks
        hooks.log(step=5, loss=0.5)
        raise SystemExit(3)
    """
    done = run_child(code, tmp_path, tmp_path, MLSM_FLUSH_INTERVAL="3600")
    assert done.returncode == 3
    assert [r["step"] for r in rows(tmp_path)] == [5]


def test_sigterm_flushes_then_kills_as_before(tmp_path: Path) -> None:
    code = """
        import os, signal
        from mlsm import hooks
        hooks.log(step=7, loss=0.5)
        os.kill(os.getpid(), signal.SIGTERM)
        raise SystemExit("not reached: SIGTERM ends the process")
    """
    done = run_child(code, tmp_path, tmp_path, MLSM_FLUSH_INTERVAL="3600")
    assert done.returncode == -signal.SIGTERM, done.stderr
    assert [r["step"] for r in rows(tmp_path)] == [7]


def test_a_forked_child_never_writes_its_parents_rows(tmp_path: Path) -> None:
    code = """
        import os
        from mlsm import hooks
        hooks.log(step=1, who=0)
        pid = os.fork()
        if pid == 0:
            hooks.log(step=2, who=1)
            hooks.flush()
            os._exit(0)
        os.waitpid(pid, 0)
        hooks.log(step=3, who=0)
        hooks.flush()
    """
    done = run_child(code, tmp_path, tmp_path, MLSM_FLUSH_INTERVAL="3600")
    assert done.returncode == 0, done.stderr
    assert sorted((r["step"], r["who"]) for r in rows(tmp_path)) == [(1, 0), (2, 1), (3, 0)]


def test_a_log_imported_before_fork_writes_only_the_childs_rows_there(tmp_path: Path) -> None:
    code = """
        import os
        from mlsm.hooks import flush, log
        log(step=1, who=0.0)
        pid = os.fork()
        if pid == 0:
            log(step=2, who=1.0)
            flush()
            os._exit(0)
        os.waitpid(pid, 0)
        log(step=3, who=0.0)
        flush()
    """
    done = run_child(code, tmp_path, tmp_path, MLSM_FLUSH_INTERVAL="3600")
    assert done.returncode == 0, done.stderr
    assert sorted((r["step"], r["who"]) for r in rows(tmp_path)) == [(1, 0), (2, 1), (3, 0)]


# --- the compiled path ----------------------------------------------------------------------

CALLS = Path(__file__).parent / "scripts" / "hooks_calls.py"


def test_the_compiled_path_is_built_and_used_by_default() -> None:
    if hooks._speedups is None:
        assert os.environ.get("MLSM_REQUIRE_SPEEDUPS") != "1", "mlsm.hooks._speedups not built"
        pytest.skip("mlsm.hooks._speedups is not built here (no C compiler at install)")
    done = run_child("from mlsm import hooks; print(type(hooks.log).__name__, hooks._COMPILED)",
                     Path.cwd(), Path.cwd())
    assert done.stdout.split() == ["builtin_function_or_method", "True"], done.stderr
    done = run_child("from mlsm import hooks; print(hooks.log is hooks._log_py)",
                     Path.cwd(), Path.cwd(), MLSM_HOOKS_COMPILED="0")
    assert done.stdout.strip() == "True", done.stderr


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_compiled_and_python_paths_write_the_same_lines(tmp_path: Path, seed: int) -> None:
    """Every shape of call (floats, NaN, ints, tensors, odd steps, bad calls, 20 metrics,
    new total_steps, more rows than the buffer holds) through both paths, in real processes."""
    if hooks._speedups is None:
        pytest.skip("mlsm.hooks._speedups is not built here")
    out = {}
    for mode in ("0", "1"):
        run = tmp_path / mode
        run.mkdir()
        started = time.time()
        done = subprocess.run([sys.executable, str(CALLS), str(seed), "6000"], cwd=run,
                              env=child_env(run, MLSM_HOOKS_COMPILED=mode,
                                            MLSM_FLUSH_INTERVAL="3600"),
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        got = rows(run)
        assert all(started - 1 <= r.pop("t") <= time.time() + 1 for r in got)
        out[mode] = (got, done.stdout.splitlines(), done.stderr)
    assert len(out["1"][0]) == len(out["0"][0]) > 5000
    for compiled, python in zip(out["1"][0], out["0"][0], strict=True):
        assert json.dumps(compiled) == json.dumps(python)  # NaN-safe, order-sensitive
    assert out["1"][1] == out["0"][1] and any("TypeError" in line for line in out["1"][1])
    assert out["1"][2] == out["0"][2]  # the same one-time warnings


def test_the_compiled_log_has_the_python_signature() -> None:
    import inspect

    if hooks._speedups is None:
        pytest.skip("mlsm.hooks._speedups is not built here")
    recorder = hooks._speedups.Recorder(8, hooks._log_py, hooks._tick, hooks._quote)
    assert str(inspect.signature(recorder.log)) == "(step=None, *, total_steps=None, **metrics)"
    with pytest.raises(ValueError, match="capacity must be 1 to"):
        hooks._speedups.Recorder(0, hooks._log_py, hooks._tick, hooks._quote)


def test_the_recorder_survives_python_code_run_in_the_middle_of_a_drain() -> None:
    """quote() is Python code, as a finalizer or a signal handler may be: a drain nested in it
    takes nothing, and rows logged meanwhile (enough to move the row array) wait their turn."""
    if hooks._speedups is None:
        pytest.skip("mlsm.hooks._speedups is not built here")
    nested: list[Any] = []

    def slow(step: Any = None, **metrics: Any) -> None:
        recorder.append((step, 0.0, metrics))

    def quote(name: str) -> str:
        nested.append(recorder.drain(0.0))
        for step in range(100):  # past the 8 rows allocated: append() grows the array
            recorder.log(step, extra=1.0)  # the limit is reached: these go through slow()
        return json.dumps(name)

    recorder = hooks._speedups.Recorder(8, slow, lambda step, now: None, quote)
    with pytest.raises(RuntimeError, match="__init__"):
        type(recorder).__new__(type(recorder)).log(1, loss=0.5)
    for step in range(3):
        recorder.log(step, loss=0.25 * step)
    first = recorder.drain(0.0)
    assert nested == [[]]  # the nested drain took nothing
    lines = "".join(first).splitlines()
    assert [json.loads(line)["loss"] for line in lines] == [0.0, 0.25, 0.5]
    assert len(recorder) == 100  # the rows logged during the drain are kept
    rest = recorder.take()
    assert [row[0] for row in rest] == list(range(100)) and len(recorder) == 0


def test_clearing_the_recorder_from_python_code_run_inside_a_drain_is_safe() -> None:
    """A fork handler (clear) inside quote(), or a finalizer that flushes during clear():
    the drain keeps its own rows, and nothing is freed twice (both crashed once)."""
    if hooks._speedups is None:
        pytest.skip("mlsm.hooks._speedups is not built here")

    def quote(name: str) -> str:
        recorder.clear()
        return json.dumps(name)

    recorder = hooks._speedups.Recorder(8, None, lambda step, now: None, quote)
    recorder.log(1, loss=0.5)
    recorder.append((2, 0.0, {"x": 1}))
    recorder.log(3, loss=0.5)
    parts = recorder.drain(0.0)
    assert [json.loads(p)["step"] for p in parts if isinstance(p, str)] == [1, 3]
    assert parts[1] == (2, 0.0, {"x": 1}) and len(recorder) == 0

    class Flushes:
        def __del__(self) -> None:
            seen.append(plain.take())

    seen: list[Any] = []
    plain = hooks._speedups.Recorder(8, None, lambda step, now: None, repr)
    plain.append((1, 0.0, {"a": Flushes()}))
    plain.append((2, 0.0, {"b": 1.0}))
    plain.clear()
    assert seen == [[]] and len(plain) == 0


def test_failed_writes_warn_once_and_training_goes_on(tmp_path: Path) -> None:
    code = """
        from mlsm import hooks
        for step in range(50):
            hooks.heartbeat(expect_next_within=1)
            hooks.log(step=step, loss=0.5)
            hooks.flush()
        hooks.params(lr=0.1)
        hooks.result(val_loss=0.5)
        print("trained")
    """
    done = run_child(code, tmp_path / "missing", tmp_path)
    assert done.returncode == 0 and "trained" in done.stdout
    warnings = done.stderr.splitlines()
    assert len(warnings) == 5, done.stderr  # heartbeat, metrics, space, params_used, result
    assert all(w.startswith("mlsm.hooks: could not write") for w in warnings)


# --- params ---------------------------------------------------------------------------------


def declare() -> hooks.Params:
    return hooks.params(
        lr=hooks.loguniform(1e-4, 1e-1, default=3e-3),
        dropout=hooks.uniform(0.0, 0.5),
        layers=hooks.intrange(1, 4, default=2),
        width=hooks.intrange(16, 1024, log=True),
        act=hooks.choice(["relu", "tanh"]),
        shape=hooks.choice([(1, 2), (3, 4)], default=(3, 4)),
        epochs=5,
        name="run",
        scale=1.0,
        extra=None,
    )


def test_params_are_the_defaults_without_overrides(run_dir: Path) -> None:
    cfg = declare()
    assert cfg == {"lr": 3e-3, "dropout": 0.25, "layers": 2, "width": 128, "act": "relu",
                   "shape": (3, 4), "epochs": 5, "name": "run", "scale": 1.0, "extra": None}
    assert cfg.lr == cfg["lr"] == 3e-3
    with pytest.raises(AttributeError, match="no parameter named 'missing'"):
        _ = cfg.missing
    assert pickle.loads(pickle.dumps(cfg)) == cfg


def test_params_apply_fitting_overrides(run_dir: Path) -> None:
    overrides = {"lr": 0.05, "dropout": 0, "layers": 3.0, "act": "tanh", "shape": [1, 2],
                 "epochs": 9, "scale": 2, "extra": [1, "a"]}
    (run_dir / "params.json").write_text(json.dumps(overrides))
    cfg = declare()
    assert cfg == {"lr": 0.05, "dropout": 0.0, "layers": 3, "width": 128, "act": "tanh",
                   "shape": (1, 2), "epochs": 9, "name": "run", "scale": 2.0, "extra": [1, "a"]}
    assert type(cfg.layers) is int and type(cfg.scale) is float
    assert json.loads((run_dir / "params_used.json").read_text()) == {**cfg, "shape": [1, 2]}


def test_space_json_describes_every_parameter(run_dir: Path) -> None:
    declare()
    space = json.loads((run_dir / "space.json").read_text())
    assert space["lr"] == {"type": "loguniform", "low": 1e-4, "high": 1e-1, "default": 3e-3}
    assert space["dropout"] == {"type": "uniform", "low": 0.0, "high": 0.5, "default": 0.25}
    assert space["width"] == {"type": "intrange", "low": 16, "high": 1024, "default": 128,
                              "log": True}
    assert space["act"] == {"type": "choice", "choices": ["relu", "tanh"], "default": "relu"}
    assert space["epochs"] == {"type": "fixed", "default": 5}
    assert list(space) == list(declare())


@pytest.mark.parametrize(("overrides", "message"), [
    ({"lrr": 0.1}, "params.json sets unknown parameter lrr=0.1; declared parameters: act, "),
    ({"lr": 0.5}, "lr=0.5, which is out of range; allowed: a number in [0.0001, 0.1] "
                  "(loguniform)."),
    ({"lr": "fast"}, "lr='fast', which is not a number; allowed: a number in [0.0001, 0.1]"),
    ({"lr": True}, "lr=True, which is not a number"),
    ({"lr": math.nan}, "lr=nan, which is out of range"),
    ({"layers": 2.5}, "layers=2.5, which is not an integer; allowed: an integer in [1, 4]"),
    ({"layers": 0}, "layers=0, which is out of range; allowed: an integer in [1, 4] (intrange)."),
    ({"width": 2048}, "width=2048, which is out of range; allowed: an integer in [16, 1024] "
                      "(intrange, log scale)."),
    ({"act": "gelu"}, "act='gelu', which is not among the choices; allowed: one of "
                      "['relu', 'tanh']."),
    ({"shape": [1, 3]}, "shape=[1, 3], which is not among the choices"),
    ({"epochs": "ten"}, "epochs='ten', which is not an int; allowed: an int (fixed, default 5)."),
    ({"epochs": True}, "epochs=True, which is not an int"),
    ({"name": 3}, "name=3, which is not a str; allowed: a str (fixed, default 'run')."),
])
def test_a_bad_override_names_key_value_and_space(run_dir: Path, overrides: dict[str, Any],
                                                  message: str) -> None:
    (run_dir / "params.json").write_text(json.dumps(overrides))
    with pytest.raises(hooks.ParamsError) as info:
        declare()
    text = str(info.value)
    assert message in text and text.endswith(".") and "\n" not in text
    assert isinstance(info.value, ValueError)


def test_a_choice_keeps_bools_apart_from_numbers(run_dir: Path) -> None:
    (run_dir / "params.json").write_text('{"flag": 1}')
    with pytest.raises(hooks.ParamsError, match="flag=1, which is not among the choices"):
        hooks.params(flag=hooks.choice([True, False]))


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '"lr"'])
def test_a_params_file_that_is_not_one_object_is_an_error(run_dir: Path, text: str) -> None:
    (run_dir / "params.json").write_text(text)
    with pytest.raises(hooks.ParamsError, match=r"params\.json"):
        hooks.params(lr=0.1)


@pytest.mark.parametrize(("declare_it", "message"), [
    (lambda: hooks.loguniform(0, 1), r"loguniform\(0, 1\) needs 0 < low < high"),
    (lambda: hooks.uniform(1, 1), r"uniform\(1, 1\) needs low < high"),
    (lambda: hooks.uniform(0, 1, default=2), "uniform default 2 is not a number in"),
    (lambda: hooks.intrange(1.5, 4), "intrange bounds must be an integer, got 1.5"),
    (lambda: hooks.intrange(1, 4, default=9), "intrange default 9 is not an integer in"),
    (lambda: hooks.choice([]), "at least one value"),
    (lambda: hooks.choice("abc"), "needs a list of values"),
    (lambda: hooks.choice([1, 2], default=3), "choice default 3 is not one of"),
])
def test_a_bad_declaration_raises_everywhere(declare_it: Callable[[], Any], message: str) -> None:
    with pytest.raises(hooks.ParamsError, match=message):
        declare_it()


# --- result ---------------------------------------------------------------------------------


def test_result_writes_result_json_flushes_and_prints_a_line(
        run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    hooks.log(step=1, loss=0.5)
    hooks.result(val_acc=0.91, val_loss=math.nan, goal="maximize")
    doc = json.loads((run_dir / "result.json").read_text())
    assert doc == {"metrics": {"val_acc": 0.91, "val_loss": "nan"}, "objective": "val_acc",
                   "goal": "maximize", "t": doc["t"]}
    assert capsys.readouterr().out == "mlsm-result: val_acc=0.9100 val_loss=nan goal=maximize\n"
    assert [r["step"] for r in rows(run_dir)] == [1]
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "heartbeat.json", "metrics.jsonl", "result.json"]


def test_result_puts_a_named_objective_first(
        run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    hooks.result(objective="val_loss", val_acc=0.9, val_loss=0.31)
    assert json.loads((run_dir / "result.json").read_text())["objective"] == "val_loss"
    assert capsys.readouterr().out == "mlsm-result: val_loss=0.3100 val_acc=0.9000 goal=minimize\n"


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"goal": "minimise", "val_loss": 0.3}, "goal must be 'minimize' or 'maximize', not 'mini"),
    ({"objective": "acc", "val_loss": 0.3}, "objective 'acc' is not among the metrics given"),
    ({}, "at least one metric"),
])
@pytest.mark.parametrize("under_mlsm", [True, False])
def test_a_bad_result_call_raises_under_mlsm_or_not(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kwargs: dict[str, Any], message: str,
        under_mlsm: bool) -> None:
    if under_mlsm:
        monkeypatch.setenv("MLSM_RUN_DIR", str(tmp_path))
    else:
        monkeypatch.delenv("MLSM_RUN_DIR", raising=False)
    hooks._configure()
    try:
        with pytest.raises(ValueError, match=message):
            hooks.result(**kwargs)
    finally:
        monkeypatch.undo()
        hooks._configure()
    assert not (tmp_path / "result.json").exists()


# --- process-level ----------------------------------------------------------------------------


def test_sigusr1_dumps_every_thread_into_stderr(tmp_path: Path) -> None:
    code = """
        import sys
        from mlsm import hooks
        print("ready", flush=True)
        sys.stdin.readline()  # wait, like a hung training, until the test lets go
    """
    with open(tmp_path / "stderr.log", "w") as err:
        proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], cwd=tmp_path,
                                env=child_env(tmp_path), stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=err, text=True)
    assert proc.stdout is not None and proc.stdin is not None
    try:
        assert proc.stdout.readline() == "ready\n"
        proc.send_signal(signal.SIGUSR1)
        wait_for(lambda: 'File "<string>", line' in (tmp_path / "stderr.log").read_text(),
                 what="the stack dump in stderr.log")
        assert proc.poll() is None  # dumped, and still alive
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
    assert proc.returncode == 0
    assert "Current thread" in (tmp_path / "stderr.log").read_text()


def test_the_shim_is_not_the_training(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MLSM_RUN_DIR", str(tmp_path))
    monkeypatch.setattr(sys, "orig_argv", ["python", "-u", "-m", "mlsm.hooks.shim", "x"])
    hooks._configure()
    try:
        assert not hooks.enabled()
    finally:
        monkeypatch.undo()
        hooks._configure()


def test_a_script_an_agent_runs_writes_nothing_into_the_run_folder(tmp_path: Path) -> None:
    """An agent step has MLSM_RUN_DIR too (MLSM_ROLE says it is an agent): a train.py it runs
    to try things must not forge the training's heartbeat, metrics or result."""
    done = run_child("""
        from mlsm import hooks
        assert not hooks.enabled()
        hooks.log(step=1, loss=0.5)
        hooks.result(loss=0.01)
    """, tmp_path, tmp_path, MLSM_ROLE="analyze")
    assert done.returncode == 0, done.stderr
    assert list(tmp_path.iterdir()) == []
