"""The engine in-process: an injected wall clock and a scripted backend, real child processes.

No daemon and no file observer: the test wakes the engine itself where a file event would, so
budgets, best, patience, retries and reconcile rules are checked in seconds.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import FAKE_AGENT, gone, wait_for

from mlsm.handlers.agents.base import AgentStep
from mlsm.handlers.agents.command import CommandAgent, step_env
from mlsm.handlers.launchers import local, sandbox
from mlsm.machine.core.config import Config, resolve
from mlsm.machine.engine import Experiment
from mlsm.machine.views.status import snapshot

# iteration → (value of the objective, exit code); iteration 2 reports the lowest loss and crashes
BEST_OF_THREE = '''\
import os, sys
from mlsm import hooks
it = int(os.environ["MLSM_ITERATION"])
value, code = {1: (0.5, 0), 2: (0.1, 1), 3: (0.3, 0)}[it]
hooks.result(val_loss=value * 2, val_rmse=value, goal="minimize")
sys.exit(code)
'''


class ScriptedAgent(CommandAgent):
    """tests/fake_agent.py as a backend object; its FAKE_* settings live here, not in os.environ."""

    name = "scripted"

    def __init__(self, **fake: str) -> None:
        self.fake = dict(fake)

    def preflight(self, config: Config) -> None:
        return None

    def argv(self, step: AgentStep) -> list[str]:
        return [sys.executable, str(FAKE_AGENT)]

    def env(self, step: AgentStep, base: dict[str, str]) -> dict[str, str]:
        return {**step_env(step, base), **self.fake}



class Driver:
    """One in-process Experiment over a temp directory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.exp: Experiment | None = None
        self.wall_offset = 0.0

    def write(self, name: str, text: str) -> None:
        (self.path / name).write_text(text)

    def start(self, agent: ScriptedAgent, **flags: Any) -> Experiment:
        flags = {"grace": 1.0, "retry_backoff": 0.01, **flags}
        config = resolve(self.path, flags, environ={})
        self.exp = Experiment(self.path, config, console=None, backend=agent,
                              wall=lambda: time.time() + self.wall_offset,
                              boottime=lambda: time.monotonic() + self.wall_offset)
        self.exp.open()
        self.exp.start()
        return self.exp

    def finish(self, timeout: float = 30) -> dict[str, Any]:
        assert self.exp is not None
        assert self.exp.finished.wait(timeout), f"not finished: {self.status().get('state')}"
        # finished is set on entering the state; status.json is written as the transition ends
        return wait_for(lambda: self.status() if self.status().get("state") in ("done", "failed")
                        else None, 10, "status.json to say so")

    def status(self) -> dict[str, Any]:
        try:
            doc: dict[str, Any] = json.loads((self.path / "status.json").read_text())
            return doc
        except (OSError, ValueError):
            return {}

    def wait_state(self, state: str, timeout: float = 20) -> dict[str, Any]:
        assert self.exp is not None
        exp = self.exp
        wait_for(lambda: exp.state.value == state and self.status().get("state") == state,
                 timeout, f"state {state}")
        return self.status()

    def events(self, name: str) -> list[dict[str, Any]]:
        lines = (self.path / "logs" / "events.jsonl").read_text().splitlines()
        return [e for e in map(json.loads, lines) if e["event"] == name]

    def ledger(self) -> list[dict[str, str]]:
        head, *rows = (self.path / "results.tsv").read_text().splitlines()
        return [dict(zip(head.split("\t"), r.split("\t"), strict=True)) for r in rows]

    def close(self) -> None:
        if self.exp is not None and self.exp.started:
            self.exp.shutdown(timeout=20)


@pytest.fixture
def drv(tmp_path: Path) -> Iterator[Driver]:
    d = tmp_path / "exp"
    d.mkdir()
    driver = Driver(d)
    yield driver
    driver.close()


def _go(drv: Driver, train: str, plan: str = "# Plan\n") -> None:
    """A person's idea, plan and train.py (the agent's code step then leaves train.py as is)."""
    drv.write("IDEA.md", "an idea\n")
    drv.write("PLAN.md", plan)
    drv.write("train.py", train)


