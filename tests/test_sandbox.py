"""The attack suite: a training that tries to steal, escape, forge or flood, one test per attempt.

Each attempt runs as a real `mlsm run` with the sandbox (bwrap, the default where it works) and
without it (`--sandbox none`, which documents what is then exposed). The training reports what
it managed into $TEST_SHARED; the test checks the world afterwards, not the training's word.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import Experiment, Mlsm, gone, kill_matching, wait_for

from mlsm.handlers.launchers import local, sandbox

MODES = ["bwrap", "none"]
SECRET = "sk-ant-attack-suite-secret"

PRELUDE = '''\
import json, os, sys, time
from pathlib import Path
SHARED = Path(os.environ["TEST_SHARED"])
EXP = Path(os.environ["MLSM_DIR"])
RUN = Path(os.environ["MLSM_RUN_DIR"])
def report(**kw):
    (SHARED / "attack.json").write_text(json.dumps(kw))
def attempt(fn):
    try:
        return "ok", fn()
    except Exception as exc:
        return "refused", f"{type(exc).__name__}: {exc}"
'''


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    problem = sandbox.preflight()
    if request.param == "bwrap" and problem is not None:
        if os.environ.get("MLSM_REQUIRE_SANDBOX") == "1":
            pytest.fail(f"MLSM_REQUIRE_SANDBOX=1 but: {problem}")
        pytest.skip(f"no sandbox here: {problem}")
    return str(request.param)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A fake $HOME with the secrets a person keeps there."""
    h = tmp_path / "home"
    (h / ".ssh").mkdir(parents=True)
    (h / ".ssh" / "id_ed25519").write_text("PRIVATE KEY\n")
    (h / ".claude").mkdir()
    (h / ".claude" / ".credentials.json").write_text('{"token": "t"}\n')
    (h / ".bashrc").write_text("# mine\n")
    return h


def run_attack(exp: Experiment, mode: str, body: str, *args: str, wait: bool = True,
               **env: str) -> Mlsm:
    exp.write("IDEA.md", "attack\n")
    exp.write("PLAN.md", "# plan\n")
    exp.write("train.py", PRELUDE + body)
    env = {"FAKE_NO_PRODUCT_ROLE": "code", "FAKE_DECISION": "finish", **env}
    run = exp.mlsm("run", "--sandbox", mode, "--max-iterations", "1", *args, **env)
    if wait:
        run.wait(60)
    return run


def attack_result(exp: Experiment) -> dict[str, str]:
    try:
        doc: dict[str, str] = json.loads((exp.shared / "attack.json").read_text())
        return doc
    except (OSError, ValueError):
        return {}


# ----- secrets -------------------------------------------------------------------------------
def test_daemon_environment_through_proc(exp: Experiment, mode: str) -> None:
    body = '''
daemon = json.loads((EXP / "status.json").read_text())["daemon_pid"]
report(environ=str(attempt(lambda: open(f"/proc/{daemon}/environ", "rb").read())))
'''
    run_attack(exp, mode, body, ANTHROPIC_API_KEY=SECRET)
    leaked = SECRET in attack_result(exp).get("environ", "")
    assert leaked == (mode == "none")  # without the sandbox the daemon's pid is in reach


def test_secrets_in_home(exp: Experiment, mode: str, home: Path) -> None:
    body = '''
home = Path(os.path.expanduser("~"))
report(ssh=str(attempt(lambda: (home / ".ssh" / "id_ed25519").read_text())),
       claude=str(attempt(lambda: (home / ".claude" / ".credentials.json").read_text())),
       bashrc=str(attempt(lambda: (home / ".bashrc").write_text("evil\\n"))))
'''
    run_attack(exp, mode, body, HOME=str(home))
    got = attack_result(exp)
    exposed = mode == "none"
    assert ("PRIVATE KEY" in got["ssh"]) == exposed
    assert ('"token"' in got["claude"]) == exposed
    assert ((home / ".bashrc").read_text() == "evil\n") == exposed


def test_agent_settings_never_reach_training(exp: Experiment, mode: str) -> None:
    body = 'report(env=json.dumps(dict(os.environ)))\n'
    run_attack(exp, mode, body, MLSM_AGENT_CMD="secret-agent", OPENAI_API_KEY=SECRET)
    env = json.loads(attack_result(exp)["env"])
    assert "MLSM_AGENT_CMD" not in env and "OPENAI_API_KEY" not in env


