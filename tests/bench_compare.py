"""Side-by-side benchmark: mlsm's logging and event paths against other loggers and its targets."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import importlib.metadata
import json
import platform
import random
import shlex
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bench_core
import bench_hooks
import psutil
from bench_core import (
    PY,
    STAMP_AGENT,
    Ctx,
    Row,
    Sizes,
    cpu,
    cpu_seconds,
    events,
    idea_to_agent,
    logged,
    ms,
    p50,
    p99,
    reap,
    rss_mb,
    running,
    sh_date_cost,
    status,
    table,
    terminate,
    verdict,
    wait_for,
)

REPO = Path(__file__).resolve().parents[1]
LOGGER = REPO / "tests" / "scripts" / "bench_logger.py"
STORM = REPO / "tests" / "scripts" / "bench_storm.py"
STAMP_CMD = shlex.join(["/bin/sh", "-c", STAMP_AGENT])
STOP_TARGET_MS = 150.0
# Benchmark-only libraries stay offline and quiet, and write under the temp root only.
OFFLINE = {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DISABLE_GIT": "true",
           "WANDB_DISABLE_CODE": "true", "MLFLOW_ALLOW_FILE_STORE": "true",
           "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1"}
PACKAGES = ("mlsm", "torch", "tensorboard", "wandb", "mlflow", "sqlalchemy", "psutil",
            "watchdog", "transitions")


@dataclasses.dataclass(frozen=True)
class Plan:
    """Trial counts of one run (full or --quick)."""

    quick: bool = False
    latency: int = 30  # IDEA.md and STOP trials per observer
    idle_s: float = 30.0  # CPU/RSS window per daemon
    stop: int = 30  # STOP trials in the 1- and 200-experiment daemons
    storm: int = 30  # STOP trials (each experiment) during the storm


QUICK = Plan(quick=True, latency=10, idle_s=5.0, stop=10, storm=10)


@dataclasses.dataclass(frozen=True)
class Logger:
    """One contender of section 1 and its sizes: calls a batch, batches, steps a round, rounds."""

    key: str
    label: str
    package: str
    calls: int
    batches: int
    steps: int
    rounds: int
    env: tuple[tuple[str, str], ...] = ()  # for its process: loggers that differ run apart

    def sizes(self, quick: bool) -> dict[str, int]:
        cut = 3 if quick else 1
        return {"calls": self.calls, "batches": max(5, self.batches // cut),
                "steps": self.steps, "rounds": max(3, self.rounds // cut)}


LOGGERS = (
    Logger("hooks", "mlsm `hooks.log(step=i, loss=x)`", "mlsm", 10_000, 50, 200, 150),
    Logger("hooks-py", "mlsm `hooks.log`, pure-Python path (`MLSM_HOOKS_COMPILED=0`)", "mlsm",
           10_000, 50, 200, 150, (("MLSM_HOOKS_COMPILED", "0"),)),
    Logger("jsonl", "plain JSON lines `f.write(json.dumps(...))`", "", 10_000, 50, 200, 60),
    Logger("tensorboard", "TensorBoard `SummaryWriter.add_scalar`", "tensorboard",
           1_000, 30, 200, 20),
    Logger("wandb", "W&B `wandb.log` (offline)", "wandb", 200, 20, 200, 10),
    Logger("mlflow-metric-file", "MLflow `log_metric` (file store)", "mlflow", 100, 15, 100, 8),
    Logger("mlflow-batch1-file", "MLflow `log_batch`, 1 Metric a call (file store)", "mlflow",
           100, 15, 100, 8),
    Logger("mlflow-batch100-file", "MLflow `log_batch`, 100 Metrics a call, per metric "
           "(file store)", "mlflow", 1_000, 15, 200, 10),
    Logger("mlflow-metric-sqlite", "MLflow `log_metric` (sqlite, MLflow 3's default)", "mlflow",
           10, 10, 50, 6),
    Logger("mlflow-batch1-sqlite", "MLflow `log_batch`, 1 Metric a call (sqlite)", "mlflow",
           10, 10, 50, 6),
)


# ----- small tools ----------------------------------------------------------------------
def version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def versions() -> str:
    found = [f"{p} {version(p)}" for p in PACKAGES]
    return (f"Python {platform.python_version()}, " + ", ".join(found)
            + f", SQLite {sqlite3.sqlite_version}")


def context() -> contextlib.AbstractContextManager[Ctx]:
    """bench_core's context with the offline settings of the logging libraries."""
    return bench_core.context(Sizes(), OFFLINE, prefix="mlsm-bench-compare-")


