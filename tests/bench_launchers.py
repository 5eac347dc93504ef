#!/usr/bin/env python3
"""Launcher figures, local against slurm (a loopback cluster it starts), as markdown tables.

    python tests/bench_launchers.py [--trials N]

1. launch: `spawn` (held) → `release` → the training's first line, through the launcher API;
2. STOP → the job gone from squeue (slurm) or the training process gone (local), and → status.json
   says stopped, through a real `mlsm watch`;
3. re-attach: `kill -9` of the daemon mid-training, a new daemon started → `training_reattached`,
   and how many times the training was submitted (must be once);
4. one daemon following many jobs: squeue calls per second and the daemon's CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import helpers  # the tests' helpers: this script lives beside them in tests/
import psutil
from slurm_cluster import LoopbackCluster, missing

from mlsm.handlers.launchers import get_launcher
from mlsm.handlers.launchers.base import Launched, Spec
from mlsm.handlers.training import shim_argv
from mlsm.hooks import rundir
from mlsm.machine.core.config import Config

PY = sys.executable
MARK = "import os, time; open(os.environ['BENCH_MARK'], 'w').write(repr(time.time()))"
HELD_TRAIN = '''\
import os, time
from pathlib import Path
from mlsm import hooks
exp = Path(os.environ["MLSM_DIR"])
with (exp.parent / "shared" / f"{exp.name}.launches").open("a") as fh:
    fh.write(f"{os.environ['MLSM_ITERATION']} {os.environ.get('SLURM_JOB_ID')} {os.getpid()}\\n")
while (exp / "hold_training").exists():
    hooks.heartbeat()
    time.sleep(0.05)
hooks.result(loss=1.0)
'''
INSTANT_AGENT = r"""case "$MLSM_ROLE" in
  plan) echo '# plan' > "$MLSM_DIR/PLAN.md" ;;
  code) cp "$MLSM_DIR/train.src" "$MLSM_DIR/train.py" ;;
  analyze) echo '{"decision": "continue", "reason": "x"}' > "$MLSM_RUN_DIR/decision.json" ;;
  report) echo '# report' > "$MLSM_DIR/REPORT.md" ;;
esac
"""


def ms(values: list[float]) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
    return f"{statistics.median(ordered) * 1000:.0f} ms (p90 {p90 * 1000:.0f})"


def until(check: Callable[[], Any], timeout: float, what: str, step: float = 0.002) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(step)


# ----- 1. launch latency -------------------------------------------------------------------------
def launch_latency(name: str, root: Path, trials: int) -> tuple[list[float], list[float]]:
    """(spawn call, spawn → the training's first line) per trial, through the launcher API."""
    launcher = get_launcher(name)
    spawned, first = [], []
    for i in range(trials):
        run_dir = root / f"{name}-{i}"
        run_dir.mkdir(parents=True)
        mark = run_dir / "mark"
        env = {**os.environ, "BENCH_MARK": str(mark)}
        spec = Spec(argv=shim_argv(run_dir, [PY, "-c", MARK]), cwd=root, env=env,
                    stdout=run_dir / "stdout.log", stderr=run_dir / "stderr.log",
                    handshake=True, experiment=root, config=Config())
        t0 = time.time()
        run: Launched = launcher.spawn(spec)
        spawned.append(time.time() - t0)
        run.release()
        until(lambda mark=mark: mark.exists() and mark.read_text(), 30, "the first line")
        first.append(float(mark.read_text()) - t0)
        run.wait(None)
    return spawned, first


def sbatch_floor(root: Path, trials: int) -> list[float]:
    """Slurm's own part: plain `sbatch` of a script whose first line stamps the time."""
    root.mkdir(parents=True)
    script, stamp = root / "stamp.sh", root / "stamp"
    script.write_text(f"#!/bin/sh\ndate +%s.%N > {stamp}\n")
    out = []
    for _ in range(trials):
        stamp.unlink(missing_ok=True)
        t0 = time.time()
        subprocess.run(["sbatch", "--parsable", "--output=/dev/null", str(script)],
                       capture_output=True, check=True)
        until(lambda: stamp.exists() and stamp.read_text().strip(), 30, "the stamp")
        out.append(float(stamp.read_text()) - t0)
    return out


# ----- 2 and 3: through a real daemon ------------------------------------------------------------
class Bench:
    """An experiment under `root` driven by a real `mlsm watch` with one launcher."""

    def __init__(self, root: Path, name: str, launcher: str, env: dict[str, str]) -> None:
        self.dir = root / name
        self.dir.mkdir(parents=True)
        (root / "shared").mkdir(exist_ok=True)
        self.launcher, self.env = launcher, env
        self.proc: subprocess.Popen[bytes] | None = None
        (self.dir / "IDEA.md").write_text("x")
        (self.dir / "train.src").write_text(HELD_TRAIN)
        (self.dir / "hold_training").write_text("")
        self.agent = root / "shared" / "agent.sh"
        self.agent.write_text(INSTANT_AGENT)

    def start(self, *extra: str) -> subprocess.Popen[bytes]:
        args = [PY, "-m", "mlsm.machine.cli", "watch", str(self.dir), "--agent", "command",
                "--agent-cmd", f"/bin/sh {self.agent}", "--launcher",
                self.launcher, "--sandbox", "none", "--grace", "2", "--max-iterations", "1",
                *extra]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, env=self.env)
        return self.proc

    def stop_daemon(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)

    def launches(self) -> list[tuple[str, str, int]]:
        path = self.dir.parent / "shared" / f"{self.dir.name}.launches"
        with contextlib.suppress(OSError):
            return [(r[0], r[1], int(r[2])) for r in
                    (line.split() for line in path.read_text().splitlines()) if len(r) == 3]
        return []

    def state(self) -> str | None:
        return helpers.read_status(self.dir).get("state")

    def events(self, name: str) -> int:
        with contextlib.suppress(OSError):
            return (self.dir / "logs" / "events.jsonl").read_text().count(f'"{name}"')
        return 0