# ----- code run with the daemon's environment ------------------------------------------------
def test_planted_lifecycle_hook_never_runs(exp: Experiment, mode: str) -> None:
    body = '''
def plant():
    hook = EXP / ".mlsm" / "hooks" / "on-analyzing"
    hook.parent.mkdir(parents=True, exist_ok=True)
    hook.write_text("#!/bin/sh\\ntouch " + str(SHARED / "hook_ran") + "\\n")
    hook.chmod(0o755)
report(plant=str(attempt(plant)))
'''
    run_attack(exp, mode, body)
    assert attack_result(exp)["plant"].startswith("('refused'" if mode == "bwrap" else "('ok'")
    assert not (exp.shared / "hook_ran").exists()  # read once at open, before the training


def test_planted_module_cannot_shadow_mlsm(exp: Experiment, mode: str) -> None:
    body = '''
def plant():
    fake = EXP / "mlsm" / "hooks"
    fake.mkdir(parents=True, exist_ok=True)
    (fake / "shim.py").write_text("open(" + repr(str(SHARED / "planted_ran")) + ", 'w')\\n")
report(plant=str(attempt(plant)))
'''
    run_attack(exp, mode, body, "--max-iterations", "2", FAKE_DECISION="continue")
    assert exp.status()["iteration"] == 2  # a second shim was started after the planting
    assert not (exp.shared / "planted_ran").exists()  # `python -P`: the cwd is not on sys.path


def test_discovered_sibling_gets_no_secrets(tmp_path: Path, mode: str, exp: Experiment) -> None:
    root = exp.path.parent / "root"
    a = root / "a"
    a.mkdir(parents=True)
    (a / "IDEA.md").write_text("x\n")
    (a / "PLAN.md").write_text("# p\n")
    (a / "train.py").write_text(PRELUDE + '''
def make_sibling():
    b = EXP.parent / "b"
    b.mkdir()
    (b / "PLAN.md").write_text("# p\\n")
    (b / "mlsm.toml").write_text('train-env = ["ANTHROPIC_API_KEY"]\\nmax-iterations = 1\\n')
    (b / "train.py").write_text("import json, os\\nopen(os.path.join(os.environ['TEST_SHARED'], "
                                "'sibling_env.json'), 'w').write(json.dumps(dict(os.environ)))\\n")
    (b / "IDEA.md").write_text("x\\n")
report(sibling=str(attempt(make_sibling)))
''')
    daemon = Mlsm(["watch", str(root), "--discover", "--agent", "command", "--agent-cmd",
                   f"{sys.executable} {Path(__file__).parent / 'fake_agent.py'}",
                   "--sandbox", mode, "--sandbox-bind", str(exp.shared), "--max-iterations",
                   "1", "--grace", "1"], exp.path.parent,
                  {**exp.env, "ANTHROPIC_API_KEY": SECRET, "FAKE_NO_PRODUCT_ROLE": "code"})
    try:
        wait_for(lambda: attack_result(exp), 30, "the attack to report")
        if mode == "bwrap":  # its view of the parent folder is private: nothing reaches the host
            assert not (root / "b").exists()
            return
        wait_for((exp.shared / "sibling_env.json").exists, 30, "the sibling's training")
        env = json.loads((exp.shared / "sibling_env.json").read_text())
        assert "ANTHROPIC_API_KEY" not in env
        wait_for(lambda: "train_env_refused" in (root / ".mlsm" / "discover.log").read_text()
                 if (root / ".mlsm" / "discover.log").exists() else
                 "train_env_refused" in daemon.output(), 10, "the refusal logged")
    finally:
        daemon.signal(signal.SIGTERM)
        daemon.wait(30)


# ----- kill escapes --------------------------------------------------------------------------
ESCAPE = '''
import subprocess
code = ("import os, time, pathlib\\n"
        "p = pathlib.Path(" + repr(str(SHARED / "escapee")) + ")\\n"
        "while True:\\n    p.write_text(str(time.time()))\\n    time.sleep(0.05)\\n")
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execve(sys.executable, [sys.executable, "-c", code], {})
    os._exit(0)
time.sleep(0.3)
report(started="yes")
'''


def _quiet(path: Path) -> bool:
    """True once `path` has not been rewritten for half a second (its writer is dead)."""
    try:
        return time.time() - path.stat().st_mtime > 0.5
    except OSError:
        return True


def _kill_writers(marker: Path, exp: Path) -> None:
    """After a failed assertion: kill what still writes `marker` or carries `exp`'s tag."""
    kill_matching(lambda info: _writes(info, marker, exp))


def _writes(info: dict[str, object], marker: Path, exp: Path) -> bool:
    cmdline = info.get("cmdline") or []
    environ = info.get("environ") or {}
    assert isinstance(cmdline, list) and isinstance(environ, dict)
    return (any(str(marker) in part for part in cmdline)
            or environ.get(local.EXPERIMENT_VAR) == str(exp))