def tree(d: Path, key: str) -> list[int] | None:
    """The recorded `agent` or `training` process of `d` and its live descendants."""
    pid = (status(d).get(key) or {}).get("pid")
    if not pid or not running(pid):
        return None
    with contextlib.suppress(psutil.Error):
        return [pid, *(c.pid for c in psutil.Process(pid).children(recursive=True))]
    return None


def hung_agent(d: Path, old: int | None = None) -> list[int] | None:
    """The plan agent's tree once it has exec'd `sleep` (a new one when `old` is given)."""
    pids = tree(d, "agent")
    if not pids or pids[0] == old or status(d).get("state") != "planning":
        return None
    with contextlib.suppress(psutil.Error):
        return pids if psutil.Process(pids[0]).name() == "sleep" else None
    return None


def stop_ms(d: Path, pids: list[int]) -> float:
    """Touch STOP; ms until every pid is gone; then wait until status.json says stopped."""
    t0 = time.monotonic()
    (d / "STOP").touch()
    wait_for(lambda: not any(map(running, pids)), 15, f"{d.name}'s tree to go")
    gone = (time.monotonic() - t0) * 1000
    wait_for(lambda: status(d).get("state") == "stopped", 15, f"{d.name} stopped", 0.005)
    return gone


def resume(d: Path) -> None:
    (d / "STOP").unlink()


def start_daemon(ctx: Ctx, dirs: list[Path], *flags: str, ready: str = "waiting_for_idea",
                 discover: bool = False) -> tuple[subprocess.Popen[bytes], float]:
    """`mlsm watch` with the stamping agent; returns once every dir logged `ready` (and secs)."""
    t0 = time.monotonic()
    targets = [dirs[0].parent] if discover else dirs
    daemon = ctx.mlsm("watch", targets, *(["--discover"] if discover else []), "--agent",
                      "command", "--agent-cmd", STAMP_CMD, "--grace", "1", *flags)
    wait_for(lambda: all(logged(d, ready) for d in dirs) or daemon.poll() is not None, 180,
             f"{len(dirs)} experiments to log {ready}", interval=0.1)
    if daemon.poll() is not None:
        raise RuntimeError(f"mlsm watch exited {daemon.returncode}")
    return daemon, time.monotonic() - t0


def make_dirs(ctx: Ctx, prefix: str, n: int, files: dict[str, str] | None = None) -> list[Path]:
    return [ctx.exp(f"{prefix}/e{i:03d}", files) for i in range(n)]


def quantiles(xs: list[float], fmt: Callable[[float], str] = ms) -> tuple[str, str]:
    return fmt(p50(xs)), fmt(p99(xs))


# ----- 1. logging cost --------------------------------------------------------------------
def run_loggers(ctx: Ctx, group: list[Logger], quick: bool) -> dict[str, dict[str, Any]]:
    """Contenders of one library and environment in one fresh process (hooks read MLSM_RUN_DIR
    and MLSM_HOOKS_COMPILED at import)."""
    package = group[0].package
    if package and version(package) == "not installed":
        return {lg.key: {"missing": package} for lg in group}
    tmp = ctx.root / "loggers" / group[0].key
    (tmp / "hooks").mkdir(parents=True)
    env = {**ctx.env, **dict(group[0].env)}
    if package == "mlsm":
        env["MLSM_RUN_DIR"] = str(tmp / "hooks")
    spec = json.dumps({lg.key: lg.sizes(quick) for lg in group})
    done = subprocess.run([PY, str(LOGGER), str(tmp), spec], capture_output=True, text=True,
                          env=env, cwd=tmp, timeout=300, check=False)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        why = (done.stderr.strip().splitlines() or ["no output"])[-1][:120]
        return {lg.key: {"error": why} for lg in group}
    doc: dict[str, dict[str, Any]] = json.loads(lines[-1])
    return doc


