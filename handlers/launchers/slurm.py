"""The `slurm` launcher: each training is a batch job, submitted held and released once persisted.

The handshake: `sbatch --hold` submits the job with a comment that names its run and experiment;
the daemon persists the job id, then `scontrol release` lets it run. A daemon killed in between
leaves a held job that never ran; the next spawn for that experiment finds it by its comment and
cancels it, and a re-attach to a persisted job that is still held releases it. So a crash never
runs a training twice and never loses one.

Liveness comes from `squeue` alone (never sacct: many sites run without accounting), one call
for every followed job at most once a second. When a job ends, Slurm's end state (TIMEOUT,
OUT_OF_MEMORY, NODE_FAIL, PREEMPTED, CANCELLED) goes into exit.json as the reason the agent reads;
if the shim could not write exit.json, the record is built from what squeue still knows.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import re
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from mlsm.handlers.launchers.base import Handle, KillReport, Spec
from mlsm.handlers.launchers.local import EXPERIMENT_VAR, RUN_ID_VAR, new_run_id
from mlsm.hooks import rundir
from mlsm.machine.core.config import Config
from mlsm.machine.core.store import now_iso

CACHE_S = 1.0  # a job's state is at most this old; one squeue answers for every followed job
FAST_CACHE_S = 0.1  # ... right after exit.json appeared, so the end is seen at once
COMMAND_TIMEOUT_S = 30.0  # a Slurm command slower than this counts as "Slurm does not answer"
FORGET_S = 120.0  # a job nobody asked about for this long leaves the squeue batch
RELEASE_RETRY_S = 5.0  # a held job we released but which is still held: release again
SETTLE_S = 5.0  # how long a kill waits for the job to leave squeue after SIGKILL
SCRIPT = "job.sh"  # the generated batch script, kept in the run folder for people to read
FIELDS = ("JobID", "State", "Reason", "RestartCnt", "exit_code", "TimeLimit", "StartTime",
          "EndTime", "Comment")  # Comment last: it is ours, but may hold anything

TERMINAL = frozenset({"COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "PREEMPTED",
                      "BOOT_FAIL", "DEADLINE", "OUT_OF_MEMORY", "SPECIAL_EXIT", "REVOKED"})
"""Base states of a job that has ended (a requeued job is PENDING again, not ended)."""
STARTED = frozenset({"RUNNING", "COMPLETING", "SIGNALING", "STAGE_OUT", "RESIZING"})
"""A job whose batch script runs (or has just ended); every other live state is queued."""
END_REASONS = {
    "TIMEOUT": "Slurm ended job {job} at its time limit ({limit}); raise `time` in [slurm] "
               "(--slurm-time) or make the run shorter",
    "OUT_OF_MEMORY": "job {job} ran out of memory and Slurm killed it; raise `mem` in [slurm] "
                     "(--slurm-mem) or use less memory",
    "NODE_FAIL": "the node running job {job} failed and Slurm did not requeue it",
    "PREEMPTED": "Slurm preempted job {job} for another job and did not requeue it",
    "CANCELLED": "job {job} was cancelled outside mlsm (scancel, an administrator or a limit)",
    "BOOT_FAIL": "the node for job {job} failed to boot",
    "DEADLINE": "job {job} could not run before its deadline",
}
"""Slurm end states that become exit.json reasons (lower-cased), with the sentence to read."""

Runner = Callable[[Sequence[str], Mapping[str, str] | None], "subprocess.CompletedProcess[str]"]


class SlurmUnreachable(OSError):
    """A Slurm command failed or timed out: the job's state is unknown, not gone."""


