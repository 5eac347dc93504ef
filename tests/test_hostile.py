"""Issue 15: every file in an experiment is hostile: one line, a recorded outcome, STOP honoured."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import Experiment, Mlsm, gone, wait_for

CLI = [sys.executable, "-m", "mlsm.machine.cli"]
GRACE = 2.0  # helpers.Experiment.mlsm passes --grace 2
MB = 1 << 20
RSS_LIMIT_MB = 100
FAKETIME_LIB = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")

# ----- helpers ----------------------------------------------------------------------------------


def setup(exp: Experiment, train: str) -> None:
    """IDEA.md, PLAN.md and train.py present: iteration 1 trains at once, no agent before."""
    exp.write("IDEA.md", "an idea\n")
    exp.write("PLAN.md", "# Plan\nTry it.\n")
    exp.write("train.py", train)


def view(exp: Experiment, *args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    """A one-shot `mlsm` command (status, watchdog); a hang fails the test at `timeout`."""
    return subprocess.run([*CLI, *args], cwd=exp.path.parent, env=exp.env,
                          capture_output=True, text=True, timeout=timeout, check=False)


def assert_views_answer(exp: Experiment) -> None:
    """`mlsm status` (text and JSON) and `mlsm watchdog` answer in time, without a traceback;
    an error is one line."""
    d = str(exp.path)
    for args in (["status", d], ["status", "--json", d], ["watchdog", d]):
        done = view(exp, *args)
        out = done.stdout + done.stderr
        assert "Traceback" not in out, f"mlsm {' '.join(args)}:\n{out}"
        assert done.returncode in (0, 3, 5), f"mlsm {' '.join(args)} -> {done.returncode}:\n{out}"
        if done.returncode == 3:
            assert len(out.strip().splitlines()) == 1, out


def assert_no_engine_error(exp: Experiment, daemon: Mlsm | None = None) -> None:
    log = exp.runner_log()
    assert "engine_error" not in log and "Traceback" not in log, log[-3000:]
    if daemon is not None:
        assert "Traceback" not in daemon.output(), daemon.output()[-3000:]


def stop_then_term(exp: Experiment, daemon: Mlsm) -> None:
    """STOP is recorded in time, and SIGTERM ends the daemon within its grace."""
    (exp.path / "STOP").touch()
    exp.wait_state("stopped", timeout=10)
    term(daemon)


def term(daemon: Mlsm) -> None:
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(GRACE + 5) == 130, daemon.output()[-2000:]


def one_line_error(run: Mlsm, needle: str, code: int = 3) -> None:
    assert run.wait(30) == code, run.output()
    out = run.output().strip()
    assert needle in out, out
    assert len(out.splitlines()) == 1 and out.startswith("mlsm: error:"), out


def peak_rss_mb(pid: int) -> float:
    """The peak resident memory of a live process (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def run_dir(exp: Experiment, iteration: int = 1) -> Path:
    return exp.path / "logs" / f"iter_{iteration:03d}"


def history(exp: Experiment) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = exp.status().get("history") or []
    return rows


def sparse(path: Path, size: int) -> Path:
    """A file of `size` bytes that takes no disk space (zeros, read back as NULs)."""
    with path.open("wb") as fh:
        fh.truncate(size)
    return path


# ----- 1. values in result.json, metrics.jsonl and stdout ---------------------------------------

COPY_RESULT = '''\
import os, shutil
shutil.copy(os.path.join(os.environ["TEST_SHARED"], "payload"),
            os.path.join(os.environ["MLSM_RUN_DIR"], {name!r}))
'''
PRINT_PAYLOAD = '''\
import os
print(open(os.path.join(os.environ["TEST_SHARED"], "payload")).read(), flush=True)
'''
DEEP = "[" * 100_000 + "]" * 100_000
BIG = "9" * 400

# (where, payload, flags, expected objective name, expected value)
VALUES = [
    pytest.param("result.json", f'{{"metrics": {{"loss": {BIG}}}}}', (), "loss", None,
                 id="result-int-400-digits"),
    pytest.param("result.json", '{"metrics": {"loss": 0.25}, "objective": ["loss"]}', (),
                 "loss", 0.25, id="result-objective-list"),
    pytest.param("result.json", '{"metrics": {"acc": true}}', (), "acc", None,
                 id="result-metric-true"),
    pytest.param("result.json", '{"metrics": {"loss": 0.25}, "goal": 5}', (), "loss", 0.25,
                 id="result-goal-5"),
    pytest.param("result.json", '{"metrics": {"loss": 0.25}, "goal": "sideways"}', (), "loss",
                 0.25, id="result-goal-sideways"),
    pytest.param("result.json", '{"metrics": {"loss": NaN}}', (), "loss", None,
                 id="result-metric-nan"),
    pytest.param("result.json", '{"metrics": {"loss": -Infinity}}', (), "loss", None,
                 id="result-metric-infinity"),
    pytest.param("result.json", '{"metrics": [0.25]}', (), None, None, id="result-metrics-list"),
    pytest.param("result.json", '[{"metrics": {"loss": 0.25}}]', (), None, None,
                 id="result-not-an-object"),
    pytest.param("result.json", f'{{"metrics": {{"loss": {DEEP}}}}}', (), None, None,
                 id="result-deep-nesting"),
    pytest.param("metrics.jsonl", '{"step": 1, "loss": true}\n', ("--objective", "loss"), "loss",
                 None, id="logged-true"),
    pytest.param("metrics.jsonl", f'{{"step": 1, "loss": {BIG}}}\n', ("--objective", "loss"),
                 "loss", None, id="logged-int-400-digits"),
    pytest.param("stdout", "loss: 1e999", ("--objective", "loss"), "loss", None,
                 id="printed-1e999"),
]


@pytest.mark.parametrize("where,payload,flags,name,value", VALUES)
def test_bad_values_become_a_recorded_outcome(exp: Experiment, where: str, payload: str,
                                              flags: tuple[str, ...], name: str | None,
                                              value: float | None) -> None:
    (exp.shared / "payload").write_text(payload)
    setup(exp, PRINT_PAYLOAD if where == "stdout" else COPY_RESULT.format(name=where))
    run = exp.mlsm("run", "--max-iterations", "1", *flags)
    assert run.wait(60) == (0 if value is not None else 7), run.output()[-3000:]
    assert_no_engine_error(exp, run)
    status = exp.status()
    assert status["state"] == "done"
    (row,) = history(exp)
    assert row["value"] == value and row["outcome"] == ("ok" if value is not None else "no_result")
    objective = status["objective"]
    assert (objective or {}).get("name") == name
    if objective is not None:
        assert objective["goal"] in ("minimize", "maximize")
        assert objective["goal"] == "minimize" or name == "acc"


# ----- 2. settings ------------------------------------------------------------------------------

SETTINGS = [
    pytest.param({}, ("--train-cmd", 'python "train.py'), {}, "fix its quotes",
                 id="train-cmd-quote-flag"),
    pytest.param({"mlsm.toml": "train-cmd = \"python 'train.py\"\n"}, (), {}, "fix its quotes",
                 id="train-cmd-quote-toml"),
    pytest.param({"mlsm.toml": 'objective = ["loss"]\n'}, (), {}, "expected a string",
                 id="objective-list-toml"),
    pytest.param({"mlsm.toml": 'goal = "sideways"\n'}, (), {}, "expected one of",
                 id="goal-sideways-toml"),
    pytest.param({}, (), {"MLSM_GOAL": "5"}, "expected one of", id="goal-5-env"),
]


@pytest.mark.parametrize("files,flags,env,needle", SETTINGS)
def test_bad_settings_are_one_line_at_start(exp: Experiment, files: dict[str, str],
                                            flags: tuple[str, ...], env: dict[str, str],
                                            needle: str) -> None:
    exp.write("IDEA.md", "x")
    for name, text in files.items():
        exp.write(name, text)
    one_line_error(exp.mlsm("run", *flags, **env), needle)
    assert not (exp.path / "logs").exists() or exp.agent_calls() == []


# ----- 3. IDEA.md -------------------------------------------------------------------------------

FAKE_CLAUDE = "#!/bin/sh\necho 'Usage: claude -p --output-format --verbose --max-turns'\n"


def _idea_nul(exp: Experiment) -> None:
    (exp.path / "IDEA.md").write_bytes(b"train a model\0 on this\n")


def _idea_huge(exp: Experiment) -> None:
    sparse(exp.path / "IDEA.md", 300 * MB)


def _idea_passwd(exp: Experiment) -> None:
    os.symlink("/etc/passwd", exp.path / "IDEA.md")


IDEAS = [
    pytest.param(_idea_nul, "contains NUL bytes", id="idea-nul-claude"),
    pytest.param(_idea_huge, "more than mlsm reads", id="idea-300mb"),
    pytest.param(_idea_passwd, "outside the experiment", id="idea-symlink-etc-passwd"),
]


@pytest.mark.parametrize("plant,needle", IDEAS)
def test_unusable_idea_is_refused_with_one_line(exp: Experiment, plant: Any,
                                                needle: str) -> None:
    plant(exp)
    claude = exp.path.parent / "claude"
    claude.write_text(FAKE_CLAUDE)
    claude.chmod(0o755)
    daemon = exp.mlsm("watch", "--agent", "claude", "--claude-bin", str(claude), agent=False)
    wait_for(lambda: needle in (exp.status().get("error") or ""), 20, f"{needle!r} in status")
    assert needle in exp.runner_log()
    assert not list((exp.path / "logs").glob("plan/*prompt*"))  # nothing copied, nothing sent
    assert peak_rss_mb(daemon.proc.pid) < RSS_LIMIT_MB
    assert_no_engine_error(exp, daemon)
    stop_then_term(exp, daemon)


# ----- 4. status.json ---------------------------------------------------------------------------


def _status(**fields: Any) -> dict[str, Any]:
    return {"schema": 2, "iteration": 0, "seq": 1, **fields}


# Status documents a daemon resumes from: refused in one line naming the field, or run (None).
RESUMED = [
    pytest.param(_status(state="training", iteration=1, training={}), None, id="training-empty"),
    pytest.param(_status(state="planning", agent={}), None, id="agent-empty"),
    pytest.param(_status(state="planning", started_at="garbage"), None, id="started-at-garbage"),
    pytest.param(_status(state="stopped", previous_state=None), "previous_state is missing",
                 id="stopped-without-previous"),
    pytest.param(_status(state="training", iteration=1, training={
        "run_id": "r1", "pid": "abc", "run_dir": 7, "started_at": 9, "cmd": "x"}),
        "training.pid has the wrong type", id="training-wrong-types"),
    pytest.param(_status(state="planning", agent={
        "run_id": "r1", "pid": -5, "transcript": ["x"], "started_at": "garbage"}),
        "agent.transcript has the wrong type", id="agent-wrong-types"),
    pytest.param(_status(state="training", iteration=1, training={
        "run_id": "r1", "launcher": "nowhere", "pid": 1}), "training.launcher 'nowhere'",
        id="training-unknown-launcher"),
    pytest.param(_status(state="analyzing", iteration=1, history=[{"value": 1}]),
                 "history[0] needs a whole-number iteration", id="history-row-missing-fields"),
    pytest.param(_status(state="analyzing", iteration=1, history=[
        {"iteration": "one", "outcome": 5, "metric": ["x"], "value": "0.5", "returncode": "0",
         "duration_s": "long", "leftovers": "many"}]),
        "history[0] needs a whole-number iteration", id="history-row-wrong-types"),
    pytest.param(_status(state="analyzing", iteration=1, cost_usd=int(BIG),
                         objective={"name": 5, "goal": "sideways"}, best="x"),
                 "cost_usd must be a finite number", id="huge-cost-bad-objective"),
    pytest.param(_status(state="idle", iteration=int(BIG)), "iteration must be a whole number",
                 id="iteration-400-digits"),
]
RESUMABLE_TRAIN = "from mlsm import hooks\nhooks.result(loss=0.5)\n"


@pytest.mark.parametrize("doc,refusal", RESUMED)
def test_malformed_status_is_refused_or_resumed(exp: Experiment, doc: dict[str, Any],
                                                refusal: str | None) -> None:
    setup(exp, RESUMABLE_TRAIN)
    (exp.path / "status.json").write_text(json.dumps(doc))
    assert_views_answer(exp)
    run = exp.mlsm("run", "--max-iterations", "1", "--agent-retries", "1")
    if refusal is not None:  # one line; the file kept for the person to look at
        one_line_error(run, refusal)
        assert "status.json is corrupt" in run.output()
        assert json.loads((exp.path / "status.json").read_text()) == doc
        return
    assert run.wait(60) in (0, 7), run.output()[-3000:]
    assert_no_engine_error(exp, run)
    assert exp.state() == "done"
    assert_views_answer(exp)


BEAT = {"seq": 3, "t": 1.0e9, "pid": 1}
# What the views read besides status.json: a heartbeat and metrics with absurd numbers.
PROGRESS = [
    pytest.param({**BEAT, "step": int(BIG), "total_steps": 1}, None, id="heartbeat-step-huge"),
    pytest.param({**BEAT, "step": 5, "total_steps": 10, "t": "now"}, None, id="heartbeat-t-str"),
    pytest.param({**BEAT, "total_steps": 10}, {"step": int(BIG), "loss": 1.0},
                 id="metrics-step-huge"),
    pytest.param(None, {"step": 1, "loss": int(BIG)}, id="metrics-value-huge"),
]


@pytest.mark.parametrize("beat,metrics", PROGRESS)
def test_views_survive_absurd_progress(exp: Experiment, beat: dict[str, Any] | None,
                                       metrics: dict[str, Any] | None) -> None:
    exp.write("IDEA.md", "x")
    (exp.path / "status.json").write_text(json.dumps(_status(state="training", iteration=1)))
    run = run_dir(exp)
    run.mkdir(parents=True)
    if beat is not None:
        (run / "heartbeat.json").write_text(json.dumps(beat))
    if metrics is not None:
        (run / "metrics.jsonl").write_text(json.dumps(metrics) + "\n")
    assert_views_answer(exp)


# ----- 5. decisions -----------------------------------------------------------------------------


@pytest.mark.parametrize("reason_mb,ok", [pytest.param(50, False, id="decision-reason-50mb"),
                                          pytest.param(0.9, True, id="decision-reason-900kb")])
def test_huge_decision_reason_stays_out_of_status(exp: Experiment, reason_mb: float,
                                                  ok: bool) -> None:
    decision = exp.shared / "decision.json"
    decision.write_text(json.dumps({"decision": "finish", "reason": "r" * int(reason_mb * MB)}))
    setup(exp, RESUMABLE_TRAIN)
    run = exp.mlsm("run", "--agent-retries", "0", FAKE_DECISION_FILE=str(decision))
    assert run.wait(60) == (0 if ok else 1), run.output()[-2000:]
    assert_no_engine_error(exp, run)
    status = exp.status()
    assert (exp.path / "status.json").stat().st_size < 64 << 10
    assert (exp.path / "results.tsv").stat().st_size < 64 << 10
    if not ok:
        assert "larger than 1 MB" in status["error"]


# ----- 6. logs and heartbeats past any sane size ------------------------------------------------

FLOOD = '''\
import os
data = memoryview(b"x" * (40 << 20) + b"\\nloss: 0.5\\n")
while data:  # one burst, then gone: no once-a-second check can land in between
    data = data[os.write(1, data):]
os._exit(0)
'''


def test_stdout_flood_is_capped_with_its_tail_kept(exp: Experiment) -> None:
    setup(exp, FLOOD)
    run = exp.mlsm("run", "--max-iterations", "1", "--objective", "loss", "--max-log-mb", "4")
    assert run.wait(60) == 0, run.output()[-2000:]
    assert (run_dir(exp) / "stdout.log").stat().st_size <= 5 * MB
    assert history(exp)[0]["value"] == 0.5  # the tail, where the value is, is kept


LINK_LOG = '''\
import os, time
from pathlib import Path
log = Path(os.environ["MLSM_RUN_DIR"], "stdout.log")
log.unlink()
log.symlink_to(Path(os.environ["MLSM_DIR"], "dataset.bin"))
time.sleep(1.5)
'''


def test_log_cap_never_follows_a_planted_link(exp: Experiment) -> None:
    """The daemon trims logs with its own rights: a link planted as stdout.log must not make
    it truncate a file the sandboxed training may not write."""
    setup(exp, LINK_LOG)
    victim = sparse(exp.path / "dataset.bin", 3 * MB)
    exp.write("hang_analyze", "")
    daemon = exp.mlsm("watch", "--max-log-mb", "1")
    exp.wait_state("analyzing", timeout=30)
    assert victim.stat().st_size == 3 * MB
    assert_no_engine_error(exp, daemon)
    stop_then_term(exp, daemon)


BIG_BEATS = '''\
import os, time
from pathlib import Path
run = Path(os.environ["MLSM_RUN_DIR"])
for i in range(8):
    tmp = run / ".beat.tmp"
    with tmp.open("wb") as fh:
        fh.truncate(200 << 20)
    os.replace(tmp, run / "heartbeat.json")
    print("beat", i, flush=True)
    time.sleep(0.2)
print("loss: 0.5", flush=True)
'''


def test_huge_heartbeat_rewritten_is_not_read(exp: Experiment) -> None:
    setup(exp, BIG_BEATS)
    exp.write("hang_analyze", "")
    daemon = exp.mlsm("watch", "--objective", "loss", "--startup-grace", "1",
                      "--output-timeout", "2")
    exp.wait_state("analyzing", timeout=30)
    assert peak_rss_mb(daemon.proc.pid) < RSS_LIMIT_MB  # the peak over the whole training
    (row,) = history(exp)
    assert (row["outcome"], row["value"]) == ("ok", 0.5), row
    assert_no_engine_error(exp, daemon)
    stop_then_term(exp, daemon)


# ----- 7. special files -------------------------------------------------------------------------

PLANT = '''\
import os, signal
from pathlib import Path
target = Path(os.environ["MLSM_RUN_DIR"], {name!r})
if target.exists() or target.is_symlink():
    target.unlink()
if {kind!r} == "fifo":
    os.mkfifo(target)
else:
    os.symlink("/dev/zero", target)
Path(os.environ["TEST_SHARED"], "planted").write_text("1")
if {then!r} == "kill_shim":
    os.kill(os.getppid(), signal.SIGKILL)
if {then!r} != "exit":
    signal.pause()
'''

# (file the training plants, kind, what it does then, extra flags, the row's outcome)
IN_RUN = [
    pytest.param("result.json", "fifo", "exit", (), "no_result", id="result-fifo"),
    pytest.param("result.json", "devzero", "exit", (), "no_result", id="result-devzero"),
    pytest.param("metrics.jsonl", "fifo", "exit", ("--objective", "loss"), "no_result",
                 id="metrics-fifo"),
    pytest.param("stdout.log", "devzero", "exit", ("--objective", "loss"), "no_result",
                 id="stdout-devzero"),
    pytest.param("heartbeat.json", "fifo", "pause", (), "failed", id="heartbeat-fifo"),
    pytest.param("heartbeat.json", "devzero", "pause", (), "failed", id="heartbeat-devzero"),
    pytest.param("exit.json", "fifo", "kill_shim", ("--sandbox", "none"), "failed",
                 id="exit-fifo-shim-killed"),
]


@pytest.mark.parametrize("name,kind,then,flags,outcome", IN_RUN)
def test_special_file_in_the_run_folder(exp: Experiment, name: str, kind: str, then: str,
                                        flags: tuple[str, ...], outcome: str) -> None:
    setup(exp, PLANT.format(name=name, kind=kind, then=then))
    exp.write("hang_analyze", "")  # the analysis waits, so STOP can be tried after the exit
    daemon = exp.mlsm("watch", "--startup-grace", "0.5", "--output-timeout", "1", *flags)
    wait_for((exp.shared / "planted").exists, 30, "the special file to be planted")
    assert_views_answer(exp)
    exp.wait_state("analyzing", timeout=30)
    (row,) = history(exp)
    assert row["outcome"] == outcome, row
    if name == "heartbeat.json":
        assert row["reason"] == "stale_heartbeat", row
    assert peak_rss_mb(daemon.proc.pid) < RSS_LIMIT_MB
    assert_no_engine_error(exp, daemon)
    assert_views_answer(exp)
    stop_then_term(exp, daemon)


def _plant_root(exp: Experiment, name: str, kind: str) -> None:
    path = exp.path / name
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "devzero":
        os.symlink("/dev/zero", path)
    else:
        sparse(path, 500 * MB)


@pytest.mark.parametrize("kind", ["fifo", "devzero"])
def test_special_idea_is_refused_and_stop_honoured(exp: Experiment, kind: str) -> None:
    _plant_root(exp, "IDEA.md", kind)
    daemon = exp.mlsm("watch")
    wait_for(lambda: "IDEA.md is not a regular file" in exp.runner_log(), 20, "the refusal")
    assert_no_engine_error(exp, daemon)
    assert_views_answer(exp)
    stop_then_term(exp, daemon)


@pytest.mark.parametrize("name,kind,needle", [
    pytest.param("status.json", "fifo", "status.json", id="status-fifo"),
    pytest.param("status.json", "devzero", "status.json", id="status-devzero"),
    pytest.param("status.json", "huge", "status.json", id="status-500mb"),
    pytest.param("mlsm.toml", "fifo", "mlsm.toml", id="toml-fifo"),
    pytest.param("mlsm.toml", "devzero", "mlsm.toml", id="toml-devzero"),
    pytest.param("mlsm.toml", "huge", "mlsm.toml", id="toml-500mb"),
])
def test_special_file_at_the_root_is_one_line(exp: Experiment, name: str, kind: str,
                                              needle: str) -> None:
    exp.write("IDEA.md", "x")
    _plant_root(exp, name, kind)
    one_line_error(exp.mlsm("run"), needle)
    assert_views_answer(exp)


@pytest.mark.parametrize("kind,needle", [("fifo", "not a regular file"),
                                         ("devzero", "symbolic link")])
def test_special_decision_fails_the_step_with_a_sentence(exp: Experiment, kind: str,
                                                         needle: str) -> None:
    setup(exp, RESUMABLE_TRAIN)
    run = exp.mlsm("run", "--agent-retries", "0", FAKE_DECISION_SPECIAL=kind)
    assert run.wait(60) == 1, run.output()[-2000:]
    assert_no_engine_error(exp, run)
    error = exp.status()["error"]
    assert "the analyze step failed" in error and needle in error, error


def test_result_500mb_is_not_read(exp: Experiment) -> None:
    setup(exp, '''\
import os
with open(os.path.join(os.environ["MLSM_RUN_DIR"], "result.json"), "wb") as fh:
    fh.truncate(500 << 20)
''')
    exp.write("hang_analyze", "")
    daemon = exp.mlsm("watch")
    exp.wait_state("analyzing", timeout=30)
    assert history(exp)[0]["outcome"] == "no_result"
    assert peak_rss_mb(daemon.proc.pid) < RSS_LIMIT_MB
    stop_then_term(exp, daemon)


# ----- 8. faults --------------------------------------------------------------------------------


def test_unlinked_lock_does_not_let_a_second_daemon_in(exp: Experiment) -> None:
    exp.write("IDEA.md", "x")
    exp.write("hang_plan", "")
    first = exp.mlsm("watch")
    wait_for((exp.path / "hung_plan.pid").exists, 20, "the plan agent to start")
    (exp.path / ".mlsm" / "lock").unlink()
    second = exp.mlsm("watch")
    assert second.wait(20) == 4, second.output()
    assert "another mlsm daemon" in second.output()
    assert exp.agent_calls() == ["plan 0"]  # every step runs once
    stop_then_term(exp, first)


@pytest.fixture
def private_python(tmp_path: Path) -> Iterator[Path]:
    """A copy of this venv's interpreter that the test can make non-executable."""
    root = tmp_path / "py"
    (root / "bin").mkdir(parents=True)
    python = root / "bin" / "python3"
    shutil.copy2(os.path.realpath(sys.executable), python)
    shutil.copy2(Path(sys.prefix) / "pyvenv.cfg", root / "pyvenv.cfg")
    (root / "lib").symlink_to(Path(sys.prefix) / "lib")
    yield python
    python.chmod(0o755)


def _start_unstartable(exp: Experiment, python: Path) -> Mlsm:
    """A daemon whose own interpreter, which the shim runs, loses its x bits once it is up."""
    exp.write("PLAN.md", "# Plan\n")
    exp.write("train.py", RESUMABLE_TRAIN)
    daemon = _mlsm_with(python, exp, "watch")
    wait_for(lambda: "waiting_for_idea" in exp.runner_log(), 20, "the daemon to be up")
    python.chmod(0)
    exp.write("IDEA.md", "x")
    return daemon


def test_training_that_cannot_be_created_is_retried_boundedly(
        exp: Experiment, private_python: Path) -> None:
    daemon = _start_unstartable(exp, private_python)
    wait_for(lambda: "retry 2 of" in exp.runner_log(), 30, "a second, later retry")
    assert "cannot start training: Permission denied; retry 1 of" in exp.runner_log()
    assert not list(run_dir(exp).glob("attempt_*")), "an attempt folder, but nothing ran"
    assert_no_engine_error(exp, daemon)
    stop_then_term(exp, daemon)


def test_training_that_cannot_be_created_ends_failed(exp: Experiment,
                                                     private_python: Path) -> None:
    daemon = _start_unstartable(exp, private_python)
    status = exp.wait_state("failed", timeout=8)
    assert "cannot start training: Permission denied" in status["error"], status["error"]
    assert not list(run_dir(exp).glob("attempt_*")), "an attempt folder, but nothing ran"
    term(daemon)


def _mlsm_with(python: Path, exp: Experiment, cmd: str) -> Mlsm:
    """`mlsm CMD DIR` run by another interpreter (helpers.Mlsm always uses this one); the
    fixture ends it like the others."""
    proc = Mlsm.__new__(Mlsm)
    proc.out = exp.path.parent / f"mlsm-{python.parent.parent.name}.out"
    proc._fh = proc.out.open("wb")
    agent = f"{sys.executable} {Path(__file__).with_name('fake_agent.py')}"
    proc.proc = subprocess.Popen(
        [str(python), "-m", "mlsm.machine.cli", cmd, str(exp.path), "--agent", "command",
         "--agent-cmd", agent, "--grace", str(GRACE), "--retry-backoff", "0.05",
         "--sandbox-bind", str(exp.shared)],
        stdout=proc._fh, stderr=subprocess.STDOUT, env=exp.env, cwd=exp.path.parent)
    exp._procs.append(proc)
    return proc


BEAT_ONCE = '''\
import os, signal
from pathlib import Path
from mlsm import hooks
hooks.heartbeat(0, expect_next_within=3600)
Path(os.environ["TEST_SHARED"], "beat").write_text(str(os.getpid()))
signal.pause()
'''


def reconciled(exp: Experiment) -> None:
    """Two RETRY files consumed in turn (a RETRY outside FAILED is only removed): the wake-up
    queued between them was a full reconcile, budgets included."""
    retry = exp.path / "RETRY"
    for _ in range(2):
        retry.touch()
        wait_for(lambda: not retry.exists(), 10, "the daemon to consume RETRY")


def _faketime_env(exp: Experiment, stamp: Path) -> dict[str, str]:
    if not FAKETIME_LIB.exists():
        pytest.skip("libfaketime is not installed (apt-get install faketime)")
    stamp.write_text("+0\n")
    return {"LD_PRELOAD": str(FAKETIME_LIB), "FAKETIME_TIMESTAMP_FILE": str(stamp),
            "FAKETIME_NO_CACHE": "1", "FAKETIME_DONT_FAKE_MONOTONIC": "1"}


def test_clock_step_does_not_spend_the_daemons_budget(exp: Experiment, tmp_path: Path) -> None:
    fake = _faketime_env(exp, tmp_path / "faketime")
    setup(exp, BEAT_ONCE)
    # Polling, not inotify: libfaketime 0.9.10 with FAKETIME_DONT_FAKE_MONOTONIC makes every
    # time.sleep() raise EINVAL, which kills watchdog's inotify thread (it sleeps to pair moves).
    daemon = exp.mlsm("watch", "--poll", "--poll-interval", "0.1", **fake)
    wait_for((exp.shared / "beat").exists, 30, "the first heartbeat")
    (tmp_path / "faketime").write_text("+2d\n")
    reconciled(exp)
    stop_then_term(exp, daemon)
    assert "budget_spent" not in exp.runner_log() and "max_hours" not in exp.runner_log()
    assert history(exp) == [] and not exp.status().get("stop_reason")


def test_clock_step_does_not_make_the_cron_watchdog_kill(exp: Experiment) -> None:
    if shutil.which("faketime") is None:
        pytest.skip("faketime is not installed (apt-get install faketime)")
    setup(exp, BEAT_ONCE)
    daemon = exp.mlsm("watch")
    wait_for((exp.shared / "beat").exists, 30, "the first heartbeat")
    pid = exp.status()["training"]["pid"]
    env = {**exp.env, "FAKETIME_DONT_FAKE_MONOTONIC": "1"}
    done = subprocess.run(["faketime", "-f", "+2d", *CLI, "watchdog", "--kill", str(exp.path)],
                          cwd=exp.path.parent, env=env, capture_output=True, text=True,
                          timeout=30, check=False)
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 0, done.stdout + done.stderr
    assert exp.state() == "training" and "stale" not in done.stdout
    assert not gone(pid)  # the shim, and so its training, still runs
    stop_then_term(exp, daemon)


FILL_AFTER_RESULT = '''\
import os
from pathlib import Path
from mlsm import hooks
hooks.result(loss=0.5)
fd = os.open(Path(os.environ["MLSM_RUN_DIR"], "filler"), os.O_WRONLY | os.O_CREAT, 0o644)
for size in (1 << 16, 1 << 12, 1):
    try:
        while True:
            os.write(fd, b"x" * size)
    except OSError:
        pass
os.close(fd)
Path(os.environ["TEST_SHARED"], "full").write_text("1")
'''


@pytest.fixture
def small_fs(exp: Experiment) -> Iterator[Path]:
    """A 16 MiB tmpfs mounted on the experiment directory (needs root; skipped otherwise)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(exp.path)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield exp.path
    finally:
        subprocess.run(["umount", "-l", str(exp.path)], check=False)


def test_disk_full_at_exit_loses_no_result(exp: Experiment, small_fs: Path) -> None:
    setup(exp, FILL_AFTER_RESULT)
    exp.write("hang_analyze", "")
    daemon = exp.mlsm("watch")
    wait_for((exp.shared / "full").exists, 30, "the training to fill the disk")
    wait_for(lambda: "training_exited" in daemon.output(), 30, "the exit to be taken")
    (run_dir(exp) / "filler").unlink()
    exp.wait_state("analyzing", timeout=30)
    (row,) = history(exp)
    assert (row["outcome"], row["returncode"], row["value"]) == ("ok", 0, 0.5), row
    strays = [p.name for p in run_dir(exp).iterdir() if p.name.endswith(".tmp")]
    assert strays == [], strays
    assert_no_engine_error(exp, daemon)
    stop_then_term(exp, daemon)