def bench_loggers(ctx: Ctx, plan: Plan) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    for package, env in dict.fromkeys((lg.package, lg.env) for lg in LOGGERS):
        t0 = time.monotonic()
        group = [lg for lg in LOGGERS if (lg.package, lg.env) == (package, env)]
        results.update(run_loggers(ctx, group, plan.quick))
        print(f"    {group[0].key}: {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)
    reap(ctx.root / "loggers")  # e.g. a wandb-core that outlived its client
    return results


def absent(doc: dict[str, Any]) -> str | None:
    if "missing" in doc:
        return f"{doc['missing']} not installed"
    return f"failed: {doc['error']}" if "error" in doc else None


def call_rows(results: dict[str, dict[str, Any]]) -> list[str]:
    base = p50(results["hooks"]["per_call"]) if "per_call" in results["hooks"] else None
    out = ["| logger | version | batches x calls | median µs/call | p99 µs/call | x hooks.log |",
           "|---|---|---:|---:|---:|---:|"]
    for lg in LOGGERS:
        doc, ver = results[lg.key], version(lg.package) if lg.package else "stdlib"
        why = absent(doc)
        if why:
            out.append(f"| {lg.label} | {ver} | — | {why} | — | — |")
            continue
        xs = doc["per_call"]
        ratio = f"{p50(xs) / base:,.1f}" if base else "—"
        out.append(f"| {lg.label} | {ver} | {len(xs)} x {lg.calls:,} | {p50(xs):,.2f} | "
                   f"{p99(xs):,.2f} | {ratio} |")
    return out


def train_rows(results: dict[str, dict[str, Any]]) -> list[str]:
    out = ["| logger, every step | rounds x steps | steps/s without | steps/s with | "
           "slowdown median | slowdown p99 | inside the call µs/step (% of a step) |",
           "|---|---:|---:|---:|---:|---:|---:|"]
    for lg in LOGGERS:
        doc = results[lg.key]
        why = absent(doc)
        if why:
            out.append(f"| {lg.label} | — | — | — | {why} | — | — |")
            continue
        slow = bench_hooks.slowdowns(doc)
        step_us = 1e6 / p50(doc["log"])
        out.append(f"| {lg.label} | {len(slow)} x {lg.steps} | {p50(doc['base']):,.0f} | "
                   f"{p50(doc['log']):,.0f} | {p50(slow) * 100:+.1f} % | {p99(slow) * 100:+.1f} %"
                   f" | {doc['inside_us']:,.2f} ({doc['inside_us'] / step_us * 100:.2f} %) |")
    return out


def logger_verdicts(results: dict[str, dict[str, Any]]) -> list[str]:
    hooks = results["hooks"]
    libs = {lg.label: p50(results[lg.key]["per_call"]) for lg in LOGGERS
            if lg.package not in ("mlsm", "") and "per_call" in results[lg.key]}
    if "per_call" not in hooks or not libs:
        return ["hooks.log or every library failed: no ratio"]
    cheapest = min(libs, key=lambda k: libs[k])
    ratio = libs[cheapest] / p50(hooks["per_call"])
    slow = p50(bench_hooks.slowdowns(hooks)) * 100
    direct = hooks["inside_us"] / (1e6 / p50(hooks["log"])) * 100
    return [f"- cheapest library per call: {cheapest}, {libs[cheapest]:,.2f} µs; hooks.log is "
            f"**{ratio:,.1f}x cheaper** (target ≥ 20x): {verdict(ratio >= 20)}",
            f"- hooks.log every step slows the loop by {slow:+.2f} % (median of rounds; timed "
            f"inside the loop: {direct:.2f} % of a step) (target < 1 %): "
            f"{verdict(slow < 1)}"]


# ----- 2. event latency -------------------------------------------------------------------
MODES = (("inotify", (), 0.0), ("poll 0.1 s", ("--poll", "--poll-interval", "0.1"), 0.1),
         ("poll 1.0 s (default interval)", ("--poll",), 1.0))


def bench_latency(ctx: Ctx, plan: Plan) -> list[Row]:
    rows: list[Row] = []
    rng = random.Random(1)
    for i, (label, flags, interval) in enumerate(MODES):
        dirs = make_dirs(ctx, f"latency{i}", plan.latency)
        daemon, _ = start_daemon(ctx, dirs, *flags)
        idea: list[float] = []
        stop: list[float] = []
        for d in dirs:
            # Settle, then a random phase: each trial would otherwise start just after a poll.
            time.sleep(0.03 + rng.uniform(0, interval))
            idea.append(idea_to_agent(d))
            pids = wait_for(functools.partial(hung_agent, d), 15, "the agent")
            time.sleep(rng.uniform(0, interval))
            stop.append(stop_ms(d, pids))
        terminate(daemon)
        rows += latency_rows(label, idea, stop, label == "inotify")
    sh = [sh_date_cost()[0] for _ in range(10)]
    rows.append(Row("(the stamp itself: `sh -c date` after Popen returns, included above)",
                    "10", *quantiles(sh)))
    return rows


def latency_rows(label: str, idea: list[float], stop: list[float], target: bool) -> list[Row]:
    n = str(len(idea))
    idea_ok, stop_ok = p50(idea) <= 20 and p99(idea) <= 50, p99(stop) <= STOP_TARGET_MS
    return [Row(f"IDEA.md written → agent's own start stamp, {label}", n, *quantiles(idea),
                "p50 ≤ 20, p99 ≤ 50 ms" if target else "—", verdict(idea_ok) if target else ""),
            Row(f"STOP touched → hung plan agent gone, {label}", n, *quantiles(stop),
                "p99 ≤ 150 ms" if target else "—", verdict(stop_ok) if target else "")]


# ----- 3. idle daemon ---------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Idle:
    """What one idle window measured."""

    label: str
    ready_s: float
    cpu_pct: float
    rss: list[float]
    threads: int


def idle_window(daemon: subprocess.Popen[bytes], seconds: float) -> tuple[float, list[float]]:
    """CPU % of one core and RSS samples (MB, daemon + children) over `seconds`."""
    proc = psutil.Process(daemon.pid)
    time.sleep(1.0)  # start-up work (imports, first persists) is not idle cost
    cpu0, t0, rss = cpu_seconds(proc), time.monotonic(), [rss_mb(proc)]
    while (left := seconds - (time.monotonic() - t0)) > 0:
        time.sleep(min(1.0, left))
        rss.append(rss_mb(proc))
    return (cpu_seconds(proc) - cpu0) / (time.monotonic() - t0) * 100, rss


def idle_case(ctx: Ctx, plan: Plan, n: int, discover: bool) -> tuple[Idle, list[float]]:
    """One daemon of n idle experiments; then STOP trials in one of them (not for discover)."""
    if discover:
        dirs = make_dirs(ctx, f"idle-discover{n}", n, {"IDEA.md": "x\n", "STOP": ""})
        label = f"{n} stopped (IDEA.md + STOP), `watch ROOT --discover`"
    else:
        dirs = make_dirs(ctx, f"idle{n}", n)
        label = f"{n} waiting for IDEA.md, `watch {'d1' if n == 1 else f'd1 … d{n}'}`"
    ready = "daemon_started" if discover else "waiting_for_idea"
    daemon, ready_s = start_daemon(ctx, dirs, ready=ready, discover=discover)
    pct, rss = idle_window(daemon, plan.idle_s)
    idle = Idle(label, ready_s, pct, rss, psutil.Process(daemon.pid).num_threads())
    stops = [] if discover else repeated_stops(dirs[n // 2], plan.stop)
    terminate(daemon)
    return idle, stops


def repeated_stops(d: Path, trials: int) -> list[float]:
    """STOP the hung plan agent of `d`, remove STOP (it restarts), again and again."""
    (d / "IDEA.md").write_text("An idea.\n")
    out, old = [], None
    for _ in range(trials):
        pids = wait_for(functools.partial(hung_agent, d, old), 15, f"a new agent in {d.name}")
        out.append(stop_ms(d, pids))
        resume(d)
        old = pids[0]
    return out


def bench_idle(ctx: Ctx, plan: Plan) -> tuple[list[Idle], list[Row]]:
    idles, rows = [], []
    for n, discover in ((1, False), (10, False), (200, False), (200, True)):
        idle, stops = idle_case(ctx, plan, n, discover)
        idles.append(idle)
        if stops:
            rows.append(Row(f"STOP → hung plan agent gone, 1 of {n} watched experiments",
                            str(len(stops)), *quantiles(stops), "p99 ≤ 150 ms",
                            verdict(p99(stops) <= STOP_TARGET_MS)))
    return idles, rows


def idle_rows(idles: list[Idle], window: float) -> list[str]:
    out = ["| idle experiments (inotify) | ready after | CPU % of a core | RSS MB mean / max "
           "(incl. children) | threads | target (200) | result |",
           "|---|---:|---:|---:|---:|---|---|"]
    for i in idles:
        big = i.label.startswith("200")
        ok = i.cpu_pct < 1 and max(i.rss) < 150
        out.append(f"| {i.label} | {i.ready_s:.1f} s | {i.cpu_pct:.3f} % | "
                   f"{statistics.mean(i.rss):.1f} / {max(i.rss):.1f} | {i.threads} | "
                   f"{'CPU < 1 %, RSS < 150 MB' if big else '—'} | "
                   f"{verdict(ok) if big else ''} |")
    out.append(f"\n(window {window:g} s each, after 1 s of settling; RSS sampled every second)")
    return out


# ----- 4. event storm ---------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Storm:
    """A storming training in full swing: its tree, the storm's own pid, its run folder."""

    pids: list[int]
    storm: int
    run_dir: Path

    def rate(self) -> tuple[float, float, float]:
        """(files/s, stdout MB/s, files written) from the storm's last note (once stopped)."""
        with contextlib.suppress(OSError, ValueError, KeyError, ZeroDivisionError):
            doc = json.loads((self.run_dir / "storm.json").read_text())
            s = doc["s"]
            return doc["files"] / s, doc["stdout_bytes"] / s / 2**20, float(doc["files"])
        return 0.0, 0.0, 0.0


def storm_tree(d: Path, old: int | None) -> Storm | None:
    """The storming training, once a new storm (not `old`) is in full swing."""
    st = status(d)
    run_dir = (st.get("training") or {}).get("run_dir")
    pids = tree(d, "training")
    if st.get("state") != "training" or not run_dir or not pids:
        return None
    with contextlib.suppress(OSError, ValueError):
        storm = int((Path(run_dir) / "storm.pid").read_text())
        if storm != old and storm in pids and running(storm):
            return Storm(pids, storm, Path(run_dir))
    return None


Trial = tuple[float, float, float, float, float]  # ms, ms neighbour, files/s, MB/s, files


def storm_trial(a: Path, b: Path, olds: list[int | None], pause: float) -> Trial:
    """STOP the neighbour, then the storming experiment; resume both. `olds` is updated."""
    agent = wait_for(lambda: hung_agent(b, olds[1]), 30, "the neighbour's hung agent")
    storm = wait_for(lambda: storm_tree(a, olds[0]), 30, "the storm to be in full swing")
    time.sleep(pause)  # somewhere in the storm, not always at its 1,000th file
    neighbour = stop_ms(b, agent)
    if not all(map(running, storm.pids)):
        raise RuntimeError("the storm ended before its own STOP")
    same = stop_ms(a, storm.pids)
    for d in (a, b):
        resume(d)
    olds[:] = [storm.storm, agent[0]]
    return (same, neighbour, *storm.rate())


def bench_storm(ctx: Ctx, plan: Plan) -> list[Row]:
    a = ctx.exp("storm/a", {"IDEA.md": "x\n", "PLAN.md": "# plan\n",
                            "train.py": STORM.read_text()})
    b = ctx.exp("storm/b", {"IDEA.md": "x\n"})  # the neighbour: its plan agent hangs
    daemon, _ = start_daemon(ctx, [a, b], ready="daemon_started")
    olds: list[int | None] = [None, None]
    rng = random.Random(2)
    trials = [storm_trial(a, b, olds, rng.uniform(0, 2.0)) for _ in range(plan.storm)]
    terminate(daemon)
    return storm_rows(a, b, trials)


def storm_rows(a: Path, b: Path, trials: list[Trial]) -> list[Row]:
    same, neighbour = [t[0] for t in trials], [t[1] for t in trials]
    files, mbs = [t[2] for t in trials], [t[3] for t in trials]
    lost = sum(e.get("event") == "inotify_overflow" for d in (a, b) for e in events(d))
    n = str(len(trials))
    return [Row("STOP → storming training's tree gone (same experiment)", n, *quantiles(same),
                "p99 ≤ 150 ms", verdict(p99(same) <= STOP_TARGET_MS)),
            Row("STOP → neighbour's hung agent gone (same daemon, during the storm)", n,
                *quantiles(neighbour), "p99 ≤ 150 ms", verdict(p99(neighbour) <= STOP_TARGET_MS)),
            Row("storm at STOP: files created+written /s in the root (10,000 a pass)", n,
                *quantiles(files, lambda x: f"{x:,.0f}")),
            Row("storm at STOP: stdout flood MB/s", n, *quantiles(mbs, lambda x: f"{x:.1f}")),
            Row("storm at STOP: files written so far (noted every 1,000)", n,
                *quantiles([t[4] for t in trials], lambda x: f"{x:,.0f}")),
            Row("inotify_overflow events journalled (both experiments)", "—", str(lost))]


# ----- report -----------------------------------------------------------------------------
def section(title: str, fn: Callable[[], Any]) -> Any:
    started = time.monotonic()
    print(f"  {title} …", file=sys.stderr, flush=True)
    try:
        return fn()
    except (TimeoutError, RuntimeError, subprocess.SubprocessError, OSError) as exc:
        print(f"  {title} failed: {exc}", file=sys.stderr, flush=True)
        return exc
    finally:
        print(f"  {title}: {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)


def failed_rows(title: str, result: Any) -> list[Row] | None:
    if isinstance(result, Exception):
        return [Row(f"{title}: did not complete", "—", f"{type(result).__name__}: {result}",
                    verdict="MISS")]
    return None


def report(plan: Plan, header: str, results: dict[str, Any], total: float) -> None:
    mode = "--quick" if plan.quick else "full"
    print(f"## mlsm comparison benchmark ({mode})\n\n{header}\n")
    print("### 1. Logging a scalar from a training loop\n")
    loggers = results["loggers"]
    if isinstance(loggers, Exception):
        print(table(failed_rows("loggers", loggers) or []))
    else:
        print("\n".join(call_rows(loggers)), "\n")
        print("\n".join(train_rows(loggers)), "\n")
        print("\n".join(logger_verdicts(loggers)))
        print("\n(each logger in a fresh process; tiny MLP 64-64-1, batch 32, "
              "torch.set_num_threads(1); rounds alternate without/with; `loss.item()` is called "
              "in both, so only the logger differs; slowdown = steps/s without / with - 1 per "
              "round; µs/call = one batch of calls / its size; MLflow logs synchronously)\n")
    print("### 2. Event latency (one daemon per observer, a fresh experiment per trial)\n")
    print(table(failed_rows("latency", results["latency"]) or results["latency"]), "\n")
    print_idle(results["idle"], plan)
    print("### 4. Event storm: train.py writes 10,000 files into the root a pass (created, then "
          "deleted) and a 200-byte stdout line per file; a neighbour with a hung agent shares "
          "the daemon\n")
    print(table(failed_rows("storm", results["storm"]) or results["storm"]))
    print(f"\ntotal {total:.0f} s; p99 = 99th percentile (inclusive), ≈ max for few trials")


def print_idle(result: Any, plan: Plan) -> None:
    print("### 3. Idle daemon\n")
    rows = failed_rows("idle", result)
    if rows:
        print(table(rows), "\n")
        return
    idles, stops = result
    print("\n".join(idle_rows(idles, plan.idle_s)), "\n")
    print(table(stops), "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="few trials (≈ 2 minutes)")
    plan = QUICK if parser.parse_args().quick else Plan()
    header = f"{versions()}\n\n{cpu()}"
    started = time.monotonic()
    with context() as ctx:
        results = {
            "loggers": section("loggers", lambda: bench_loggers(ctx, plan)),
            "latency": section("latency", lambda: bench_latency(ctx, plan)),
            "idle": section("idle", lambda: bench_idle(ctx, plan)),
            "storm": section("storm", lambda: bench_storm(ctx, plan)),
        }
    report(plan, header, results, time.monotonic() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
