"""Benchmark: the daemon's memory and time through issue 15's worst files; prints a markdown table.

Each case starts a real `mlsm watch` on a fresh directory, plants one hostile input, and waits for
the daemon to record its outcome. A thread samples the daemon's resident memory with psutil every
20 ms; the kernel's peak (VmHWM) is read before SIGTERM. Large files are sparse where the daemon
only has to refuse them; the stdout flood and the metrics file are written for real.

    python tests/bench_hostile.py [--only NAME] [--flood-gb 1.5] [--metrics-lines 10000000]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import helpers  # the tests' helpers: this script lives beside them in tests/
import psutil

MB = 1 << 20
TARGET_MB = 100
STATE_TIMEOUT_S = 300

PLANT_RESULT_SPARSE = '''\
import os
with open(os.path.join(os.environ["MLSM_RUN_DIR"], "result.json"), "wb") as fh:
    fh.truncate(500 << 20)
'''
PLANT_LINK = '''\
import os, time
target = os.path.join(os.environ["MLSM_RUN_DIR"], {name!r})
os.symlink("/dev/zero", target)
for i in range({beats}):
    print("working", i, flush=True)
    time.sleep(0.2)
print("loss: 0.5", flush=True)
'''
BIG_BEATS = '''\
import os, time
run = os.environ["MLSM_RUN_DIR"]
for i in range(10):
    tmp = os.path.join(run, ".beat.tmp")
    with open(tmp, "wb") as fh:
        fh.truncate(200 << 20)
    os.replace(tmp, os.path.join(run, "heartbeat.json"))
    print("beat", i, flush=True)
    time.sleep(1)
print("loss: 0.5", flush=True)
'''
FLOOD = '''\
import sys
chunk = ("x" * 1023 + "\\n") * 1024
for _ in range(int({gb} * 1024)):
    sys.stdout.write(chunk)
sys.stdout.flush()
print("loss: 0.5", flush=True)
'''
METRICS = '''\
import os
lines = "".join('{{"step": %d, "t": 1700000000.0, "loss": 0.5}}\\n' % i for i in range(100000))
with open(os.path.join(os.environ["MLSM_RUN_DIR"], "metrics.jsonl"), "w") as fh:
    for _ in range({lines} // 100000):
        fh.write(lines)
'''


@dataclasses.dataclass(frozen=True)
class Case:
    """One hostile input: how to plant it, flags, and the state that says it was handled."""

    name: str
    what: str
    plant: Callable[[helpers.Experiment, argparse.Namespace], None]
    until: tuple[str, ...] = ("analyzing",)
    flags: tuple[str, ...] = ()
    env: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Measured:
    case: Case
    sampled_mb: float
    peak_mb: float
    wall_s: float
    cpu_s: float
    outcome: str


def _train(body: str) -> Callable[[helpers.Experiment, argparse.Namespace], None]:
    def plant(exp: helpers.Experiment, args: argparse.Namespace) -> None:
        exp.write("IDEA.md", "an idea\n")
        exp.write("PLAN.md", "# Plan\n")
        exp.write("train.py", body.format(gb=args.flood_gb, lines=args.metrics_lines))
        exp.write("hang_analyze", "")  # the daemon parks in ANALYZING once it took the exit
    return plant


def _idea(kind: str) -> Callable[[helpers.Experiment, argparse.Namespace], None]:
    def plant(exp: helpers.Experiment, args: argparse.Namespace) -> None:
        idea = exp.path / "IDEA.md"
        if kind == "devzero":
            os.symlink("/dev/zero", idea)
        else:
            with idea.open("wb") as fh:
                fh.truncate(300 * MB)
    return plant


def _decision(exp: helpers.Experiment, args: argparse.Namespace) -> None:
    decision = exp.shared / "decision.json"
    decision.write_text(json.dumps({"decision": "finish", "reason": "r" * (50 * MB)}))
    exp.env["FAKE_DECISION_FILE"] = str(decision)
    _train("print('loss: 0.5')\n")(exp, args)
    (exp.path / "hang_analyze").unlink()


CASES = (
    Case("baseline", "none: a one-line training, for reference",
         _train("print('loss: 0.5')\n"), flags=("--objective", "loss")),
    Case("result-500mb", "result.json of 500 MB (sparse)", _train(PLANT_RESULT_SPARSE)),
    Case("result-devzero", "result.json -> /dev/zero",
         _train(PLANT_LINK.format(name="result.json", beats=0))),
    Case("heartbeat-devzero", "heartbeat.json -> /dev/zero, 5 s of training",
         _train(PLANT_LINK.format(name="heartbeat.json", beats=25))),
    Case("heartbeat-200mb", "heartbeat.json of 200 MB rewritten each second for 10 s",
         _train(BIG_BEATS), flags=("--objective", "loss")),
    Case("idea-300mb", "IDEA.md of 300 MB (sparse)", _idea("sparse"), until=("idle",)),
    Case("idea-devzero", "IDEA.md -> /dev/zero", _idea("devzero"), until=("idle",)),
    Case("stdout-flood", "stdout flood (--flood-gb) under --max-log-mb 100", _train(FLOOD),
         flags=("--objective", "loss", "--max-log-mb", "100")),
    Case("metrics-10m", "metrics.jsonl of --metrics-lines lines", _train(METRICS),
         flags=("--objective", "loss")),
    Case("decision-50mb", "decision.json with a 50 MB reason", _decision, until=("failed",),
         flags=("--agent-retries", "0")),
)


class Sampler(threading.Thread):
    """The largest resident set psutil sees for `pid`, every 20 ms, until stopped."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.proc = psutil.Process(pid)
        self.max_rss = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                self.max_rss = max(self.max_rss, self.proc.memory_info().rss)
            except psutil.Error:
                return
            self.done.wait(0.02)