def test_best_is_never_a_failed_run_and_every_view_agrees(drv: Driver) -> None:
    _go(drv, BEST_OF_THREE, plan="# Plan\nObjective: minimize val_rmse\n")
    drv.start(ScriptedAgent(FAKE_NO_PRODUCT_ROLE="code"), max_iterations=3)
    status = drv.finish()
    assert status["state"] == "done"
    assert [r["outcome"] for r in status["history"]] == ["ok", "failed", "ok"]
    assert status["objective"] == {"name": "val_rmse", "goal": "minimize", "source": "plan"}
    assert status["best"] == {"iteration": 3, "metric": "val_rmse", "value": 0.3,
                              "goal": "minimize"}
    assert snapshot(drv.path)["best"] == status["best"]
    ledger = drv.ledger()
    assert [r["outcome"] for r in ledger] == ["ok", "failed", "ok"]
    assert [r["objective"] for r in ledger] == ["val_rmse"] * 3
    assert [r["best_so_far"] for r in ledger] == ["0.5", "0.5", "0.3"]
    assert all(r["decision"] == "continue" for r in ledger)
    exited = drv.events("training_exited")
    assert [e["metric"] for e in exited] == ["val_rmse"] * 3


def test_a_flag_objective_beats_the_plan(drv: Driver) -> None:
    _go(drv, BEST_OF_THREE, plan="# Plan\nObjective: minimize val_rmse\n")
    drv.start(ScriptedAgent(FAKE_NO_PRODUCT_ROLE="code"), max_iterations=1,
              objective="val_loss")
    status = drv.finish()
    assert status["objective"]["name"] == "val_loss" and status["objective"]["source"] == "flag"
    assert status["best"]["value"] == 1.0


def test_a_script_that_only_logs_gets_a_best(drv: Driver) -> None:
    train = ("import os\nfrom mlsm import hooks\nit = int(os.environ['MLSM_ITERATION'])\n"
             "for step in range(3):\n    hooks.log(step=step, val_loss=1.0 / (step + it))\n")
    _go(drv, train, plan="# Plan\nObjective: minimize val_loss\n")
    drv.start(ScriptedAgent(FAKE_NO_PRODUCT_ROLE="code"), max_iterations=2)
    status = drv.finish()
    assert [(r["outcome"], r["source"]) for r in status["history"]] == [("ok", "logged")] * 2
    assert status["best"]["iteration"] == 2 and status["best"]["value"] == pytest.approx(0.25)


def test_a_plain_script_is_read_from_its_output(drv: Driver) -> None:
    train = "import os\nit = int(os.environ['MLSM_ITERATION'])\nprint(f'val_mse: {0.1 / it}')\n"
    _go(drv, train)
    drv.start(ScriptedAgent(FAKE_NO_PRODUCT_ROLE="code"), max_iterations=2,
              objective="val_mse")
    status = drv.finish()
    assert [r["source"] for r in status["history"]] == ["printed", "printed"]
    assert status["best"]["iteration"] == 2


def test_patience_ends_the_run_with_a_report(drv: Driver) -> None:
    train = ("import os\nfrom mlsm import hooks\n"
             "hooks.result(loss=float(os.environ['MLSM_ITERATION']))\n")
    _go(drv, train)
    drv.start(ScriptedAgent(FAKE_NO_PRODUCT_ROLE="code"), max_iterations=10, patience=2)
    status = drv.finish()
    assert status["iteration"] == 3 and status["best"]["iteration"] == 1
    assert "--patience 2" in status["stop_reason"]
    assert (drv.path / "REPORT.md").is_file()


def test_consecutive_failures_end_the_run(drv: Driver) -> None:
    _go(drv, "raise SystemExit(2)\n")
    drv.start(ScriptedAgent(FAKE_NO_PRODUCT_ROLE="code"), max_iterations=10, max_failures=2)
    status = drv.finish()
    assert status["iteration"] == 2 and status["best"] is None
    assert "2 consecutive iterations failed" in status["stop_reason"]


def test_failed_step_backs_off_then_fails_then_retry_file_recovers(drv: Driver) -> None:
    drv.write("IDEA.md", "x")
    agent = ScriptedAgent(FAKE_FAIL_ROLE="plan")
    exp = drv.start(agent, max_iterations=1, agent_retries=2, retry_backoff=0.05)
    status = drv.finish()
    assert status["state"] == "failed" and "after 3 attempts" in status["error"]
    delays = [e["retry_in_s"] for e in drv.events("agent_step_failed")]
    assert delays == [0.05, 0.1]
    agent.fake.pop("FAKE_FAIL_ROLE")
    drv.write("RETRY", "")
    exp.wake()
    status = drv.finish()
    wait_for(lambda: drv.status().get("state") == "done", 20, "done after RETRY")
    assert not (drv.path / "RETRY").exists()
    assert drv.events("retry_requested")


def test_retry_file_outside_failed_is_consumed_and_ignored(drv: Driver) -> None:
    exp = drv.start(ScriptedAgent())
    drv.write("RETRY", "")
    exp.wake()
    wait_for(lambda: not (drv.path / "RETRY").exists(), 10, "RETRY consumed")
    assert drv.events("retry_ignored")[0]["state"] == "idle"