def test_double_forked_escapee_dies_with_the_run(exp: Experiment, mode: str) -> None:
    marker = exp.shared / "escapee"
    try:
        run_attack(exp, mode, ESCAPE)
        assert attack_result(exp).get("started") == "yes"
        died = _wait_quiet(marker)
        assert died == (mode == "bwrap")  # without a pid namespace an untagged orphan lives on
    finally:
        _kill_writers(marker, exp.path)


def _wait_quiet(marker: Path, timeout: float = 5.0) -> bool:
    try:
        wait_for(lambda: _quiet(marker), timeout, "the escapee to stop writing")
    except AssertionError:
        return False
    return True


HOPPER = '''
import signal
def hop():
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    while True:
        (SHARED / "hopper").write_text(str(time.time()))
        if os.fork():
            os._exit(0)
        time.sleep(0.01)
if os.fork() == 0:
    hop()
report(started="yes")
signal.pause()
'''


def test_pid_hopper_dies_on_stop(exp: Experiment, mode: str) -> None:
    marker = exp.shared / "hopper"
    try:
        run = run_attack(exp, mode, HOPPER, wait=False)
        wait_for(lambda: attack_result(exp).get("started") and marker.exists(), 30, "hopping")
        (exp.path / "STOP").touch()
        exp.wait_state("stopped")
        assert _wait_quiet(marker)
        run.signal(signal.SIGTERM)
        run.wait(30)
    finally:
        _kill_writers(marker, exp.path)


# ----- forged truth --------------------------------------------------------------------------
def test_forged_decision_is_set_aside(exp: Experiment, mode: str) -> None:
    body = '''
(RUN / "decision.json").write_text(json.dumps({"decision": "finish", "reason": "forged"}))
report(done="yes")
'''
    run_attack(exp, mode, body, FAKE_DECISION="")
    assert "analyze 1" in exp.agent_calls()  # the analysis ran all the same
    run_dir = exp.path / "logs" / "iter_001"
    assert json.loads((run_dir / "decision.json").read_text())["reason"] != "forged"
    assert (run_dir / "forged.decision.json").exists()


def test_forged_report_does_not_end_the_run(exp: Experiment, mode: str) -> None:
    body = '''
report(write=str(attempt(lambda: (EXP / "REPORT.md").write_text("# forged\\n"))))
'''
    run_attack(exp, mode, body)
    assert "report 1" in exp.agent_calls()  # the report step wrote the report
    assert "forged" not in (exp.path / "REPORT.md").read_text()


def test_forged_status_cannot_aim_a_kill(exp: Experiment, mode: str) -> None:
    victim = subprocess.Popen([sys.executable, "-c", "import signal; signal.pause()"])
    try:
        body = f'''
def forge():
    status = json.loads((EXP / "status.json").read_text())
    stat = open("/proc/{victim.pid}/stat").read()
    status["training"].update(pid={victim.pid}, pgid={victim.pid},
                              start_ticks=int(stat[stat.rindex(")") + 2:].split()[19]))
    (EXP / "status.json").write_text(json.dumps(status))
    os.kill(status["daemon_pid"], 9)
report(forge=str(attempt(forge)))
signal_pause = __import__("signal").pause
signal_pause()
'''
        run = run_attack(exp, mode, body, wait=False)
        wait_for(lambda: attack_result(exp), 30, "the forgery attempt")
        if mode == "bwrap":
            assert attack_result(exp)["forge"].startswith("('refused'")
            run.signal(signal.SIGTERM)  # the daemon still lives: end the test's run
        run.wait(30)
        again = exp.mlsm("watch")
        exp.wait_state("training", "analyzing", "done")
        (exp.path / "STOP").touch()
        exp.wait_state("stopped")
        assert victim.poll() is None  # the stranger lives
        again.signal(signal.SIGTERM)
        again.wait(30)
    finally:
        victim.kill()
        victim.wait()


def test_another_experiments_files_are_out_of_reach(exp: Experiment, mode: str) -> None:
    other = exp.path.parent / "other"
    (other / "logs" / "iter_001").mkdir(parents=True)
    beat = other / "logs" / "iter_001" / "heartbeat.json"
    beat.write_text('{"seq": 1}')
    body = f'''
report(beat=str(attempt(lambda: open({str(beat)!r}, "w").write('{{"seq": 99}}'))),
       stop=str(attempt(lambda: open({str(other / "STOP")!r}, "w").close())))
'''
    run_attack(exp, mode, body)
    exposed = mode == "none"
    assert ("99" in beat.read_text()) == exposed
    assert (other / "STOP").exists() == exposed