def job_gone(job_id: str) -> bool:
    done = subprocess.run(["squeue", "--noheader", f"--jobs={job_id}", "--format=%i"],
                          capture_output=True, text=True, check=False)
    return not done.stdout.strip()


def stop_to_gone(bench: Bench, trials: int) -> tuple[list[float], list[float]]:
    """STOP → training gone (job out of squeue / process dead), and → status says stopped."""
    gone, stopped = [], []
    bench.start()
    for k in range(trials):
        until(lambda k=k: len(bench.launches()) > k, 60, "the training to run", 0.01)
        _, job_id, pid = bench.launches()[k]
        proc = psutil.Process(pid) if bench.launcher == "local" else None
        t0 = time.monotonic()
        (bench.dir / "STOP").touch()
        if proc is not None:
            until(lambda p=proc: not helpers_alive(p), 30, "the training process gone", 0.001)
        else:
            until(lambda j=job_id: job_gone(j), 30, "the job gone from squeue", 0.005)
        gone.append(time.monotonic() - t0)
        until(lambda: bench.state() == "stopped", 30, "status stopped", 0.002)
        stopped.append(time.monotonic() - t0)
        (bench.dir / "STOP").unlink()
    bench.stop_daemon()
    return gone, stopped


def helpers_alive(proc: psutil.Process) -> bool:
    with contextlib.suppress(psutil.Error):
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    return False


def reattach(root: Path, launcher: str, env: dict[str, str], trials: int) -> tuple[
        list[float], int]:
    """kill -9 of the daemon mid-training, a new daemon → re-attached; and duplicate starts."""
    times, duplicates = [], 0
    for k in range(trials):
        bench = Bench(root, f"reattach-{launcher}-{k}", launcher, env)
        first = bench.start()
        until(lambda b=bench: b.launches(), 60, "the training to run", 0.01)
        first.kill()
        first.wait()
        t0 = time.monotonic()
        bench.start()
        until(lambda b=bench: b.events("training_reattached"), 60, "re-attach", 0.002)
        times.append(time.monotonic() - t0)
        (bench.dir / "hold_training").unlink()
        until(lambda b=bench: b.state() == "done", 60, "done", 0.01)
        duplicates += len(bench.launches()) - 1
        bench.stop_daemon()
    return times, duplicates