def run_command(argv: Sequence[str],
                env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run one Slurm client command; SlurmUnreachable when it is missing or hangs."""
    try:
        return subprocess.run(list(argv), capture_output=True, text=True, env=env,
                              stdin=subprocess.DEVNULL, timeout=COMMAND_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise SlurmUnreachable(f"{argv[0]} did not answer within {COMMAND_TIMEOUT_S:g} s") \
            from None
    except OSError as exc:
        raise SlurmUnreachable(f"cannot run {argv[0]}: {exc.strerror or exc}") from None


# ----- what squeue says about a job --------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Job:
    """One line of squeue: a job's state as the controller knows it."""

    job_id: str
    state: str
    reason: str = ""
    restarts: int = 0
    exit_status: int | None = None  # the raw wait status of the batch script
    time_limit: str = ""
    start: str = ""
    end: str = ""
    comment: str = ""

    @property
    def ended(self) -> bool:
        return self.state in TERMINAL

    @property
    def started(self) -> bool:
        return self.state in STARTED or self.ended

    @property
    def held(self) -> bool:
        """Held and never started: how `sbatch --hold` leaves it until `scontrol release`."""
        return self.state == "PENDING" and self.reason == "JobHeldUser" and self.restarts == 0

    @property
    def returncode(self) -> int | None:
        """The batch script's exit code, negative for a signal (the shim's 128+N too)."""
        status = self.exit_status
        if status is None or self.start in ("", "N/A", "Unknown") \
                or (self.state == "CANCELLED" and status == 0):
            return None  # never ran (a batch script that ends on its own is not CANCELLED)
        if status & 0x7F:
            return -(status & 0x7F)
        code = status >> 8
        return 128 - code if 128 < code < 160 else code


def _int(text: str) -> int | None:
    return int(text) if text.strip().isdigit() else None


def parse_squeue(text: str) -> dict[str, Job]:
    """Jobs by id from `squeue -O` lines whose fields end with '|' (see FIELDS)."""
    jobs: dict[str, Job] = {}
    for line in text.splitlines():
        cells = line.split("|", len(FIELDS) - 1)
        if len(cells) != len(FIELDS) or not cells[0].strip():
            continue
        job_id, state, reason, restarts, status, limit, start, end, comment = \
            (c.strip() for c in cells)
        jobs[job_id] = Job(job_id, state.split()[0] if state else "", reason,
                           _int(restarts) or 0, _int(status), limit, start, end,
                           comment[:-1] if comment.endswith("|") else comment)
    return jobs


class Board:
    """Every job the daemon follows, refreshed by one squeue at most once per `CACHE_S`."""

    def __init__(self, run: Runner) -> None:
        self._run = run
        self._lock = threading.Lock()  # one squeue at a time; the others use its answer
        self._jobs: dict[str, Job | None] = {}
        self._asked: dict[str, float] = {}
        self._at = float("-inf")

    def get(self, job_id: str, max_age: float = CACHE_S) -> Job | None:
        """The job, or None when Slurm does not know it; SlurmUnreachable when it cannot say."""
        with self._lock:
            now = time.monotonic()
            self._asked[job_id] = now
            if job_id not in self._jobs or now - self._at > max_age:
                self._refresh(now)
            return self._jobs.get(job_id)

    def _refresh(self, now: float) -> None:
        ids = sorted(j for j, t in self._asked.items() if now - t < FORGET_S)
        self._asked = {j: self._asked[j] for j in ids}
        fmt = ",".join(f"{f}:|" for f in FIELDS)
        done = self._run(["squeue", "--noheader", "--states=all", "--jobs=" + ",".join(ids),
                          "--Format=" + fmt], None)
        listed = parse_squeue(done.stdout)
        # Every id unknown: squeue says so and fails. Nothing listed and no such message:
        # Slurm did not answer (an exit status is not trusted; a reaper may have taken it).
        if not listed and "Invalid job id" not in done.stderr:
            raise SlurmUnreachable(f"squeue failed: {done.stderr.strip() or 'no answer'}")
        self._jobs = {j: listed.get(j) for j in ids}
        self._at = time.monotonic()

    def forget(self, job_id: str) -> None:
        with self._lock:
            self._asked.pop(job_id, None)
            self._jobs.pop(job_id, None)


# ----- the batch script ---------------------------------------------------------------------------
TEMPLATE = """\
#!/bin/bash
{sbatch}
# Written by mlsm for {run_dir}
# Submitted held; mlsm releases it once the job id is persisted in status.json.
run_dir={run_dir_q}
if [ "${{SLURM_RESTART_COUNT:-0}}" -gt 0 ]; then
  # Requeued (preemption, node failure): the earlier run's records move aside, and the
  # training is told it resumes.
  aside="$run_dir/requeue_$SLURM_RESTART_COUNT"
  mkdir -p "$aside" && mv -f "$run_dir/{exit}" "$run_dir/{heartbeat}" "$aside/" 2>/dev/null
  echo "mlsm: job $SLURM_JOB_ID was requeued; run $SLURM_RESTART_COUNT starts" >&2
  export MLSM_RESUMED=1  # hooks.resumed(): continue from hooks.checkpoint_dir()
fi
cd {cwd_q} || exit 1
exec {argv} <<< go
"""


def sbatch_options(cfg: Config) -> list[str]:
    """The `#SBATCH` options the settings ask for (partition, time, gres, …)."""
    pairs: list[tuple[str, object]] = [
        ("partition", cfg.slurm_partition), ("time", cfg.slurm_time), ("gres", cfg.slurm_gres),
        ("account", cfg.slurm_account), ("cpus-per-task", cfg.slurm_cpus_per_task),
        ("mem", cfg.slurm_mem), ("nodes", cfg.slurm_nodes if cfg.slurm_nodes > 1 else None)]
    out = []
    for name, value in pairs:
        if value is None or value == "":
            continue
        text = str(value)
        if not re.fullmatch(r"[^\s'\"\\]+", text):
            raise OSError(f"the Slurm setting {name} = {text!r} has spaces or quotes")
        out.append(f"--{name}={text}")
    return out


def job_argv(argv: Sequence[str], cfg: Config) -> list[str]:
    """The command the script execs; on several nodes the training runs through srun."""
    out = list(argv)
    if cfg.slurm_nodes > 1:
        at = out.index("--") + 1 if "--" in out else 0
        out[at:at] = ["srun", "--kill-on-bad-exit=1"]
    return out


def batch_script(spec: Spec, cfg: Config) -> str:
    """The batch script: `#SBATCH` lines from the settings, then `exec` of the shim."""
    run_dir = spec.stdout.parent
    lines = [f"#SBATCH --job-name={job_name(spec)}"]
    lines += [f"#SBATCH {opt}" for opt in sbatch_options(cfg)]
    return TEMPLATE.format(sbatch="\n".join(lines), run_dir=run_dir,
                           run_dir_q=shlex.quote(str(run_dir)), exit=rundir.EXIT,
                           heartbeat=rundir.HEARTBEAT, cwd_q=shlex.quote(str(spec.cwd)),
                           argv=shlex.join(job_argv(spec.argv, cfg)))


def job_name(spec: Spec) -> str:
    exp = (spec.experiment or spec.cwd).name
    return re.sub(r"[^A-Za-z0-9._-]", "_", f"mlsm-{exp}-{spec.stdout.parent.name}")[:100]


def experiment_key(experiment: Path) -> str:
    """A short fixed name for an experiment directory, carried in its jobs' comments."""
    return hashlib.sha256(str(experiment).encode()).hexdigest()[:16]


def job_tag(run_id: str, experiment: Path) -> str:
    return f"mlsm:{run_id}:{experiment_key(experiment)}"


def run_of(job: Job, experiment: Path) -> str | None:
    """The run id in `job`'s comment when the job belongs to `experiment`, else None."""
    found = re.search(rf"mlsm:([^:\s]+):{experiment_key(experiment)}", job.comment)
    return found.group(1) if found else None


def _slurm_path(path: Path) -> str:
    return str(path).replace("\\", "\\\\").replace("%", "%%")  # no %j expansion in our paths


def _job_env(spec: Spec, run_id: str, experiment: Path) -> dict[str, str]:
    """The training's environment for sbatch to export; the daemon's own job variables stay
    out, so a daemon inside an allocation does not submit into it, and so do GPUs the daemon
    host's pool handed out."""
    env = {k: v for k, v in spec.env.items()
           if not k.startswith("SLURM_") or k == "SLURM_CONF"}
    if spec.devices is not None:  # the daemon host's GPU pool: a job's GPUs are Slurm's (gres)
        env.pop("CUDA_VISIBLE_DEVICES", None)
        env.pop("CUDA_DEVICE_ORDER", None)
    env[RUN_ID_VAR] = run_id
    env[EXPERIMENT_VAR] = str(experiment)
    return env


# ----- exit records ------------------------------------------------------------------------------
def _epoch(text: str) -> float | None:
    with contextlib.suppress(ValueError, OverflowError):
        return time.mktime(time.strptime(text, "%Y-%m-%dT%H:%M:%S"))
    return None


def settle_exit(run_dir: Path, job_id: str, job: Job | None) -> dict[str, Any]:
    """exit.json with what Slurm says of the ended job; built from squeue if the shim left none.

    A reason mlsm gave before killing (kill.json) stays; otherwise a Slurm end state such as
    TIMEOUT becomes the reason, with a sentence for the agent.
    """
    record = rundir.read_exit(run_dir)
    if record is None:
        code = job.returncode if job is not None else None
        started = _epoch(job.start) if job is not None else None
        record = rundir.with_kill_note(rundir.exit_record(code, started), run_dir)
        record["detail"] = record.get("detail") or _missing_detail(job_id, job)
    if job is not None:
        record["slurm"] = {"job_id": job_id, "state": job.state, "reason": job.reason,
                           "restarts": job.restarts, "time_limit": job.time_limit}
        if job.state in END_REASONS and not rundir.read_kill_note(run_dir).get("reason"):
            record["reason"] = job.state.lower()
            record["detail"] = END_REASONS[job.state].format(job=job_id, limit=job.time_limit)
    rundir.write_exit(run_dir, record)
    return record


def _missing_detail(job_id: str, job: Job | None) -> str:
    if job is None:
        return (f"Slurm no longer lists job {job_id} and the shim left no exit.json "
                f"(it ended while no daemon watched, longer ago than MinJobAge)")
    return (f"job {job_id} ended ({job.state}, {job.reason}) without the shim's exit.json; "
            f"see stderr.log")


# ----- the launcher ------------------------------------------------------------------------------
class SlurmRun:
    """A submitted (or re-attached) job, followed through the launcher's board."""

    def __init__(self, launcher: SlurmLauncher, handle: Handle, released: bool) -> None:
        self.handle = handle
        self._launcher = launcher
        self._released = released
        self._job: Job | None = None
        self._ended = False
        self._began = True  # what to say while Slurm does not answer
        self._fast = False  # exit.json was just written: look more often
        self._left_hold = False  # seen released: our hold is over
        self._release_tried = time.monotonic()
        self._lock = threading.Lock()

    @property
    def job_id(self) -> str:
        return str(self.handle["job_id"])

    @property
    def run_dir(self) -> Path:
        return Path(self.handle["run_dir"])

    @property
    def returncode(self) -> int | None:
        return self._job.returncode if self._ended and self._job is not None else None

    def release(self) -> None:
        self._released = True
        self._release_tried = time.monotonic()
        with contextlib.suppress(SlurmUnreachable):
            self._launcher.release(self.job_id)

    def cancel(self) -> None:
        self._launcher.cancel(self.job_id)

    def begun(self) -> bool:
        with contextlib.suppress(SlurmUnreachable):
            job = self._poll(CACHE_S)
            self._began = job is None or job.started
        return self._began

    def wait(self, timeout: float | None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._check():
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            step = FAST_CACHE_S if self._fast else CACHE_S / 4
            time.sleep(step if left is None else min(step, left))
        return True

    def _check(self) -> bool:
        """Whether the job has ended; the first time, exit.json is settled."""
        if self._ended:
            return True
        self._fast = self._exit_is_fresh()
        try:
            job = self._poll(FAST_CACHE_S if self._fast else CACHE_S)
        except SlurmUnreachable:
            return False
        if job is not None and not job.ended:
            return False
        with self._lock:
            if not self._ended:
                self._job = job
                settle_exit(self.run_dir, self.job_id, job)
                self._launcher.board.forget(self.job_id)
                self._ended = True
        return True

    def _poll(self, max_age: float) -> Job | None:
        """The job; None once Slurm has forgotten it (or its id is another job's)."""
        job = self._launcher.board.get(self.job_id, max_age)
        if job is not None and not self._launcher.ours(job, self.handle):
            return None
        if job is not None and self._released and not self._left_hold:
            if not job.held:
                self._left_hold = True  # from now on a hold is a person's: left alone
            elif time.monotonic() - self._release_tried > RELEASE_RETRY_S:
                self.release()  # the first release was lost (the controller was busy or down)
        return job

    def _exit_is_fresh(self) -> bool:
        """exit.json was written moments ago: the job is ending, look more often."""
        with contextlib.suppress(OSError):
            return time.time() - (self.run_dir / rundir.EXIT).stat().st_mtime < 10.0
        return False


class SlurmLauncher:
    """Runs each training as a Slurm batch job; the job id is the run's identity."""

    name = "slurm"

    def __init__(self, run: Runner = run_command) -> None:
        self._run = run
        self.board = Board(run)

    # ----- starting ------------------------------------------------------------------------------
    def spawn(self, spec: Spec) -> SlurmRun:
        cfg = spec.config or Config()
        experiment = spec.experiment or spec.cwd
        run_id = spec.env.get(RUN_ID_VAR) or new_run_id()
        orphans = self.cancel_orphans(experiment)
        script = spec.stdout.parent / SCRIPT
        script.write_text(batch_script(spec, cfg), encoding="utf-8")
        job_id = self._submit(spec, cfg, script, run_id, experiment)
        handle: Handle = {
            "launcher": self.name, "job_id": job_id, "run_id": run_id,
            "tag": job_tag(run_id, experiment), "experiment": str(experiment),
            "run_dir": str(spec.stdout.parent), "script": str(script),
            "cmd": list(spec.record_cmd or spec.argv), "started_at": now_iso(),
        }
        if orphans:
            handle["orphans_cancelled"] = orphans
        if any(Path(arg).name == "bwrap" for arg in spec.argv):
            handle["sandboxed"] = True
        return SlurmRun(self, handle, released=not spec.handshake)

    def _submit(self, spec: Spec, cfg: Config, script: Path, run_id: str,
                experiment: Path) -> str:
        argv = ["sbatch", "--parsable", *shlex.split(cfg.slurm_extra or "")]
        argv += ["--hold"] if spec.handshake else []
        argv += [f"--comment={job_tag(run_id, experiment)}", "--export=ALL",
                 f"--chdir={spec.cwd}", "--open-mode=append",
                 f"--output={_slurm_path(spec.stdout)}"]
        argv += [f"--error={_slurm_path(spec.stderr)}"] if spec.stderr else []
        done = self._run([*argv, str(script)], _job_env(spec, run_id, experiment))
        ids: list[str] = re.findall(r"^(\d+)(?:;\S*)?$", done.stdout, re.MULTILINE)
        if not ids:
            raise OSError(f"sbatch did not submit the job: "
                          f"{done.stderr.strip() or done.stdout.strip() or 'no answer'}")
        return ids[-1]

    def release(self, job_id: str) -> None:
        self._run(["scontrol", "release", job_id], None)

    def cancel(self, job_id: str) -> None:
        """Cancel a job that must not run (held, never released) and wait until it is gone."""
        with contextlib.suppress(SlurmUnreachable):
            self._scancel(job_id)
            self._wait_gone(job_id, SETTLE_S)

    def jobs_of(self, experiment: Path, states: str | None = None) -> list[Job]:
        """This user's jobs for `experiment` (by their comment); live ones unless `states`."""
        fmt = ",".join(f"{f}:|" for f in FIELDS)
        argv = ["squeue", "--noheader", f"--user={os.getuid()}", "--Format=" + fmt]
        done = self._run(argv + ([f"--states={states}"] if states else []), None)
        if not done.stdout.strip() and (done.returncode != 0 or done.stderr.strip()):
            raise SlurmUnreachable(f"squeue failed: {done.stderr.strip() or 'no answer'}")
        return [j for j in parse_squeue(done.stdout).values() if run_of(j, experiment)]

    def cancel_orphans(self, experiment: Path) -> list[str]:
        """Cancel every live job of `experiment`: none can be legitimate when a new one starts
        (a held one is a submission whose daemon died before persisting it)."""
        orphans = [j.job_id for j in self.jobs_of(experiment) if not j.ended]
        for job_id in orphans:
            self.kill({"job_id": job_id}, 0.0)
        return orphans

    # ----- following ---------------------------------------------------------------------------
    def reattach(self, handle: Handle) -> SlurmRun | None:
        job_id = str(handle.get("job_id") or "")
        if not job_id or not handle.get("run_dir"):
            return None
        try:
            job = self.board.get(job_id, 0.0)
        except SlurmUnreachable:
            return SlurmRun(self, handle, released=True)  # cannot tell: follow, never rerun
        if job is not None and self.ours(job, handle):
            if job.held:  # persisted, but the previous daemon died before releasing it
                with contextlib.suppress(SlurmUnreachable):
                    self.release(job_id)
            return SlurmRun(self, handle, released=True)
        if rundir.read_exit(Path(handle["run_dir"])) is not None:
            return SlurmRun(self, handle, released=True)  # ended while no daemon watched
        return None

    def ours(self, job: Job, handle: Handle) -> bool:
        """Whether `job` is the handle's run and not a reused id: its comment names the run
        (a site's submit plugin may add to the comment; an empty one cannot tell)."""
        tag = handle.get("tag")
        return not tag or not job.comment or str(tag) in job.comment

    def _job(self, handle: Handle, max_age: float = CACHE_S) -> Job | None:
        job_id = str(handle.get("job_id") or "")
        job = self.board.get(job_id, max_age) if job_id else None
        return job if job is not None and self.ours(job, handle) else None

    def alive(self, handle: Handle) -> bool:
        try:
            job = self._job(handle)
        except SlurmUnreachable:
            return True  # unknown is not gone
        return job is not None and not job.ended

    # ----- signals and kills -------------------------------------------------------------------
    def signal(self, handle: Handle, signum: int) -> bool:
        """`scancel --full --signal`: the batch script (the shim, which forwards it) and its
        process group. A sandboxed training is not signalled: its wrapper would die of the
        signal and, on proctrack/linuxproc, take the training out of the job's reach."""
        if handle.get("sandboxed"):
            return False
        try:
            job = self._job(handle, 0.0)
            if job is None or job.ended or not job.started:
                return False
            self._scancel(job.job_id, "--full", f"--signal={signal.Signals(signum).name[3:]}")
        except SlurmUnreachable:
            return False
        return True

    def kill(self, handle: Handle, grace: float) -> KillReport:
        """Cancel the job: Slurm sends SIGTERM to every process of it at once (sandboxed or in
        a new session too, which `scancel --full --signal` does not reach), and SIGKILL after
        its KillWait. After `grace` mlsm asks for the SIGKILL itself (Slurm refuses once the
        job is completing: then KillWait decides). Safe to repeat."""
        job_id = str(handle.get("job_id") or "")
        try:
            job = self._job(handle, 0.0)
            if job is None or job.ended:
                return KillReport(0)
            self._scancel(job_id)
            if not self._wait_gone(job_id, grace):
                self._scancel(job_id, "--full", "--signal=KILL")
            return KillReport(1, 0 if self._wait_gone(job_id, SETTLE_S) else 1)
        except SlurmUnreachable:
            return KillReport(1, 1)

    def _scancel(self, job_id: str, *options: str) -> None:
        self._run(["scancel", *options, job_id], None)

    def _wait_gone(self, job_id: str, timeout: float) -> bool:
        """Poll squeue until the job has ended (or Slurm forgot it); False at the deadline."""
        deadline = time.monotonic() + timeout
        delay = 0.01
        while True:
            job = self.board.get(job_id, 0.0)
            if job is None or job.ended:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 0.1)

    def leftovers(self, handle: Handle, grace: float) -> int:
        """Slurm kills what a job leaves when it ends; a job still there is killed now."""
        return self.kill(handle, grace).found if self.alive(handle) else 0

    def usage(self, handle: Handle) -> tuple[int, int]:
        """The job's processes run on another host: not seen from here (Slurm limits them)."""
        return (0, 0)

    def kill_gpu_holders(self, handle: Handle, grace: float) -> list[int]:
        """The job's GPUs are on another host, and Slurm frees them with the job."""
        return []

    def strays(self, experiment: Path, keep: list[str]) -> list[Handle]:
        try:
            jobs = self.jobs_of(experiment)
        except SlurmUnreachable:
            return []
        out: list[Handle] = []
        for job in jobs:
            run_id = run_of(job, experiment)
            if run_id and run_id not in keep and not job.ended:
                out.append({"launcher": self.name, "job_id": job.job_id, "run_id": run_id,
                            "tag": job_tag(run_id, experiment)})
        return out

    # ----- words -------------------------------------------------------------------------------
    def describe(self, handle: Handle) -> str:
        return f"job {handle.get('job_id')}"

    def why_gone(self, handle: Handle) -> str:
        job_id = str(handle.get("job_id") or "")
        try:
            job = self.board.get(job_id, 0.0) if job_id else None
        except SlurmUnreachable as exc:
            return f"Slurm does not answer ({exc})"
        if job is None:
            return "Slurm no longer lists it (it ended longer ago than MinJobAge)"
        if not self.ours(job, handle):
            return "that job id now belongs to another job"
        return f"it ended: {job.state}" + (f" ({job.reason})" if job.reason != "None" else "")