def vm_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def handled(exp: helpers.Experiment, case: Case) -> str | None:
    """The outcome once the daemon recorded it: the state, with the row or the error."""
    status = exp.status()
    if status.get("state") not in case.until:
        return None
    if case.until == ("idle",):
        return f"idle: {status['error']}" if status.get("error") else None
    rows = status.get("history") or []
    row = f"{rows[-1]['outcome']} ({rows[-1]['reason']})" if rows else "no row"
    return f"{status['state']}: {row}" + (f"; {status['error'][:60]}" if status.get("error")
                                          and status["state"] == "failed" else "")


def measure(case: Case, args: argparse.Namespace) -> Measured:
    with tempfile.TemporaryDirectory(prefix=f"bench-{case.name}-") as tmp:
        d = Path(tmp) / "exp"
        d.mkdir()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLSM_", "FAKE_"))}
        procs: list[helpers.Mlsm] = []
        exp = helpers.Experiment(d, env, procs)
        case.plant(exp, args)
        started = time.monotonic()
        daemon = exp.mlsm("watch", *case.flags, **case.env)
        sampler = Sampler(daemon.proc.pid)
        sampler.start()
        cpu0 = sampler.proc.cpu_times()
        try:
            outcome = helpers.wait_for(lambda: handled(exp, case), STATE_TIMEOUT_S, case.name,
                                       interval=0.05)
            wall = time.monotonic() - started
            cpu = sampler.proc.cpu_times()
            peak = vm_hwm_mb(daemon.proc.pid)
        finally:
            sampler.done.set()
            daemon.signal(signal.SIGTERM)
            daemon.wait(60)
            for proc in procs:
                proc.kill()
            helpers._kill_tagged(d)
        extra = _log_sizes(d) if case.name == "stdout-flood" else ""
        return Measured(case, sampler.max_rss / MB, peak, wall,
                        cpu.user + cpu.system - cpu0.user - cpu0.system, outcome + extra)


def _log_sizes(d: Path) -> str:
    log = d / "logs" / "iter_001" / "stdout.log"
    return f"; stdout.log {log.stat().st_size / MB:.0f} MB" if log.exists() else ""


def table(rows: list[Measured]) -> str:
    out = ["| case | hostile input | outcome | max RSS sampled | peak RSS (VmHWM) | wall to "
           "outcome | daemon CPU |", "|---|---|---|---:|---:|---:|---:|"]
    for m in rows:
        mark = "✔" if m.peak_mb < TARGET_MB else "✘"
        out.append(f"| {m.case.name} | {m.case.what} | {m.outcome} | {m.sampled_mb:.1f} MB | "
                   f"{m.peak_mb:.1f} MB {mark} | {m.wall_s:.2f} s | {m.cpu_s:.2f} s |")
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", help="run only these cases (by name)")
    parser.add_argument("--flood-gb", type=float, default=1.5)
    parser.add_argument("--metrics-lines", type=int, default=10_000_000)
    args = parser.parse_args()
    cases = [c for c in CASES if not args.only or c.name in args.only]
    rows: list[Measured] = []
    for case in cases:
        rows.append(measure(case, args))
        print(f"{case.name}: {rows[-1].peak_mb:.1f} MB, {rows[-1].wall_s:.2f} s", file=sys.stderr)
    print(f"Python {platform.python_version()}, psutil {psutil.__version__}, "
          f"{os.cpu_count()} CPUs, target: peak RSS < {TARGET_MB} MB\n")
    print(table(rows))
    worst: Any = max(rows, key=lambda m: m.peak_mb)
    print(f"\nworst peak: {worst.peak_mb:.1f} MB ({worst.case.name})")
    return 0 if all(m.peak_mb < TARGET_MB for m in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