# ----- 4. many jobs, one daemon ------------------------------------------------------------------
def squeue_load(root: Path, env: dict[str, str], count: int, seconds: float) -> tuple[
        float, float]:
    """(squeue calls per second, daemon CPU %) while `count` jobs train under one daemon."""
    shims = root / "bin"
    shims.mkdir()
    calls = root / "squeue.calls"
    real = shutil.which("squeue")
    (shims / "squeue").write_text(f"#!/bin/sh\necho >> {calls}\nexec {real} \"$@\"\n")
    (shims / "squeue").chmod(0o755)
    env = {**env, "PATH": f"{shims}:{env['PATH']}"}
    exps = root / "many"
    benches = [Bench(exps, f"e{i:02d}", "slurm", env) for i in range(count)]
    daemon = subprocess.Popen(
        [PY, "-m", "mlsm.machine.cli", "watch", str(exps), "--discover", "--agent", "command",
         "--agent-cmd", f"/bin/sh {benches[0].agent}", "--launcher", "slurm",
         "--sandbox", "none", "--max-iterations", "1", "--max-parallel", str(count)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    until(lambda: all(b.launches() for b in benches), 120, "every job to run", 0.05)
    proc = psutil.Process(daemon.pid)
    before = calls.read_text().count("\n") if calls.exists() else 0
    cpu0 = proc.cpu_times()
    t0 = time.monotonic()
    time.sleep(seconds)  # the measurement window itself
    cpu1 = proc.cpu_times()
    elapsed = time.monotonic() - t0
    during = calls.read_text().count("\n") - before
    for b in benches:
        (b.dir / "hold_training").unlink()
    until(lambda: all(b.state() == "done" for b in benches), 120, "every run done", 0.05)
    daemon.send_signal(signal.SIGTERM)
    daemon.wait(30)
    busy = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
    return during / elapsed, 100 * busy / elapsed


# ----- main --------------------------------------------------------------------------------------
@contextlib.contextmanager
def cluster(root: Path) -> Iterator[LoopbackCluster]:
    with LoopbackCluster(root / "slurm", cpus=64) as c:
        os.environ.update(c.env)
        yield c


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--many", type=int, default=20, help="jobs under one daemon")
    args = parser.parse_args()
    reason = missing()
    if reason:
        print(f"skipped: {reason}")
        return 0
    root = Path(tempfile.mkdtemp(prefix="mlsm-bench-launchers-"))
    try:
        with cluster(root):
            env = {k: v for k, v in os.environ.items() if not k.startswith("MLSM_")}
            version = subprocess.run(["sinfo", "--version"], capture_output=True,
                                     text=True).stdout.strip()
            rows = []
            for name in ("local", "slurm"):
                spawned, first = launch_latency(name, root / "launch", args.trials * 2)
                gone, stopped = stop_to_gone(Bench(root, f"stop-{name}", name, env),
                                             args.trials)
                times, dups = reattach(root, name, env, max(3, args.trials // 2))
                rows.append((name, spawned, first, gone, stopped, times, dups))
            floor = sbatch_floor(root / "floor", args.trials * 2)
            rate, cpu = squeue_load(root, env, args.many, 10.0)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"# Launchers: local and slurm ({version}, single-node loopback cluster; "
          f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]})\n")
    print("| launcher | spawn (submit held) | spawn → training's first line | STOP → "
          "training gone¹ | STOP → status stopped | kill -9 → re-attached² | duplicated "
          "launches |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, spawned, first, gone, stopped, times, dups in rows:
        print(f"| {name} | {ms(spawned)} | {ms(first)} | {ms(gone)} | {ms(stopped)} | "
              f"{ms(times)} | {dups} |")
    print(f"| slurm's floor: plain `sbatch` → a one-line script runs | - | {ms(floor)} | | | "
          f"| |")
    print("\n¹ local: the training process dead; slurm: the job no longer in `squeue`.  "
          "\n² from the new daemon's start (a Python start included) to `training_reattached`.")
    print(f"\nOne daemon following {args.many} running jobs: {rate:.2f} squeue calls/s, "
          f"daemon CPU {cpu:.1f} % of a core.")
    return 0


# ----- torchrun (python tests/bench_launchers.py torchrun) ---------------------------------------
RANK_MARK = ("import os, time; open(os.environ['BENCH_MARK'] + os.environ.get('RANK', '0'), "
             "'w').write(repr(time.time()))")
RANK_TRAIN = '''\
import json, os, time
from pathlib import Path
from mlsm import hooks
exp = Path(os.environ["MLSM_DIR"])
shared = exp.parent / "shared"
ckpt = hooks.checkpoint_dir() / "state.json"
step = json.loads(ckpt.read_text())["step"] if hooks.resumed() and ckpt.exists() else 0
with (shared / f"{exp.name}.ranks").open("a") as fh:
    fh.write(f"{hooks.rank()} {os.getpid()} {os.getppid()} {step} {time.time()!r}\\n")
while True:
    if hooks.stop_requested():
        if hooks.rank() == 0:
            ckpt.write_text(json.dumps({"step": step}))
        raise SystemExit(143)
    if not (exp / "hold_training").exists():
        break
    step += 1
    hooks.heartbeat(step)
    time.sleep(0.01)
hooks.result(loss=1.0)
'''


def rank_launch_latency(name: str, root: Path, trials: int, nproc: int) -> tuple[
        list[float], list[float]]:
    """(spawn → rank 0's first line, spawn → the last rank's first line) per trial."""
    launcher = get_launcher(name)
    cfg = Config(launcher=name, nproc_per_node=nproc)
    first, last = [], []
    for i in range(trials):
        run_dir = root / f"{name}-{i}"
        run_dir.mkdir(parents=True)
        env = {**os.environ, "BENCH_MARK": str(run_dir / "mark"), "MLSM_RUN_DIR": str(run_dir)}
        train = [PY, "-c", RANK_MARK]
        spec = Spec(argv=shim_argv(run_dir, train), cwd=root, env=env,
                    stdout=run_dir / "stdout.log", stderr=run_dir / "stderr.log",
                    handshake=True, record_cmd=train, experiment=root, config=cfg)
        marks = [run_dir / f"mark{r}" for r in range(nproc)]
        t0 = time.time()
        run: Launched = launcher.spawn(spec)
        run.release()
        until(lambda m=marks: all(p.exists() and p.read_text() for p in m), 60, "every rank")
        stamps = [float(p.read_text()) for p in marks]
        first.append(stamps[0] - t0)
        last.append(max(stamps) - t0)
        run.wait(None)
    return first, last


def _ranks(bench: Bench) -> list[tuple[int, int, int, int, float]]:
    """(rank, pid, parent pid, first step, time) per started rank, in start order."""
    path = bench.dir.parent / "shared" / f"{bench.dir.name}.ranks"
    with contextlib.suppress(OSError, ValueError):
        return [(int(r), int(p), int(pp), int(s), float(t)) for r, p, pp, s, t in
                (line.split() for line in path.read_text().splitlines())]
    return []


def _rank_bench(root: Path, name: str, launcher: str, env: dict[str, str]) -> Bench:
    bench = Bench(root, name, launcher, env)
    (bench.dir / "train.src").write_text(RANK_TRAIN)
    return bench


def _processes(rows: list[tuple[int, int, int, int, float]],
               with_parents: bool) -> list[psutil.Process]:
    pids = {pid for _, pid, _, _, _ in rows} | (
        {parent for _, _, parent, _, _ in rows} if with_parents else set())
    found = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            found.append(psutil.Process(pid))
    return found


def _beat_step(bench: Bench) -> int:
    beat = rundir.read_heartbeat(bench.dir / "logs" / "iter_001") or {}
    return int(beat.get("step") or 0)


def stop_and_resume(root: Path, launcher: str, env: dict[str, str], trials: int,
                    nproc: int) -> tuple[list[float], list[float], list[float], list[float]]:
    """STOP → every rank gone; → the torchrun agent gone too; → status stopped; STOP removed
    → every resumed rank running again from the checkpoint (through a real daemon)."""
    bench = _rank_bench(root, f"ranks-{launcher}", launcher, env)
    bench.start("--nproc-per-node", str(nproc))
    gone, all_gone, stopped, resumed = [], [], [], []
    for k in range(trials):
        until(lambda k=k: len(_ranks(bench)) >= (k + 1) * nproc, 120, "the ranks", 0.01)
        until(lambda: (helpers.read_status(bench.dir).get("training") or {}).get("pid"), 30,
              "the training recorded", 0.01)
        step = max(s for _, _, _, s, _ in _ranks(bench)[-nproc:])
        until(lambda s=step: _beat_step(bench) >= s + 3, 30, "a few steps", 0.005)
        ranks = _processes(_ranks(bench)[-nproc:], False)
        procs = _processes(_ranks(bench)[-nproc:], launcher == "torchrun")
        t0 = time.monotonic()
        (bench.dir / "STOP").touch()
        until(lambda ps=ranks: not any(helpers_alive(p) for p in ps), 60, "every rank gone",
              0.001)
        gone.append(time.monotonic() - t0)
        until(lambda ps=procs: not any(helpers_alive(p) for p in ps), 60, "the agent gone",
              0.001)
        all_gone.append(time.monotonic() - t0)
        until(lambda: bench.state() == "stopped", 30, "status stopped", 0.002)
        stopped.append(time.monotonic() - t0)
        t1 = time.time()
        (bench.dir / "STOP").unlink()
        until(lambda k=k: len(_ranks(bench)) >= (k + 2) * nproc, 120, "the resumed ranks",
              0.002)
        again = _ranks(bench)[-nproc:]
        if any(s == 0 for _, _, _, s, _ in again):
            raise AssertionError("a resumed rank started from step 0")
        resumed.append(max(t for *_, t in again) - t1)
    (bench.dir / "hold_training").unlink()
    until(lambda: bench.state() == "done", 120, "done", 0.01)
    bench.stop_daemon()
    return gone, all_gone, stopped, resumed


def reattach_ranks(root: Path, env: dict[str, str], trials: int, nproc: int) -> tuple[
        list[float], int]:
    """kill -9 of the daemon while torchrun's ranks train, a new daemon → re-attached; and
    how many ranks were started beyond the first launch (must be 0)."""
    times, duplicates = [], 0
    for k in range(trials):
        bench = _rank_bench(root, f"reattach-torchrun-{k}", "torchrun", env)
        first = bench.start("--nproc-per-node", str(nproc))
        until(lambda b=bench: len(_ranks(b)) >= nproc, 120, "the ranks", 0.01)
        first.kill()
        first.wait()
        t0 = time.monotonic()
        bench.start("--nproc-per-node", str(nproc))
        until(lambda b=bench: b.events("training_reattached"), 60, "re-attach", 0.002)
        times.append(time.monotonic() - t0)
        (bench.dir / "hold_training").unlink()
        until(lambda b=bench: b.state() == "done", 120, "done", 0.01)
        duplicates += len(_ranks(bench)) - nproc
        bench.stop_daemon()
    return times, duplicates


def torchrun_main() -> int:
    """`python tests/bench_launchers.py torchrun [--trials N] [--nproc N]`: no Slurm needed."""
    parser = argparse.ArgumentParser(description="torchrun figures beside local ones")
    parser.add_argument("what", choices=["torchrun"])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--nproc", type=int, default=2)
    args = parser.parse_args()
    try:
        import torch
        import torch.distributed.run  # what `torchrun` runs
    except ImportError as exc:
        print(f"skipped: torchrun is not installed ({exc})")
        return 0
    root = Path(tempfile.mkdtemp(prefix="mlsm-bench-torchrun-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLSM_")}
    procs = {"local": 1, "torchrun": args.nproc}
    try:
        launch = {n: rank_launch_latency(n, root / "launch", args.trials * 2, procs[n])
                  for n in procs}
        stops = {n: stop_and_resume(root, n, env, args.trials, procs[n]) for n in procs}
        times, dups = reattach_ranks(root, env, max(3, args.trials // 2), args.nproc)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"# Launchers: local and torchrun ({args.nproc} ranks; torch {torch.__version__}; "
          f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}; --sandbox none)\n")
    print("| launcher | spawn → rank 0's first line | spawn → every rank's first line | "
          "STOP → every rank gone¹ | STOP → the torchrun agent gone too | STOP → status "
          "stopped | `rm STOP` → every rank resumed from its checkpoint² | kill -9 → "
          "re-attached | duplicated launches |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in procs:
        first, last = launch[name]
        gone, all_gone, stopped, resumed = stops[name]
        agent = ms(all_gone) if name == "torchrun" else "-"
        again = (ms(times), str(dups)) if name == "torchrun" else ("(slurm table)", "-")
        print(f"| {name} | {ms(first)} | {ms(last)} | {ms(gone)} | {agent} | {ms(stopped)} | "
              f"{ms(resumed)} | {again[0]} | {again[1]} |")
    print("\n¹ each rank saves its checkpoint on SIGTERM before it exits.  \n² to the last "
          "rank's first line, which has read the checkpoint (never step 0).")
    return 0


if __name__ == "__main__":
    sys.exit(torchrun_main() if sys.argv[1:2] == ["torchrun"] else main())