def test_wall_budget_uses_the_injected_clock(drv: Driver) -> None:
    drv.write("IDEA.md", "x")
    (drv.path / "hang_plan").write_text("")
    exp = drv.start(ScriptedAgent(), max_hours=1.0)
    wait_for(lambda: (drv.path / "hung_plan.pid").exists(), 20, "the plan agent to hang")
    pids = [int(p) for p in (drv.path / "hung_plan.pid").read_text().split()]
    (drv.path / "hang_plan").unlink()
    drv.wall_offset = 2 * 3600
    exp.wake()
    drv.wait_state("reporting")
    assert "--max-hours" in drv.status()["stop_reason"]
    wait_for(lambda: all(gone(p) for p in pids), 10, "the plan agent's tree gone")


def test_stop_and_resume_through_the_files(drv: Driver) -> None:
    _go(drv, "import signal\nsignal.pause()\n")
    exp = drv.start(ScriptedAgent(FAKE_NO_PRODUCT_ROLE="code"), max_iterations=1)
    pid = drv.wait_state("training")["training"]["pid"]
    drv.write("STOP", "")
    exp.request_stop()
    exp.wake()
    status = drv.wait_state("stopped")
    assert status["previous_state"] == "training" and gone(pid)
    killed = [e for e in drv.events("tree_killed") if e["kind"] == "training"]
    assert len(killed) == 1  # one owner acts, once, however many ask
    (drv.path / "STOP").unlink()
    exp.wake()
    status = drv.wait_state("training")
    assert status["training"]["pid"] != pid


DETACHED = '''\
import os, subprocess, sys
child = subprocess.Popen([sys.executable, "-c", "import signal; signal.pause()"],
                         start_new_session=True)
open(os.path.join(os.environ["MLSM_RUN_DIR"], "child.pid"), "w").write(str(child.pid))
print("loss: 0.5")
'''


@pytest.mark.parametrize("mode", ["none", "bwrap"])
def test_a_detached_child_is_killed_when_its_training_exits(drv: Driver, mode: str) -> None:
    if mode == "bwrap" and sandbox.preflight() is not None:
        pytest.skip(f"no sandbox here: {sandbox.preflight()}")
    _go(drv, DETACHED)
    drv.start(ScriptedAgent(FAKE_NO_PRODUCT_ROLE="code"), max_iterations=1, objective="loss",
              sandbox=mode)
    status = drv.finish()
    assert local.strays(drv.path.resolve(), []) == {}  # nothing of the run is left alive
    exit_doc = json.loads((drv.path / "logs" / "iter_001" / "exit.json").read_text())
    assert exit_doc["returncode"] == 0
    if mode == "none":  # the supervisor found and killed it
        child = int((drv.path / "logs" / "iter_001" / "child.pid").read_text())
        assert gone(child)
        assert status["history"][0]["leftovers"] == exit_doc["leftovers"] == 1
        assert drv.events("leftovers_killed")
    else:  # the namespace's end kills it, or the supervisor does if it looks first
        assert status["history"][0]["leftovers"] == exit_doc.get("leftovers", 0) <= 2


def test_commit_per_iteration_and_diff(drv: Driver) -> None:
    from mlsm.machine.core import provenance

    if not provenance.available():
        pytest.skip("git is not installed")
    drv.write("IDEA.md", "x")
    drv.start(ScriptedAgent(), max_iterations=2)
    status = drv.finish()
    commits = [r["commit"] for r in status["history"]]
    assert all(commits) and commits[0] != commits[1]
    assert (drv.path / "logs" / "iter_002" / "commit.txt").read_text().strip() == commits[1]
    text = provenance.diff(drv.path, "1", "2", ["train.py"])
    assert "-hooks.result(loss=1.0 / (1 + 1)" in text and "+hooks.result(loss=1.0 / (2 + 1)" \
        in text



def test_a_flooding_training_keeps_only_the_tail_of_its_log(drv: Driver) -> None:
    # 4 MB over about 3 s: the once-a-second check sees the log past its 1 MB cap.
    flood = ("import sys, time\nline = 'x' * 1023 + '\\n'\nfor i in range(4 * 1024):\n"
             "    sys.stdout.write(line)\n    if i % 128 == 0:\n        time.sleep(0.1)\n"
             "print('the end')\n")
    _go(drv, flood)
    drv.start(ScriptedAgent(FAKE_NO_PRODUCT_ROLE="code"), max_iterations=1, max_log_mb=1)
    drv.finish()
    assert drv.events("log_capped")
    out = (drv.path / "logs" / "iter_001" / "stdout.log").read_bytes()
    assert b"bytes dropped to keep this log small" in out and out.endswith(b"the end\n")
    assert len(out) < 3 * 2**20