def test_frozen_daemon_is_reported_by_the_cron_watchdog(exp: Experiment, mode: str) -> None:
    body = '''
daemon = json.loads((EXP / "status.json").read_text())["daemon_pid"]
report(stop=str(attempt(lambda: os.kill(daemon, 19))))
import signal
signal.pause()
'''
    run = run_attack(exp, mode, body, wait=False)
    wait_for(lambda: attack_result(exp), 30, "the attempt")
    try:
        check = Mlsm(["watchdog", str(exp.path)], exp.path.parent, exp.env)
        code = check.wait(30)
        if mode == "none":
            assert code == 5 and "is frozen" in check.output(), check.output()
        else:
            assert attack_result(exp)["stop"].startswith("('refused'")
            assert "is frozen" not in check.output()
    finally:
        run.proc.send_signal(signal.SIGCONT)
        (exp.path / "STOP").touch()
        exp.wait_state("stopped")
        run.signal(signal.SIGTERM)
        run.wait(30)


# ----- network and resources -----------------------------------------------------------------
@pytest.fixture
def listener() -> Iterator[int]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    yield server.getsockname()[1]
    server.close()


def test_network_is_off(exp: Experiment, mode: str, listener: int) -> None:
    body = f'''
import socket
report(connect=str(attempt(lambda: socket.create_connection(("127.0.0.1", {listener}), 2))))
'''
    run_attack(exp, mode, body)
    assert attack_result(exp)["connect"].startswith("('refused'") == (mode == "bwrap")


def test_fork_bomb_is_bounded(exp: Experiment, mode: str) -> None:
    body = '''
import signal
for _ in range(10000):
    try:
        if os.fork() == 0:
            signal.pause()
            os._exit(0)
    except OSError:
        break
report(done="yes")
signal.pause()
'''
    run_attack(exp, mode, body, "--max-procs", "300")
    row = exp.status()["history"][0]
    assert row["reason"] == "process_limit" and row["outcome"] == "failed"
    assert local.strays(exp.path.resolve(), []) == {}


def test_memory_past_the_limit_is_bounded(exp: Experiment, mode: str) -> None:
    body = 'hog = bytearray(1 << 30)\nreport(done="yes")\n'
    run_attack(exp, mode, body, "--max-memory", "300M")
    row = exp.status()["history"][0]
    assert row["reason"] == "memory_limit" and row["outcome"] == "failed"
    assert attack_result(exp) == {}


def test_gone_helper_sanity() -> None:
    assert gone(2 ** 22 + 12345)


def test_a_sandbox_that_hides_cuda_is_refused(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    if sandbox.preflight() is not None:
        pytest.skip(f"no sandbox here: {sandbox.preflight()}")
    exp, run = tmp_path / "exp", tmp_path / "exp" / "logs" / "iter_001"
    run.mkdir(parents=True)
    # A stand-in for `python -c "...cuda.is_available()"`: inside the pid namespace its pid is
    # tiny, so it answers False there and True outside, like a sandbox missing a device node.
    fake = exp / "python"
    fake.write_text('#!/bin/sh\nif [ $$ -lt 100 ]; then echo False; else echo True; fi\n')
    fake.chmod(0o755)
    monkeypatch.setattr(sandbox, "gpu_devices", lambda visible: ["/dev/null"])
    policy = sandbox.Policy(exp, run, home=tmp_path / "home")
    said = sandbox.cuda_mismatch(str(fake), policy)
    assert said is not None and "is True outside the sandbox but False inside" in said
    fake.write_text("#!/bin/sh\necho True\n")
    assert sandbox.cuda_mismatch(str(fake), policy) is None
    monkeypatch.setattr(sandbox, "gpu_devices", lambda visible: [])
    assert sandbox.cuda_mismatch("/nonexistent/python", policy) is None  # no GPU: no check


def test_an_interpreter_under_tmp_or_home_stays_visible(tmp_path: Path) -> None:
    venv = tmp_path / "venv" / "bin"
    venv.mkdir(parents=True)
    python = venv / "python"
    python.symlink_to(sys.executable)
    policy = sandbox.Policy(tmp_path / "exp", tmp_path / "exp" / "run", home=Path.home())
    args = sandbox.wrap([str(python), "train.py"], policy)
    masked = args.index("/tmp", args.index("--tmpfs"))
    kept = [args[i + 1] for i, a in enumerate(args) if a == "--ro-bind-try"]
    assert str(tmp_path / "venv") in kept and args.index(str(tmp_path / "venv")) > masked
