"""Rank-aware hooks, per-rank heartbeats and logs, and the in-training checkpoint API."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mlsm.handlers.sentinel import HeartbeatWatch
from mlsm.hooks import ranklogs, rundir

LOGGING = """
from mlsm import hooks
cfg = hooks.params(lr=hooks.loguniform(1e-4, 1e-1, default=1e-3))
for step in range(50):
    hooks.log(step=step, total_steps=50, loss=1.0 / (step + 1))
    hooks.log(step=step, n=step)  # an int: the Python path on either side
hooks.heartbeat(49)
hooks.result(loss=0.02)
print("rank", hooks.rank(), "done")
"""


def run(code: str, run_dir: Path | None, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items()
            if not k.startswith("MLSM_") and k not in ("RANK", "WORLD_SIZE")}
    if run_dir is not None:
        base["MLSM_RUN_DIR"] = str(run_dir)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env={**base, **env},
                          capture_output=True, text=True, timeout=60, cwd=run_dir or Path.cwd())


@pytest.mark.parametrize("compiled", ["0", "1"])
def test_only_rank_0_writes_metrics_params_and_the_result(tmp_path: Path, compiled: str) -> None:
    for rank in ("1", "0"):
        done = run(LOGGING, tmp_path, RANK=rank, WORLD_SIZE="2", MLSM_HOOKS_COMPILED=compiled,
                   MLSM_HEARTBEAT_INTERVAL="0")
        assert done.returncode == 0, done.stderr
        if rank == "1":  # both paths: rank 1 beats in its own file, and writes nothing else
            assert sorted(p.name for p in tmp_path.iterdir()) == ["heartbeat.rank_1.json"]
            assert "mlsm-result" not in done.stdout
    beat = rundir.read_heartbeat(tmp_path, 1)
    assert beat is not None and (beat["rank"], beat["world"], beat["step"]) == (1, 2, 49)
    lead = rundir.read_heartbeat(tmp_path)
    assert lead is not None and (lead["rank"], lead["world"]) == (0, 2)
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 100
    assert (tmp_path / "result.json").exists() and (tmp_path / "space.json").exists()
    assert set(rundir.read_heartbeats(tmp_path)) == {0, 1}


def test_a_single_process_beats_as_before(tmp_path: Path) -> None:
    done = run("from mlsm import hooks; hooks.heartbeat(3)", tmp_path)
    assert done.returncode == 0, done.stderr
    beat = json.loads((tmp_path / "heartbeat.json").read_text())
    assert "rank" not in beat and "world" not in beat
    assert rundir.read_heartbeats(tmp_path) == {0: rundir.read_heartbeat(tmp_path)}


def test_a_bad_rank_is_told_once_and_counts_as_rank_0(tmp_path: Path) -> None:
    done = run("from mlsm import hooks; print(hooks.rank())", tmp_path, RANK="x")
    assert done.stdout.strip() == "0" and "ignoring RANK='x'" in done.stderr


def test_rank_files_are_found_and_odd_names_are_not(tmp_path: Path) -> None:
    for name in ("heartbeat.rank_2.json", "heartbeat.rank_0.json", "heartbeat.rank_x.json",
                 "rank_1", "rank_12", "ranked"):
        (tmp_path / name).mkdir() if name.startswith("rank") else (tmp_path / name).write_text(
            '{"seq": 1}')
    assert [p.name for p in rundir.rank_files(tmp_path)] == [
        "heartbeat.rank_2.json", "rank_1", "rank_12"]
    assert set(rundir.read_heartbeats(tmp_path)) == {2}


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_watch_names_the_rank_that_went_silent_first() -> None:
    clock = Clock()
    watch = HeartbeatWatch(10.0, 30.0, 60.0, 0.0, clock)
    for t in range(0, 40):
        clock.now = float(t)
        beats = {0: {"seq": t, "world": 3}, 2: {"seq": t}}
        if t < 12:
            beats[1] = {"seq": t}  # rank 1 stops at 11 s; ranks 0 and 2 go on
        verdict = watch.observe_ranks(beats, 0)
        if verdict is not None:
            break
    assert verdict is not None and verdict.reason == "stale_heartbeat"
    assert clock.now == 22.0 and verdict.detail.startswith("rank 1 went silent first")


def test_a_rank_the_world_names_but_that_never_beat_is_judged_from_the_start() -> None:
    clock = Clock()
    watch = HeartbeatWatch(10.0, 30.0, 60.0, 0.0, clock)
    verdict = None
    for t in range(0, 40):
        clock.now = float(t)
        verdict = watch.observe_ranks({0: {"seq": t, "world": 2}}, 0)
        if verdict is not None:
            break
    assert verdict is not None and clock.now == 31.0 and "rank 1" in verdict.detail


def test_one_process_keeps_its_old_wording() -> None:
    clock = Clock()
    watch = HeartbeatWatch(5.0, 30.0, 60.0, 0.0, clock)
    assert watch.observe({"seq": 1}, 0) is None
    clock.now = 6.0
    verdict = watch.observe({"seq": 1}, 0)
    assert verdict is not None and verdict.detail == "no heartbeat for 6.0s (limit 5s)"


def test_ranklogs_puts_rank_k_output_in_its_folder_and_links_rank_0s(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLSM_RUN_DIR", raising=False)  # main() below must redirect nothing
    (tmp_path / "stdout.log").write_text("agent line\n")
    (tmp_path / "stderr.log").write_text("")
    code = "import sys; print('out', flush=True); print('err', file=sys.stderr)"
    for rank in ("0", "1"):
        with (tmp_path / "stdout.log").open("a") as out:
            subprocess.run([sys.executable, "-P", "-m", "mlsm.hooks.ranklogs", "--",
                            sys.executable, "-c", code], stdout=out, check=True,
                           env={**os.environ, "MLSM_RUN_DIR": str(tmp_path), "RANK": rank})
    assert (tmp_path / "rank_1" / "stdout.log").read_text() == "out\n"
    assert (tmp_path / "rank_1" / "stderr.log").read_text() == "err\n"
    assert (tmp_path / "rank_0" / "stdout.log").read_text() == "agent line\nout\n"
    assert (tmp_path / "rank_0" / "stdout.log").samefile(tmp_path / "stdout.log")
    assert ranklogs.main(["--", "/nonexistent/cmd"]) == 127


# ----- checkpoints ---------------------------------------------------------------------------
CHECKPOINTING = """
import json, sys
from mlsm import hooks
print(hooks.resumed(), hooks.checkpoint_dir(), flush=True)
"""


def test_checkpoint_dir_is_stable_per_iteration_and_resumed_follows_the_daemon(
        tmp_path: Path) -> None:
    first = run(CHECKPOINTING, tmp_path)
    again = run(CHECKPOINTING, tmp_path, MLSM_RESUMED="1")
    assert first.stdout.split() == ["False", str(tmp_path / "checkpoints")]
    assert again.stdout.split() == ["True", str(tmp_path / "checkpoints")]
    assert (tmp_path / "checkpoints").is_dir()


def test_outside_mlsm_checkpoints_go_to_a_temporary_folder_removed_at_exit() -> None:
    done = run(CHECKPOINTING, None, MLSM_RESUMED="1")
    resumed, folder = done.stdout.split()
    assert resumed == "False" and "mlsm-checkpoints-" in folder and not Path(folder).exists()


def test_stop_requested_lets_the_training_save_even_through_repeated_sigterms(
        tmp_path: Path) -> None:
    code = """
        import os, signal, sys, time
        from mlsm import hooks
        assert not hooks.stop_requested()
        os.kill(os.getpid(), signal.SIGTERM)
        deadline = time.monotonic() + 10
        while not hooks.stop_requested() and time.monotonic() < deadline:
            time.sleep(0.001)
        os.kill(os.getpid(), signal.SIGTERM)  # torchrun's agent passes the stop on
        print("saved", flush=True)
        sys.exit(143)
    """
    done = run(code, tmp_path)
    assert done.stdout == "saved\n" and done.returncode == 143


def test_without_polling_sigterm_ends_the_training_as_before(tmp_path: Path) -> None:
    done = run("import os, signal\nfrom mlsm import hooks\n"
               "os.kill(os.getpid(), signal.SIGTERM)\nsignal.pause()\nprint('not reached')",
               tmp_path)
    assert done.returncode == -signal.SIGTERM and done.stdout == ""
