"""The `slurm` launcher: unit checks, then the launcher contract on a real loopback cluster.

The cluster tests skip with one line where the Slurm binaries are missing, unless
MLSM_REQUIRE_SLURM=1 (then they fail). Slurm's smallest time limit is a minute and its
controller checks limits every 30 s, so the TIMEOUT run starts first, in the background, with
`time = "1"` and its end moved to now (`scontrol update EndTime=now`: the limit is reached at
once, and the next check ends the job as TIMEOUT); its test (the last) collects it.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from helpers import Experiment, Mlsm, host_pids, wait_for
from slurm_cluster import LoopbackCluster, missing

from mlsm.handlers.launchers.base import Spec
from mlsm.handlers.launchers.slurm import (
    END_REASONS,
    Job,
    SlurmLauncher,
    SlurmRun,
    batch_script,
    parse_squeue,
    settle_exit,
)
from mlsm.handlers.training import shim_argv
from mlsm.hooks import rundir
from mlsm.machine.core import store
from mlsm.machine.core.config import Config, resolve
from mlsm.machine.core.errors import ConfigError
from mlsm.machine.core.status import Status, write_status

COUNTED_TRAIN = '''\
import os, time
from pathlib import Path
from mlsm import hooks
exp = Path(os.environ["MLSM_DIR"])
with (Path(os.environ["TEST_SHARED"]) / "launches.log").open("a") as fh:
    fh.write(f"{os.environ['MLSM_ITERATION']} {os.environ.get('SLURM_JOB_ID')} "
             f"{os.environ.get('SLURM_RESTART_COUNT', '0')} {os.getpid()}\\n")
if hooks.resumed():
    (Path(os.environ["TEST_SHARED"]) / "resumed.log").write_text(os.environ["SLURM_JOB_ID"])
while (exp / "hold_training").exists():
    hooks.heartbeat()
    time.sleep(0.02)
hooks.result(loss=1.0 / int(os.environ["MLSM_ITERATION"]))
'''
SILENT_TRAIN = COUNTED_TRAIN.replace("    hooks.heartbeat()\n", "") \
    .replace("while (exp", "hooks.heartbeat()\nwhile (exp")
TIMEOUT_TEST = "test_a_job_past_its_time_limit_comes_back_as_timeout"


# ----- unit checks (no cluster) ------------------------------------------------------------------
def test_slurm_table_in_mlsm_toml_and_flags(tmp_path: Path) -> None:
    (tmp_path / "mlsm.toml").write_text(
        'launcher = "slurm"\n[slurm]\npartition = "gpu"\ntime = "4:00:00"\ngres = "gpu:1"\n'
        'cpus-per-task = 8\nmem = "32G"\nextra = "--qos=high"\n')
    cfg = resolve(tmp_path, {"slurm_partition": "a100"}, {"MLSM_SLURM_MEM": "64G"})
    assert (cfg.launcher, cfg.slurm_partition, cfg.slurm_time, cfg.slurm_gres) == \
        ("slurm", "a100", "4:00:00", "gpu:1")
    assert (cfg.slurm_cpus_per_task, cfg.slurm_mem, cfg.slurm_extra) == (8, "64G", "--qos=high")
    assert cfg.sources["slurm_time"] == "file" and cfg.sources["slurm_partition"] == "flag"
    (tmp_path / "mlsm.toml").write_text('[slurm]\nqueue = "x"\n')
    with pytest.raises(ConfigError, match=r"unknown key 'queue' in \[slurm\] \(known: "
                                          r"partition, time"):
        resolve(tmp_path, {}, {})


def _spec(tmp_path: Path, cfg: Config) -> Spec:
    run_dir = tmp_path / "exp" / "logs" / "iter_001"
    return Spec(argv=shim_argv(run_dir, ["python", "train.py"]), cwd=tmp_path / "exp",
                env={}, stdout=run_dir / "stdout.log", stderr=run_dir / "stderr.log",
                handshake=True, experiment=tmp_path / "exp", config=cfg)


def test_batch_script_carries_the_settings_and_execs_the_shim(tmp_path: Path) -> None:
    cfg = Config(slurm_partition="gpu", slurm_time="1:00:00", slurm_gres="gpu:2",
                 slurm_cpus_per_task=4, slurm_mem="8G", slurm_account="ml")
    script = batch_script(_spec(tmp_path, cfg), cfg)
    for line in ("#SBATCH --partition=gpu", "#SBATCH --time=1:00:00", "#SBATCH --gres=gpu:2",
                 "#SBATCH --cpus-per-task=4", "#SBATCH --mem=8G", "#SBATCH --account=ml",
                 "#SBATCH --job-name=mlsm-exp-iter_001"):
        assert line in script.splitlines()
    last = script.splitlines()[-1]
    assert last.startswith("exec ") and last.endswith("-- python train.py <<< go")
    assert "srun" not in script and "--nodes" not in script
    two = Config(slurm_nodes=2)
    assert "-- srun --kill-on-bad-exit=1 python train.py <<< go" in \
        batch_script(_spec(tmp_path, two), two)
    assert "#SBATCH --nodes=2" in batch_script(_spec(tmp_path, two), two)


def test_a_setting_that_would_break_the_script_is_refused(tmp_path: Path) -> None:
    cfg = Config(slurm_partition="gpu\n#SBATCH --nodes=100")
    with pytest.raises(OSError, match="partition"):
        batch_script(_spec(tmp_path, cfg), cfg)


def test_squeue_lines_parse_and_exit_status_decodes() -> None:
    text = ("7|RUNNING|None|0|0|1:00|2026-01-01T00:00:00|2026-01-01T00:01:00|mlsm:r1:k|\n"
            "8|TIMEOUT|TimeLimit|0|36608|1:00|2026-01-01T00:00:00|x|mlsm:r2:k|\n"
            "9|CANCELLED|JobHeldUser|0|0|1:00|2026-01-01T00:00:00|x|a|b|\n"
            "10|FAILED|None|1|9|1:00|2026-01-01T00:00:00|x||\n")
    jobs = parse_squeue(text)
    assert jobs["7"].started and not jobs["7"].ended and jobs["7"].comment == "mlsm:r1:k"
    assert jobs["8"].ended and jobs["8"].returncode == -15  # the shim's 143: SIGTERM
    assert jobs["9"].returncode is None and jobs["9"].comment == "a|b"  # never ran
    assert jobs["10"].returncode == -9 and jobs["10"].restarts == 1


@pytest.mark.parametrize("state", sorted(END_REASONS))
def test_slurm_end_states_become_exit_reasons(tmp_path: Path, state: str) -> None:
    rundir.write_exit(tmp_path, rundir.exit_record(-15, 1.0, pid=42))
    job = Job("12", state, "Why", time_limit="1:00", exit_status=15, start="2026-01-01T00:00:00")
    record = settle_exit(tmp_path, "12", job)
    assert record["reason"] == state.lower() and record["slurm"]["state"] == state
    assert "job 12" in record["detail"] and record["signal"] == "SIGTERM"
    assert rundir.read_exit(tmp_path) == record


def test_mlsms_own_kill_reason_wins_over_slurms(tmp_path: Path) -> None:
    rundir.write_kill_note(tmp_path, "stale_heartbeat", "no heartbeat for 3s")
    rundir.write_exit(tmp_path, rundir.with_kill_note(rundir.exit_record(-15, 1.0), tmp_path))
    record = settle_exit(tmp_path, "3", Job("3", "CANCELLED", "None", exit_status=15))
    assert record["reason"] == "stale_heartbeat" and record["slurm"]["state"] == "CANCELLED"


def test_without_the_shims_exit_json_the_record_comes_from_squeue(tmp_path: Path) -> None:
    job = Job("5", "OUT_OF_MEMORY", "OutOfMemory", exit_status=9, start="2026-01-01T00:00:00")
    record = settle_exit(tmp_path, "5", job)
    assert (record["reason"], record["returncode"], record["signal"]) == \
        ("out_of_memory", -9, "SIGKILL")
    (tmp_path / "x").mkdir()
    forgotten = settle_exit(tmp_path / "x", "6", None)
    assert forgotten["reason"] == "lost" and "no longer lists job 6" in forgotten["detail"]


class FakeSlurm:
    """squeue answers from a script: counts calls; `down` makes every command fail."""

    def __init__(self, lines: str = "", down: bool = False) -> None:
        self.lines, self.down, self.calls = lines, down, 0

    def __call__(self, argv: Sequence[str],
                 env: Any = None) -> subprocess.CompletedProcess[str]:
        self.calls += 1
        if self.down:
            return subprocess.CompletedProcess(argv, 1, "", "squeue: error: Unable to contact "
                                                            "slurm controller (connect failure)")
        if not self.lines:
            return subprocess.CompletedProcess(argv, 1, "", "slurm_load_jobs error: Invalid job "
                                                            "id specified")
        return subprocess.CompletedProcess(argv, 0, self.lines, "")


def test_a_slurm_that_does_not_answer_is_not_a_dead_job(tmp_path: Path) -> None:
    handle = {"launcher": "slurm", "job_id": "7", "run_id": "r", "run_dir": str(tmp_path)}
    launcher = SlurmLauncher(FakeSlurm(down=True))
    assert launcher.alive(handle)  # unknown is not gone
    run = launcher.reattach(handle)
    assert isinstance(run, SlurmRun) and not run.wait(0.2)  # followed, never rerun
    assert launcher.kill(handle, 0.1).survivors == 1  # so the kill is tried again
    # A reaper that took squeue's exit status (0) with nothing said is still no answer.
    reaped = SlurmLauncher(lambda argv, env=None: subprocess.CompletedProcess(argv, 0, "", ""))
    assert reaped.alive(handle)
    forgotten = SlurmLauncher(FakeSlurm())
    assert not forgotten.alive(handle) and forgotten.reattach(handle) is None
    assert "no longer lists" in forgotten.why_gone(handle)


def test_one_squeue_answers_for_every_followed_job() -> None:
    lines = "".join(f"{i}|RUNNING|None|0|0|1:00|x|x|mlsm:r{i}:k|\n" for i in range(20))
    fake = FakeSlurm(lines)
    launcher = SlurmLauncher(fake)
    handles = [{"job_id": str(i), "tag": f"mlsm:r{i}:k"} for i in range(20)]
    assert all(launcher.alive(h) for h in handles)
    before = fake.calls
    assert all(launcher.alive(h) for h in handles * 5)
    assert fake.calls == before  # a second's cache: a hundred questions, no squeue
    assert not launcher.alive({"job_id": "3", "tag": "mlsm:other:k"})  # a reused id


# ----- the loopback cluster ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoopbackCluster]:
    """One loopback cluster for this module; skipped (or failed) where Slurm is missing."""
    reason = missing()
    if reason:
        if os.environ.get("MLSM_REQUIRE_SLURM") == "1":
            pytest.fail(f"MLSM_REQUIRE_SLURM=1 but {reason}")
        pytest.skip(reason)
    cluster = LoopbackCluster(tmp_path_factory.mktemp("slurm"))
    cluster.start()
    before = os.environ.get("SLURM_CONF")
    os.environ.update(cluster.env)  # this process's own Slurm calls go to the loopback cluster
    yield cluster
    cluster.stop()
    if before is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = before


def _mlsm(exp: Experiment, cluster: LoopbackCluster, cmd: str, *args: str,
          **env: str) -> Mlsm:
    return exp.mlsm(cmd, "--launcher", "slurm", *args, **cluster.env, **env)


def _launches(exp: Experiment | Path) -> list[tuple[str, str, str, int]]:
    """(iteration, job id, restart count, pid) of every training start, in order."""
    path = (exp.shared if isinstance(exp, Experiment) else exp) / "launches.log"
    try:
        rows = [line.split() for line in path.read_text().splitlines()]
    except OSError:
        return []
    return [(r[0], r[1], r[2], int(r[3])) for r in rows if len(r) == 4]


def _jobs(cluster: LoopbackCluster, path: Path, states: str | None = "all") -> list[Job]:
    return SlurmLauncher().jobs_of(path.resolve(), states)


def _live(cluster: LoopbackCluster, path: Path) -> list[Job]:
    return [j for j in _jobs(cluster, path, None) if not j.ended]


@pytest.fixture
def sexp(exp: Experiment, slurm: LoopbackCluster) -> Iterator[Experiment]:
    """An experiment on the loopback cluster; its jobs are cancelled at teardown."""
    yield exp
    for job in _live(slurm, exp.path):
        slurm.client(["scancel", job.job_id])


def test_idea_to_done_runs_each_iteration_as_one_job(sexp: Experiment,
                                                     slurm: LoopbackCluster) -> None:
    sexp.write("IDEA.md", "x")
    run = _mlsm(sexp, slurm, "run", "--max-iterations", "2", FAKE_TRAIN_BODY=COUNTED_TRAIN)
    assert run.wait(60) == 0, run.output()
    status = sexp.status()
    assert [r["outcome"] for r in status["history"]] == ["ok", "ok"]
    launches = _launches(sexp)
    assert [it for it, *_ in launches] == ["1", "2"] and launches[0][1] != launches[1][1]
    for it, job_id, _, _ in launches:
        record = json.loads((sexp.path / "logs" / f"iter_00{it}" / "exit.json").read_text())
        assert record["slurm"]["job_id"] == job_id and record["slurm"]["state"] == "COMPLETED"
        assert record["returncode"] == 0 and record["reason"] == "exited"
    assert sorted(j.job_id for j in _jobs(slurm, sexp.path)) == sorted(j for _, j, _, _ in
                                                                       launches)
    script = (sexp.path / "logs" / "iter_001" / "job.sh").read_text()
    assert "exec " in script and "mlsm.hooks.shim" in script


def test_stop_cancels_the_job_and_resume_runs_it_again(sexp: Experiment,
                                                       slurm: LoopbackCluster) -> None:
    sexp.write("IDEA.md", "x")
    sexp.write("hold_training", "")
    daemon = _mlsm(sexp, slurm, "watch", "--max-iterations", "1",
                   FAKE_TRAIN_BODY=COUNTED_TRAIN)
    wait_for(lambda: _launches(sexp), 30, "the training job to run")
    (sexp.path / "STOP").touch()
    sexp.wait_state("stopped")
    wait_for(lambda: not _live(slurm, sexp.path), 10, "the job gone from squeue")
    wait_for(lambda: not host_pids(sexp.path, [_launches(sexp)[0][3]]), 10,
             "the training process gone")
    first = json.loads((sexp.path / "logs" / "iter_001" / "exit.json").read_text())
    assert first["reason"] == "stopped"
    (sexp.path / "hold_training").unlink()
    (sexp.path / "STOP").unlink()
    sexp.wait_state("done", timeout=30)
    launches = _launches(sexp)
    assert [it for it, *_ in launches] == ["1", "1"] and launches[0][1] != launches[1][1]
    assert (sexp.path / "logs" / "iter_001" / "attempt_1" / "exit.json").is_file()
    assert sexp.status()["history"][0]["outcome"] == "ok"
    daemon.kill()


@pytest.mark.parametrize("sandbox", ["auto", "none"])
def test_a_stale_heartbeat_kills_the_job(sexp: Experiment, slurm: LoopbackCluster,
                                         sandbox: str) -> None:
    sexp.write("IDEA.md", "x")
    sexp.write("hold_training", "")
    run = _mlsm(sexp, slurm, "run", "--max-iterations", "1", "--heartbeat-timeout", "1",
                "--sandbox", sandbox, FAKE_TRAIN_BODY=SILENT_TRAIN)
    assert run.wait(60) == 7, run.output()  # done, with no result
    row = sexp.status()["history"][0]
    assert row["outcome"] == "failed" and row["reason"] == "stale_heartbeat"
    assert not _live(slurm, sexp.path)
    assert not host_pids(sexp.path, [_launches(sexp)[0][3]])
    if sandbox == "none":  # SIGUSR1 reached it first: a stack dump for the agent
        stderr = (sexp.path / "logs" / "iter_001" / "stderr.log").read_text()
        assert "most recent call first" in stderr


def _kill_daemon_mid_training(sexp: Experiment, slurm: LoopbackCluster) -> str:
    sexp.write("IDEA.md", "x")
    sexp.write("hold_training", "")
    daemon = _mlsm(sexp, slurm, "watch", "--max-iterations", "1",
                   FAKE_TRAIN_BODY=COUNTED_TRAIN)
    wait_for(lambda: _launches(sexp), 30, "the training job to run")
    daemon.proc.kill()  # kill -9: no cleanup at all
    daemon.wait()
    return _launches(sexp)[0][1]


def test_a_killed_daemon_reattaches_to_its_job(sexp: Experiment,
                                              slurm: LoopbackCluster) -> None:
    job_id = _kill_daemon_mid_training(sexp, slurm)
    assert [j.job_id for j in _live(slurm, sexp.path)] == [job_id]
    second = _mlsm(sexp, slurm, "watch", "--max-iterations", "1",
                   FAKE_TRAIN_BODY=COUNTED_TRAIN)
    wait_for(lambda: "training_reattached" in sexp.runner_log(), 30, "re-attach")
    assert sexp.status()["training"]["job_id"] == job_id
    (sexp.path / "hold_training").unlink()
    sexp.wait_state("done", timeout=30)
    assert [(it, j) for it, j, _, _ in _launches(sexp)] == [("1", job_id)]
    assert [j.job_id for j in _jobs(slurm, sexp.path)] == [job_id]  # submitted once
    second.kill()


def test_a_job_that_ended_while_no_daemon_watched_is_picked_up(
        sexp: Experiment, slurm: LoopbackCluster) -> None:
    job_id = _kill_daemon_mid_training(sexp, slurm)
    (sexp.path / "hold_training").unlink()
    wait_for(lambda: not _live(slurm, sexp.path), 20, "the job to end on its own")
    run = _mlsm(sexp, slurm, "run", "--max-iterations", "1", FAKE_TRAIN_BODY=COUNTED_TRAIN)
    assert run.wait(60) == 0, run.output()
    assert [(it, j) for it, j, _, _ in _launches(sexp)] == [("1", job_id)]
    assert sexp.status()["history"][0]["outcome"] == "ok"


def _held_job(sexp: Experiment, slurm: LoopbackCluster) -> SlurmRun:
    """What a daemon killed right after `sbatch --hold` leaves: a held job for iteration 1."""
    sexp.write("IDEA.md", "x")
    sexp.write("PLAN.md", "# plan\n")
    sexp.write("train.py", COUNTED_TRAIN)
    root = sexp.path.resolve()
    run_dir = root / "logs" / "iter_001"
    run_dir.mkdir(parents=True)
    run = SlurmLauncher().spawn(Spec(
        argv=shim_argv(run_dir, [sys.executable, "train.py"]), cwd=root,
        env={**sexp.env, **slurm.env, "MLSM_DIR": str(root), "MLSM_ITERATION": "1",
             "MLSM_RUN_DIR": str(run_dir)},
        stdout=run_dir / "stdout.log", stderr=run_dir / "stderr.log", handshake=True,
        experiment=root, config=Config()))
    return run


def _training_status(handle: dict[str, Any] | None) -> Status:
    return Status(max_iterations=1, state="training", iteration=1, started_at=store.now_iso(),
                  training=handle)


def test_a_held_job_that_was_never_persisted_is_cancelled_not_run(
        sexp: Experiment, slurm: LoopbackCluster) -> None:
    orphan = _held_job(sexp, slurm)
    strays = SlurmLauncher().strays(sexp.path.resolve(), keep=[])
    assert [s["job_id"] for s in strays] == [orphan.handle["job_id"]]  # `mlsm watchdog` sees it
    write_status(sexp.path, _training_status(None))
    run = _mlsm(sexp, slurm, "run", "--max-iterations", "1")
    assert run.wait(60) == 0, run.output()
    launches = _launches(sexp)
    assert len(launches) == 1 and launches[0][1] != orphan.handle["job_id"]
    states = {j.job_id: j.state for j in _jobs(slurm, sexp.path)}
    assert states == {orphan.handle["job_id"]: "CANCELLED", launches[0][1]: "COMPLETED"}


def test_a_persisted_job_left_held_is_released_on_restart(sexp: Experiment,
                                                         slurm: LoopbackCluster) -> None:
    held = _held_job(sexp, slurm)
    write_status(sexp.path, _training_status({**held.handle}))
    run = _mlsm(sexp, slurm, "run", "--max-iterations", "1")
    assert run.wait(60) == 0, run.output()
    assert "training_reattached" in sexp.runner_log()
    assert [(it, j) for it, j, _, _ in _launches(sexp)] == [("1", held.handle["job_id"])]
    assert sexp.status()["history"][0]["outcome"] == "ok"


def test_a_lost_release_is_sent_again(sexp: Experiment, slurm: LoopbackCluster) -> None:
    run = _held_job(sexp, slurm)
    run._released = True  # the daemon released it, but `scontrol release` never arrived
    run._release_tried -= 10
    assert wait_for(lambda: run.wait(0.1), 30, "the job to be released and to end")
    assert [it for it, *_ in _launches(sexp)] == ["1"]


def test_a_preempted_and_requeued_job_is_followed(sexp: Experiment,
                                                  slurm: LoopbackCluster) -> None:
    sexp.write("IDEA.md", "x")
    sexp.write("hold_training", "")
    # 6 of the node's 8 CPUs: an urgent job asking 3 must preempt it (the TIMEOUT run beside
    # it is in the urgent partition itself, so only this job can make room). The urgent job
    # keeps it queued 3 s, past --heartbeat-timeout: time in the queue must not count.
    daemon = _mlsm(sexp, slurm, "watch", "--max-iterations", "1", "--slurm-cpus-per-task", "6",
                   "--heartbeat-timeout", "2", FAKE_TRAIN_BODY=COUNTED_TRAIN)
    wait_for(lambda: _launches(sexp), 30, "the training job to run")
    job_id = _launches(sexp)[0][1]
    urgent = slurm.client(["sbatch", "--parsable", "--partition=urgent", "--cpus-per-task=3",
                           "--output=/dev/null", "--wrap=sleep 3"]).stdout.strip()
    assert urgent.isdigit()

    def requeued() -> bool:
        job = next((j for j in _jobs(slurm, sexp.path) if j.job_id == job_id), None)
        return job is not None and job.restarts == 1 and job.state == "PENDING"
    wait_for(requeued, 20, "the preempted job back in the queue")
    assert sexp.state() == "training"  # the daemon follows it; nothing ended
    wait_for(lambda: "COMPLETED" in slurm.client(
        ["squeue", "-h", "-t", "all", f"-j{urgent}", "-O", "State"]).stdout, 20, "urgent job")
    slurm.client(["scontrol", "update", f"jobid={job_id}", "StartTime=now"])  # skip the delay
    wait_for(lambda: len(_launches(sexp)) == 2, 30, "the requeued job to run again")
    (sexp.path / "hold_training").unlink()
    sexp.wait_state("done", timeout=30)
    assert [(it, j, r) for it, j, r, _ in _launches(sexp)] == [("1", job_id, "0"),
                                                               ("1", job_id, "1")]
    run_dir = sexp.path / "logs" / "iter_001"
    record = json.loads((run_dir / "exit.json").read_text())
    assert record["returncode"] == 0 and record["slurm"]["restarts"] == 1
    preempted = json.loads((run_dir / "requeue_1" / "exit.json").read_text())
    # SIGTERM: -15, or 143 when the sandbox's bwrap passes its child's death on as a code.
    assert preempted["returncode"] in (-15, 143), json.dumps(preempted)
    assert "DUE TO PREEMPTION" in (run_dir / "stderr.log").read_text()
    assert "training_killed" not in sexp.runner_log()
    assert (sexp.shared / "resumed.log").read_text() == job_id  # hooks.resumed() after requeue
    daemon.kill()


def test_several_nodes_run_the_training_through_srun(tmp_path: Path,
                                                    slurm: LoopbackCluster) -> None:
    run_dir = tmp_path / "logs" / "iter_001"
    run_dir.mkdir(parents=True)
    show = "import os; e = os.environ; print('task', e['SLURM_PROCID'], 'step', e['SLURM_STEP_ID'])"
    # Two nodes ask for srun; `--nodes=1` on the command line fits it on the one node here.
    cfg = Config(slurm_nodes=2, slurm_extra="--nodes=1")
    run = SlurmLauncher().spawn(Spec(
        argv=shim_argv(run_dir, [sys.executable, "-c", show]), cwd=tmp_path,
        env=dict(os.environ), stdout=run_dir / "stdout.log", stderr=run_dir / "stderr.log",
        handshake=True, experiment=tmp_path, config=cfg))
    run.release()
    assert run.wait(30) and run.returncode == 0
    assert (run_dir / "stdout.log").read_text().split() == ["task", "0", "step", "0"]
    record = rundir.read_exit(run_dir)
    assert record is not None and record["slurm"]["state"] == "COMPLETED"


def test_daemon_killed_at_random_points_never_submits_twice(
        sexp: Experiment, slurm: LoopbackCluster) -> None:
    rng = random.Random(11)
    sexp.write("IDEA.md", "x")
    args = ("--max-iterations", "2")
    kills = 0
    for _ in range(5):
        target = len(sexp.events()) + rng.randint(1, 12)
        run = _mlsm(sexp, slurm, "run", *args, FAKE_TRAIN_BODY=COUNTED_TRAIN)

        def progressed(target: int = target, run: Mlsm = run) -> bool:
            return len(sexp.events()) >= target or run.proc.poll() is not None
        wait_for(progressed, 30, "journal progress")
        if run.proc.poll() is not None:
            break
        run.proc.kill()
        run.wait()
        kills += 1
    final = _mlsm(sexp, slurm, "run", *args, FAKE_TRAIN_BODY=COUNTED_TRAIN)
    assert final.wait(60) == 0, final.output()
    assert [r["iteration"] for r in sexp.status()["history"]] == [1, 2]
    assert Counter(it for it, *_ in _launches(sexp)) == Counter({"1": 1, "2": 1})
    ran = {j for _, j, _, _ in _launches(sexp)}
    never_ran = [j for j in _jobs(slurm, sexp.path) if j.job_id not in ran]
    assert all(j.state == "CANCELLED" and j.returncode is None for j in never_ran)
    assert kills > 0


# ----- TIMEOUT: a minute at least, so it runs beside the tests above --------------------------
@pytest.fixture(scope="module", autouse=True)
def timeout_run(request: pytest.FixtureRequest,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mlsm | None]:
    """Start the TIMEOUT experiment first (when its test is selected), with `time = "1"`."""
    if missing() or not any(item.name == TIMEOUT_TEST for item in request.session.items):
        yield None
        return
    cluster: LoopbackCluster = request.getfixturevalue("slurm")
    path = tmp_path_factory.mktemp("timeout") / "exp"
    path.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLSM_", "FAKE_"))}
    exp = Experiment(path, env, [])
    exp.write("IDEA.md", "x")
    exp.write("hold_training", "")  # never removed: only the time limit ends it
    exp.write("mlsm.toml", '[slurm]\ntime = "1"\npartition = "urgent"\n')
    run = _mlsm(exp, cluster, "run", "--max-iterations", "1", FAKE_TRAIN_BODY=COUNTED_TRAIN)
    job_id = wait_for(lambda: _launches(exp) and _launches(exp)[0][1], 30, "the job to run")
    cluster.client(["scontrol", "update", f"jobid={job_id}", "EndTime=now"])
    yield run
    run.kill()
    for job in _live(cluster, path):
        cluster.client(["scancel", job.job_id])


def test_a_job_past_its_time_limit_comes_back_as_timeout(timeout_run: Mlsm | None,
                                                         slurm: LoopbackCluster) -> None:
    assert timeout_run is not None
    assert timeout_run.wait(60) == 7, timeout_run.output()  # done, no result
    exp_dir = timeout_run.out.parent / "exp"
    row = json.loads((exp_dir / "status.json").read_text())["history"][0]
    assert row["outcome"] == "failed" and row["reason"] == "timeout"
    record = json.loads((exp_dir / "logs" / "iter_001" / "exit.json").read_text())
    assert record["reason"] == "timeout" and record["slurm"]["state"] == "TIMEOUT"
    assert "time limit (1:00)" in record["detail"]
    assert "DUE TO TIME LIMIT" in (exp_dir / "logs" / "iter_001" / "stderr.log").read_text()
