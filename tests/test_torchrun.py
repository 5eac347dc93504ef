"""The torchrun launcher for real (gloo on CPU): DDP end to end, STOP and resume from a
checkpoint, a hung rank killed with its siblings, kill -9 of the daemon and re-attach."""

from __future__ import annotations

import contextlib
import json
import os
import signal

import psutil
import pytest
from helpers import Experiment, Mlsm, wait_for

from mlsm.hooks import rundir


def _torchrun_missing() -> str | None:
    try:
        import torch.distributed as dist
        import torch.distributed.run  # noqa: F401  (what `torchrun` runs)
    except ImportError as exc:
        return f"torchrun is not installed ({exc}): pip install torch"
    return None if dist.is_gloo_available() else "torch was built without the gloo backend"


@pytest.fixture(autouse=True)
def torchrun() -> None:
    reason = _torchrun_missing()
    if reason and os.environ.get("MLSM_REQUIRE_TORCHRUN") == "1":
        pytest.fail(f"MLSM_REQUIRE_TORCHRUN=1 but {reason}")
    if reason:
        pytest.skip(reason)


DDP = '''\
import os, time
from pathlib import Path
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from mlsm import hooks

dist.init_process_group("gloo")
rank = dist.get_rank()
shared = Path(os.environ["TEST_SHARED"])
with (shared / "launches").open("a") as fh:
    fh.write(f"{os.environ['MLSM_ITERATION']} {rank} {hooks.resumed()}\\n")
torch.manual_seed(0)
model = DistributedDataParallel(torch.nn.Linear(4, 1))
opt = torch.optim.SGD(model.parameters(), lr=0.05)
ckpt = hooks.checkpoint_dir() / "ddp.pt"
step = 0
if hooks.resumed() and ckpt.exists():
    state = torch.load(ckpt)
    model.module.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    step = state["step"]
x = torch.randn(64, 4, generator=torch.Generator().manual_seed(1))
y = x.sum(1, keepdim=True)
while step < 20:
    # Every rank stops, and holds, at the same step: a rank that went on alone would meet its
    # sibling's next flag exchange with DDP's gradient all-reduce (gloo: a size mismatch).
    flags = torch.tensor([float(hooks.stop_requested()),
                          float(step >= 5 and (shared / "hold").exists())])
    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    stop, hold = flags.tolist()
    if stop:
        if rank == 0:
            torch.save({"model": model.module.state_dict(), "opt": opt.state_dict(),
                        "step": step}, ckpt)
        raise SystemExit(143)
    if hold:
        hooks.heartbeat(step)
        time.sleep(0.02)
        continue
    opt.zero_grad()
    loss = torch.nn.functional.mse_loss(model(x), y)
    loss.backward()
    opt.step()
    step += 1
    hooks.log(step=step, total_steps=20, loss=loss.item())
print(f"rank {rank} finished at step {step}", flush=True)
hooks.result(loss=loss.item())
dist.destroy_process_group()
'''

HANG = '''\
import os, time
from pathlib import Path
from mlsm import hooks
shared = Path(os.environ["TEST_SHARED"])
with (shared / "launches").open("a") as fh:
    fh.write(f"{os.environ['MLSM_ITERATION']} {hooks.rank()} {hooks.resumed()}\\n")
for step in range(20):
    hooks.heartbeat(step)
    time.sleep(0.05)
while True:  # rank 1 stops beating (stuck, say, in a collective); rank 0 goes on
    if hooks.rank() != 1:
        hooks.heartbeat(step)
    time.sleep(0.05)
'''


def _setup(exp: Experiment, train: str) -> None:
    exp.write("IDEA.md", "Train a tiny model with DDP on two processes.")
    exp.write("train.py", train)


def _launches(exp: Experiment) -> list[str]:
    with contextlib.suppress(OSError):
        return (exp.shared / "launches").read_text().splitlines()
    return []


def _tagged(run_id: str) -> list[int]:
    """Live processes tagged with the run: shim, sandbox, torchrun agent and every rank."""
    found = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if proc.environ().get("MLSM_RUN_ID") == run_id \
                    and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc.pid)
    return found


def _torchrun(exp: Experiment, cmd: str, *args: str, **env: str) -> Mlsm:
    return exp.mlsm(cmd, "--launcher", "torchrun", "--nproc-per-node", "2", "--grace", "15",
                    *args, FAKE_NO_PRODUCT_ROLE="code", **env)


def test_ddp_on_two_ranks_from_idea_to_done(exp: Experiment) -> None:
    _setup(exp, DDP)
    proc = _torchrun(exp, "run", "--max-iterations", "2")
    status = exp.wait_state("done", "failed", timeout=240)
    assert proc.wait(30) == 0, proc.output()
    assert status["state"] == "done"
    assert [r["outcome"] for r in status["history"]] == ["ok", "ok"]
    assert sorted(_launches(exp)) == ["1 0 False", "1 1 False", "2 0 False", "2 1 False"]
    run_dir = exp.path / "logs" / "iter_002"
    steps = [json.loads(line)["step"] for line in
             (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 21))  # rank 0 alone writes: no row twice
    assert "rank 1 finished at step 20" in (run_dir / "rank_1" / "stdout.log").read_text()
    assert "rank 0 finished at step 20" in (run_dir / "rank_0" / "stdout.log").read_text()
    assert "rank 0 finished" in (run_dir / "stdout.log").read_text()
    assert "rank 1 finished" not in (run_dir / "stdout.log").read_text()
    assert json.loads((run_dir / "heartbeat.rank_1.json").read_text())["world"] == 2
    assert (run_dir / "result.json").exists()
    assert json.loads((run_dir / "exit.json").read_text())["returncode"] == 0


