"""Checkpoints across STOP: a resumed iteration continues from its checkpoint, and says so."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import Experiment, wait_for

from mlsm.hooks import rundir

REPO = Path(__file__).resolve().parents[1]
TRAIN = '''\
import json, os, time
from pathlib import Path
from mlsm import hooks
ckpt = hooks.checkpoint_dir() / "state.json"
shared = Path(os.environ["TEST_SHARED"])
step = json.loads(ckpt.read_text())["step"] if hooks.resumed() and ckpt.exists() else 0
with (shared / "starts").open("a") as fh:
    fh.write(f"{step} {hooks.resumed()}\\n")
while step < 30:
    if hooks.stop_requested():  # STOP: save within --grace, then end
        ckpt.write_text(json.dumps({"step": step}))
        raise SystemExit(143)
    if step >= 10 and (shared / "hold").exists():
        hooks.heartbeat(step)  # holds at step 10 until the test lets go
        time.sleep(0.01)
        continue
    step += 1
    hooks.log(step=step, total_steps=30, loss=1.0 / step)
hooks.result(loss=1.0 / step)
'''


def test_stop_then_resume_continues_from_the_checkpoint_and_the_row_says_so(
        exp: Experiment) -> None:
    exp.write("IDEA.md", "Count to thirty, resumably.")
    exp.write("PLAN.md", "# plan")
    exp.write("train.py", TRAIN)
    (exp.shared / "hold").write_text("")
    daemon = exp.mlsm("watch", "--max-iterations", "1", MLSM_HEARTBEAT_INTERVAL="0.05")
    run_dir = exp.path / "logs" / "iter_001"
    wait_for(lambda: (rundir.read_heartbeat(run_dir) or {}).get("step") == 10, 60,
             "the training to reach step 10")
    exp.write("STOP", "")
    exp.wait_state("stopped")
    assert json.loads((run_dir / "checkpoints" / "state.json").read_text()) == {"step": 10}
    (exp.shared / "hold").unlink()
    (exp.path / "STOP").unlink()
    status = exp.wait_state("done", timeout=60)
    assert (exp.shared / "starts").read_text().splitlines() == ["0 False", "10 True"]
    first = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])
    assert first["step"] == 11  # not step 0: the earlier attempt's rows are in attempt_1/
    assert (run_dir / "attempt_1" / "metrics.jsonl").exists()
    row = status["history"][0]
    assert (row["outcome"], row["resumed"], row["value"]) == ("ok", True, pytest.approx(1 / 30))
    head, first_row = (exp.path / "results.tsv").read_text().splitlines()[:2]
    assert dict(zip(head.split("\t"), first_row.split("\t"), strict=True))["resumed"] == "yes"
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(30) == 130


def test_a_fresh_iteration_is_not_resumed(exp: Experiment) -> None:
    exp.write("IDEA.md", "Count to thirty.")
    exp.write("PLAN.md", "# plan")
    exp.write("train.py", TRAIN)
    exp.mlsm("run", "--max-iterations", "1")
    status = exp.wait_state("done", timeout=60)
    assert status["history"][0]["resumed"] is False
    assert (exp.shared / "starts").read_text() == "0 False\n"


SCRIPTS = ["handlers/builtin/templates/regression.py",
           "handlers/builtin/templates/classification.py",
           "handlers/builtin/templates/charlm.py", "examples/own_train/train.py"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_templates_save_on_sigterm_and_resume_from_the_checkpoint(tmp_path: Path,
                                                                  script: str) -> None:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MLSM_")},
           "MLSM_RUN_DIR": str(tmp_path), "MLSM_HEARTBEAT_INTERVAL": "0"}
    proc = subprocess.Popen([sys.executable, str(REPO / script)], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, text=True)
    wait_for(lambda: (rundir.read_heartbeat(tmp_path) or {}).get("step"), 120,
             "the first step")
    proc.send_signal(signal.SIGSTOP)  # the signal lands mid-loop, however fast the loop is
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGCONT)
    proc.communicate(timeout=120)
    assert proc.returncode == 143
    import torch  # the test reads the checkpoint the way the template wrote it

    saved = int(torch.load(tmp_path / "checkpoints" / "last.pt")["step"])
    assert saved >= 1
    (tmp_path / "metrics.jsonl").rename(tmp_path / "metrics.first.jsonl")
    again = subprocess.run([sys.executable, str(REPO / script)], cwd=tmp_path, timeout=300,
                           env={**env, "MLSM_RESUMED": "1"}, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert f"resumed from the checkpoint of step {saved}" in again.stdout
    first = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert first["step"] == saved + 1 and "mlsm-result:" in again.stdout