def test_stop_reaches_every_rank_and_resume_continues_from_the_checkpoint(
        exp: Experiment) -> None:
    _setup(exp, DDP)
    (exp.shared / "hold").write_text("")
    daemon = _torchrun(exp, "watch", "--max-iterations", "1")
    run_dir = exp.path / "logs" / "iter_001"
    wait_for(lambda: {r: b.get("step") for r, b in rundir.read_heartbeats(run_dir).items()}
             == {0: 5, 1: 5}, 180, "both ranks holding at step 5")
    run_id = exp.status()["training"]["run_id"]
    assert len(_tagged(run_id)) >= 4  # shim, torchrun agent, two ranks (and the sandbox)
    exp.write("STOP", "")
    exp.wait_state("stopped", timeout=60)
    assert _tagged(run_id) == []  # the agent and every worker: none left to restart ranks
    assert (run_dir / "checkpoints" / "ddp.pt").exists()
    (exp.shared / "hold").unlink()
    (exp.path / "STOP").unlink()
    status = exp.wait_state("done", "failed", timeout=240)
    assert sorted(_launches(exp)) == ["1 0 False", "1 0 True", "1 1 False", "1 1 True"]
    row = status["history"][0]
    assert (row["outcome"], row["resumed"]) == ("ok", True), row
    first = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])
    assert first["step"] == 6  # continued from the checkpoint of step 5
    assert (run_dir / "attempt_1" / "rank_1" / "stdout.log").exists()
    daemon.signal(signal.SIGTERM)


def test_a_hung_rank_is_killed_with_its_siblings_and_named(exp: Experiment) -> None:
    _setup(exp, HANG)
    _torchrun(exp, "watch", "--max-iterations", "1", "--heartbeat-timeout", "3",
              "--grace", "2")
    run_dir = exp.path / "logs" / "iter_001"
    wait_for(lambda: set(rundir.read_heartbeats(run_dir)) == {0, 1}, 180, "both ranks beat")
    run_id = exp.status()["training"]["run_id"]
    status = exp.wait_state("done", "failed", timeout=120)
    row = status["history"][0]
    assert row["reason"] == "stale_heartbeat"
    assert row["detail"].startswith("rank 1 went silent first: no heartbeat for"), row
    assert _tagged(run_id) == []
    record = json.loads((run_dir / "exit.json").read_text())
    assert record["detail"].startswith("rank 1 went silent first")


def test_kill_9_of_the_daemon_reattaches_and_never_launches_twice(exp: Experiment) -> None:
    _setup(exp, DDP)
    (exp.shared / "hold").write_text("")
    first = _torchrun(exp, "watch", "--max-iterations", "1")
    run_dir = exp.path / "logs" / "iter_001"
    wait_for(lambda: len(rundir.read_heartbeats(run_dir)) == 2, 180, "both ranks running")
    first.kill()  # SIGKILL: no shutdown, the training lives on
    run_id = exp.status()["training"]["run_id"]
    assert len(_tagged(run_id)) >= 4
    second = _torchrun(exp, "watch", "--max-iterations", "1")
    wait_for(lambda: any(e.get("event") == "training_reattached" for e in exp.events()), 60,
             "the new daemon to re-attach")
    (exp.shared / "hold").unlink()
    status = exp.wait_state("done", "failed", timeout=180)
    assert sorted(_launches(exp)) == ["1 0 False", "1 1 False"]  # 0 duplicated launches
    assert [r["outcome"] for r in status["history"]] == ["ok"]
    assert _tagged(run_id) == []
    second.signal(signal.SIGTERM)


def test_the_command_wraps_the_training_and_honours_torchrun_args() -> None:
    from mlsm.handlers.launchers import torchrun
    from mlsm.machine.core.config import Config

    cmd = torchrun.command(["/usr/bin/python3", "train.py"], Config(), "0,1")
    assert cmd[:3] == ["/usr/bin/python3", "-m", "torch.distributed.run"]
    assert "--nproc-per-node=2" in cmd and "--max-restarts=0" in cmd and "--standalone" in cmd
    assert cmd[-4:] == ["mlsm.hooks.ranklogs", "--", "/usr/bin/python3", "train.py"]
    multi = torchrun.command(["python", "train.py"], Config(
        nproc_per_node=4, torchrun_args="--nnodes 2 --rdzv-endpoint h:29400 --max_restarts 3"),
        None)
    assert "--nproc-per-node=4" in multi and "--standalone" not in multi
    assert "--max-restarts=0" not in multi and "--max_restarts" in multi
