"""Benchmark of the mlsm daemon's core paths against their targets; prints markdown tables."""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import datetime as dt
import functools
import importlib.metadata
import itertools
import json
import os
import platform
import random
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import helpers  # the tests' helpers: this script lives beside them in tests/
import psutil

REPO = Path(__file__).resolve().parents[1]
FAKE_AGENT = REPO / "tests" / "fake_agent.py"
TREE_TRAIN = REPO / "tests" / "scripts" / "tree_train.py"
PY = sys.executable

# The agent of measurement 1: it stamps its own start, then sleeps (the run stays in planning).
STAMP_AGENT = 'date +%s.%N > "$MLSM_RUN_DIR/started"; exec sleep 3600'

# An instant agent: each role writes its product with shell builtins (code copies train.src).
INSTANT_AGENT = r"""case "$MLSM_ROLE" in
  plan) echo '# plan' > "$MLSM_DIR/PLAN.md" ;;
  code) cp "$MLSM_DIR/train.src" "$MLSM_DIR/train.py" ;;
  analyze) echo '{"decision": "continue", "reason": "x"}' > "$MLSM_RUN_DIR/decision.json" ;;
  report) echo '# report' > "$MLSM_DIR/REPORT.md" ;;
esac
"""

TRIVIAL_TRAIN = """\
import os
path = os.path.join(os.environ["MLSM_RUN_DIR"], "result.json")
open(path, "w").write('{"metrics": {"loss": 1.0}}')
"""

# parent + 8 `sh` children + 8 `sleep` grandchildren, all on default SIGTERM; pids to pids.txt.
TREE17_TRAIN = """\
import os, subprocess, time
from pathlib import Path
d = Path(os.environ["MLSM_DIR"])
kids = [subprocess.Popen(["/bin/sh", "-c", f'sleep 3600 & echo $! > "{d}/g{i}.tmp"; wait'])
        for i in range(8)]
grand = []
for i in range(8):
    f = d / f"g{i}.tmp"
    while not (f.exists() and f.read_text().endswith("\\n")):
        time.sleep(0.001)
    grand.append(int(f.read_text()))
    f.unlink()
(d / "pids.tmp").write_text(" ".join(map(str, [os.getpid(), *(k.pid for k in kids), *grand])))
os.replace(d / "pids.tmp", d / "pids.txt")
import signal
while True:
    signal.pause()
"""

# Beats for 0.2-0.5 s, says so in `quiet`, then hangs with a child until killed.
BEAT_TRAIN = """\
import os, random, subprocess, time
from pathlib import Path
from mlsm import hooks
run = Path(os.environ["MLSM_RUN_DIR"])
child = subprocess.Popen(["sleep", "3600"])
(run / "pids").write_text(f"{os.getpid()} {child.pid}\\n")
end, i = time.monotonic() + random.uniform(0.2, 0.5), 0
while time.monotonic() < end:
    hooks.heartbeat(i)
    i += 1
    time.sleep(0.005)
(run / "quiet").write_text("1")
import signal
while True:
    signal.pause()
"""

# As in tests/test_crash.py: every launch is counted in launches.log.
COUNTED_TRAIN = """\
import os, random, time
from pathlib import Path
from mlsm import hooks
exp = Path(os.environ["MLSM_DIR"])
with (exp / "launches.log").open("a") as fh:
    fh.write(os.environ["MLSM_ITERATION"] + "\\n")
end = time.monotonic() + random.uniform(0.0, 0.3)
while time.monotonic() < end:
    hooks.heartbeat()
    time.sleep(0.01)
hooks.result(loss=1.0 / int(os.environ["MLSM_ITERATION"]))
"""
TREE_NAMES = ("main", "child", "grandchild", "setsid_grandchild", "setsid", "ignores_term",
              "orphan_parent", "orphan")


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Trial counts of one run (full or --quick)."""

    start: int = 100
    stop: int = 100
    iterations: int = 30
    idle_s: float = 60.0
    heartbeat: int = 10
    kill: int = 20
    crash: int = 8
    crash_kills: int = 6


QUICK = Sizes(start=20, stop=20, iterations=10, idle_s=10.0, heartbeat=3, kill=5, crash=2,
              crash_kills=3)


@dataclasses.dataclass
class Row:
    """One line of the results table."""

    name: str
    trials: str
    median: str
    p99: str = "—"
    target: str = "—"
    verdict: str = ""


# ----- small tools ----------------------------------------------------------------------
def wait_for(pred: Callable[[], Any], timeout: float, what: str, interval: float = 0.001) -> Any:
    """The tests' deadline wait (its timeout is a TimeoutError), polling every millisecond by
    default: latencies here are measured in milliseconds."""
    return helpers.wait_for(pred, timeout, what, interval)


def running(pid: int) -> bool:
    """True while `pid` exists and is not a zombie (cheap: one /proc read)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return stat[stat.rindex(b")") + 2:][:1] not in (b"Z", b"X")


def status(d: Path) -> dict[str, Any]:
    try:
        doc: dict[str, Any] = json.loads((d / "status.json").read_text())
    except (OSError, ValueError):
        return {}
    return doc


def events(d: Path) -> list[dict[str, Any]]:
    try:
        lines = (d / "logs" / "events.jsonl").read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        with contextlib.suppress(ValueError):
            out.append(json.loads(line))
    return out


def logged(d: Path, name: str) -> bool:
    return any(e.get("event") == name for e in events(d))


def epoch(stamp: str) -> float:
    """A journal timestamp (ISO, milliseconds, UTC) as Unix seconds."""
    return dt.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=dt.UTC).timestamp()


def complete_text(path: Path) -> str | None:
    """The file's text once a full line is in it."""
    with contextlib.suppress(OSError):
        text = path.read_text()
        if text.endswith("\n"):
            return text
    return None


def read_ints(path: Path) -> list[int] | None:
    with contextlib.suppress(OSError, ValueError):
        return [int(x) for x in path.read_text().split()]
    return None


def p50(xs: list[float]) -> float:
    return statistics.median(xs)


def p99(xs: list[float]) -> float:
    return statistics.quantiles(xs, n=100, method="inclusive")[98] if len(xs) > 1 else xs[0]


def ms(x: float) -> str:
    return f"{x:.1f} ms"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def timed_run(argv: list[str], **kw: Any) -> float:
    """Milliseconds `subprocess.run(argv)` takes (it must succeed)."""
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, **kw)
    return (time.perf_counter() - start) * 1000


# ----- the benchmark context: temp root, clean environment, daemons to clean up ----------
@dataclasses.dataclass
class Ctx:
    """Where experiments go and every daemon started, so cleanup can kill by pid."""

    root: Path
    sizes: Sizes
    env: dict[str, str]
    daemons: list[subprocess.Popen[bytes]] = dataclasses.field(default_factory=list)

    def exp(self, name: str, files: dict[str, str] | None = None) -> Path:
        d = self.root / name
        d.mkdir(parents=True)
        for fname, text in (files or {}).items():
            (d / fname).write_text(text)
        return d

    def mlsm(self, cmd: str, dirs: list[Path], *flags: str, **env: str) -> subprocess.Popen[bytes]:
        with (self.root / f"mlsm-{len(self.daemons)}.out").open("wb") as out:
            proc = subprocess.Popen([PY, "-m", "mlsm.machine.cli", cmd, *map(str, dirs), *flags],
                                    stdout=out, stderr=subprocess.STDOUT, cwd=self.root,
                                    env={**self.env, **env})
        self.daemons.append(proc)
        return proc

    def agent_script(self) -> str:
        path = self.root / "instant_agent.sh"
        if not path.exists():
            path.write_text(INSTANT_AGENT)
        return f"/bin/sh {path}"


def terminate(proc: subprocess.Popen[bytes], timeout: float = 60) -> int:
    """SIGTERM a daemon (it kills its trees), KILL it if it does not exit in time."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def reap(under: Path) -> int:
    """Kill (by pid) every process whose working directory is under `under`."""
    me, killed = os.getpid(), 0
    for proc in psutil.process_iter(["pid", "cwd"]):
        with contextlib.suppress(psutil.Error):
            cwd = proc.info["cwd"] or ""
            if proc.pid != me and cwd.startswith(str(under)):
                proc.kill()
                killed += 1
    return killed


PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    """Adopt our descendants' orphans: this sandbox's pid 1 leaves them as zombies for long,
    which would grow /proc (and every scan of it) trial after trial, as no real init does."""
    libc = ctypes.CDLL(None, use_errno=True)
    return int(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0


def reap_orphans(ctx: Ctx) -> None:
    """Reap adopted zombies (never a daemon we started: its Popen must see its status)."""
    mine = {p.pid for p in ctx.daemons}
    for proc in psutil.Process().children():
        with contextlib.suppress(psutil.Error, ChildProcessError):
            if proc.pid not in mine and proc.status() == psutil.STATUS_ZOMBIE:
                os.waitpid(proc.pid, os.WNOHANG)


def proc_count() -> int:
    return sum(1 for name in os.listdir("/proc") if name.isdigit())


@contextlib.contextmanager
def context(sizes: Sizes, extra_env: dict[str, str] | None = None,
            prefix: str = "mlsm-bench-core-") -> Iterator[Ctx]:
    """A temp root and a clean environment; every daemon and process under it is killed."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLSM_", "FAKE_"))}
    # The daemon's own paths, as before the sandbox existed; tests/bench_sandbox.py measures
    # what bubblewrap adds, side by side.
    env["MLSM_SANDBOX"] = "none"
    ctx = Ctx(root, sizes, {**env, **(extra_env or {})})
    try:
        yield ctx
    finally:
        for proc in ctx.daemons:
            terminate(proc, 30)
        reap(root)
        shutil.rmtree(root, ignore_errors=True)


# ----- 1. IDEA.md -> agent started ------------------------------------------------------
def sh_date_cost() -> tuple[float, float]:
    """(ms from Popen's return to the `date` stamp, ms of Popen itself) for the stamp agent."""
    before = time.time()
    proc = subprocess.Popen(["/bin/sh", "-c", "date +%s.%N"], stdout=subprocess.PIPE)
    after = time.time()
    out, _ = proc.communicate()
    return (float(out) - after) * 1000, (after - before) * 1000


def idea_to_agent(d: Path) -> float:
    """Write IDEA.md; ms until the agent's own `date` stamp."""
    stamp = d / "logs" / "plan" / "started"
    t0 = time.time()
    (d / "IDEA.md").write_text("An idea.\n")
    text = wait_for(lambda: complete_text(stamp), 10, f"agent start in {d.name}")
    return (float(text) - t0) * 1000


def bench_start(ctx: Ctx) -> list[Row]:
    dirs = [ctx.exp(f"start/e{i:03d}") for i in range(ctx.sizes.start)]
    cmd = shlex.join(["/bin/sh", "-c", STAMP_AGENT])
    daemon = ctx.mlsm("watch", dirs, "--agent", "command", "--agent-cmd", cmd, "--grace", "1")
    wait_for(lambda: all(logged(d, "waiting_for_idea") for d in dirs), 120,
             "every experiment waiting for IDEA.md", interval=0.05)
    raw, sh, fork = [], [], []
    for d in dirs:
        cost, popen = sh_date_cost()
        sh.append(cost)
        fork.append(popen)
        time.sleep(0.03)  # let the previous start's bookkeeping finish
        raw.append(idea_to_agent(d))
    t0 = time.monotonic()
    terminate(daemon)
    shutdown = (time.monotonic() - t0) * 1000
    return start_rows(raw, sh, fork, shutdown)


def start_rows(raw: list[float], sh: list[float], fork: list[float],
               shutdown: float) -> list[Row]:
    n = str(len(raw))
    net = [r - p50(sh) for r in raw]
    ok = p50(net) <= 20 and p99(net) <= 50
    return [
        Row("1 IDEA.md → agent started (stamp - sh+date median)", n, ms(p50(net)),
            ms(p99(net)), "p50 ≤ 20 ms, p99 ≤ 50 ms", verdict(ok)),
        Row("1a IDEA.md → agent's `date` stamp (raw)", n, ms(p50(raw)), ms(p99(raw))),
        Row("1b sh + date after exec (subtracted above)", n, ms(p50(sh)), ms(p99(sh))),
        Row("1c Popen of that sh from Python (for scale)", n, ms(p50(fork)), ms(p99(fork))),
        Row(f"1d SIGTERM → `mlsm watch` of {n} planning dirs exited", "1", ms(shutdown)),
    ]


# ----- 2. STOP -> 17-process tree gone --------------------------------------------------
def tree_ready(d: Path) -> tuple[list[int], int] | None:
    """(the 17 pids, the shim pid) once all run and status.json says training."""
    pids = read_ints(d / "pids.txt")
    st = status(d)
    shim = (st.get("training") or {}).get("pid")
    if not pids or len(pids) != 17 or st.get("state") != "training" or not shim:
        return None
    return (pids, shim) if all(map(running, pids)) else None


def stop_trial(ctx: Ctx, d: Path) -> tuple[float, float, float]:
    """ms from `touch STOP` until the 17 are gone, the shim too, status.json says stopped."""
    pids, shim = wait_for(lambda: tree_ready(d), 30, "the 17-process tree")
    marks: dict[str, float] = {}
    t0 = time.monotonic()
    (d / "STOP").touch()
    deadline = t0 + 15
    while len(marks) < 3 and time.monotonic() < deadline:
        now = time.monotonic()
        if "tree" not in marks and not any(map(running, pids)):
            marks["tree"] = now
        if "shim" not in marks and not running(shim):
            marks["shim"] = now
        if "status" not in marks and status(d).get("state") == "stopped":
            marks["status"] = now
        time.sleep(0.001)
    (d / "pids.txt").unlink()
    (d / "STOP").unlink()
    reap_orphans(ctx)

    def elapsed(key: str) -> float:  # a mark never reached reads as the whole deadline
        return (marks.get(key, deadline) - t0) * 1000

    return elapsed("tree"), elapsed("shim"), elapsed("status")


def bench_stop(ctx: Ctx) -> list[Row]:
    d = ctx.exp("stop", {"IDEA.md": "x\n", "PLAN.md": "# plan\n", "train.py": TREE17_TRAIN})
    daemon = ctx.mlsm("watch", [d], "--agent", "command", "--agent-cmd", "/bin/true",
                      "--grace", "2")
    trials = [stop_trial(ctx, d) for _ in range(ctx.sizes.stop)]
    terminate(daemon)
    tree, shim, stopped = (list(col) for col in zip(*trials, strict=True))
    n = str(len(tree))
    return [
        Row("2 STOP → all 17 processes gone", n, ms(p50(tree)), ms(p99(tree)),
            "p99 ≤ 150 ms", verdict(p99(tree) <= 150)),
        Row("2a STOP → the shim (18th process) gone", n, ms(p50(shim)), ms(p99(shim))),
        Row("2b STOP → status.json says stopped", n, ms(p50(stopped)), ms(p99(stopped))),
    ]


# ----- 3. orchestration overhead of one iteration ---------------------------------------
def entries(d: Path, dest: str) -> list[float]:
    """When the run entered `dest`, each time, from the journal."""
    return [epoch(e["timestamp"]) for e in events(d)
            if e.get("event") == "transition" and e.get("dest") == dest]


def state_times(d: Path) -> dict[str, list[float]]:
    """ms per iteration: the whole iteration and the time spent in each of its states."""
    coding, training, analyzing = (entries(d, s) for s in ("coding", "training", "analyzing"))
    out: dict[str, list[float]] = {"iteration": [], "coding": [], "training": [],
                                   "analyzing": []}
    for i, (a, b) in enumerate(itertools.pairwise(coding)):
        out["iteration"].append((b - a) * 1000)
        out["coding"].append((training[i] - a) * 1000)
        out["training"].append((analyzing[i] - training[i]) * 1000)
        out["analyzing"].append((b - analyzing[i]) * 1000)
    return out


def standalone(ctx: Ctx, reps: int) -> dict[str, list[float]]:
    """The same processes an iteration runs, timed alone: agent steps, train.py, shim + train.py."""
    s = ctx.exp("standalone", {"train.src": TRIVIAL_TRAIN, "train.py": TRIVIAL_TRAIN})
    agent = shlex.split(ctx.agent_script())
    env = {**ctx.env, "MLSM_DIR": str(s), "MLSM_RUN_DIR": str(s)}
    out: dict[str, list[float]] = {"code": [], "train": [], "analyze": [], "shim": []}
    for _ in range(reps):
        out["code"].append(timed_run(agent, cwd=s, env={**env, "MLSM_ROLE": "code"}))
        out["train"].append(timed_run([PY, "train.py"], cwd=s, env=env))
        out["analyze"].append(timed_run(agent, cwd=s, env={**env, "MLSM_ROLE": "analyze"}))
        out["shim"].append(timed_run([PY, "-m", "mlsm.hooks.shim", str(s), "--", PY, "train.py"],
                                     cwd=s, env=env, input=b"go\n"))
    return out


def bench_iteration(ctx: Ctx) -> list[Row]:
    d = ctx.exp("iterate", {"IDEA.md": "x\n", "train.src": TRIVIAL_TRAIN})
    n = ctx.sizes.iterations
    proc = ctx.mlsm("run", [d], "--agent", "command", "--agent-cmd", ctx.agent_script(),
                    "--max-iterations", str(n + 1), "--grace", "1")
    code = proc.wait(30 + 3 * n)
    if code != 0 or status(d).get("state") != "done":
        raise RuntimeError(f"mlsm run exited {code} in state {status(d).get('state')}")
    times = state_times(d)
    return iteration_rows(times, standalone(ctx, n))


def iteration_rows(times: dict[str, list[float]], alone: dict[str, list[float]]) -> list[Row]:
    iters = times["iteration"]
    procs = p50(alone["code"]) + p50(alone["train"]) + p50(alone["analyze"])
    shim = p50(alone["shim"]) - p50(alone["train"])
    over = p50(iters) - procs
    n, k = str(len(iters)), str(len(alone["code"]))
    return [
        Row("3 orchestration overhead per iteration (3a - 3b)", n, ms(over),
            target="≤ 150 ms", verdict=verdict(over <= 150)),
        Row("3a iteration wall time (enter coding → next coding)", n, ms(p50(iters)),
            ms(p99(iters))),
        Row("3b its processes alone (code agent + train.py + analyze agent)", k, ms(procs)),
        Row("3c   of which: instant agent (one step)", k, ms(p50(alone["code"])),
            ms(p99(alone["code"]))),
        Row("3d   of which: `python train.py` (trivial)", k, ms(p50(alone["train"])),
            ms(p99(alone["train"]))),
        Row("3e shim's own cost alone (shim + train.py - train.py; serial, while in 3 its "
            "start overlaps the daemon's bookkeeping)", k, ms(shim)),
        *[Row(f"3{c} time in {state} (journal; in brackets: minus {what} alone)", n,
              f"{ms(p50(times[state]))} (+{ms(p50(times[state]) - p50(alone[key]))})",
              ms(p99(times[state])))
          for c, state, key, what in (("f", "coding", "code", "agent"),
                                      ("g", "training", "train", "train.py"),
                                      ("h", "analyzing", "analyze", "agent"))],
    ]


# ----- 4. idle daemon -------------------------------------------------------------------
def cpu_seconds(proc: psutil.Process) -> float:
    """CPU of the daemon, its reaped children and its live descendants."""
    t = proc.cpu_times()
    total: float = t.user + t.system + t.children_user + t.children_system
    for child in proc.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            c = child.cpu_times()
            total += c.user + c.system
    return total


def rss_mb(proc: psutil.Process) -> float:
    total: int = proc.memory_info().rss
    for child in proc.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            total += child.memory_info().rss
    return total / 2**20


def bench_idle(ctx: Ctx) -> list[Row]:
    d = ctx.exp("idle")
    daemon = ctx.mlsm("watch", [d], "--agent", "command", "--agent-cmd", "/bin/true")
    wait_for(lambda: logged(d, "waiting_for_idea"), 30, "waiting_for_idea", interval=0.05)
    proc = psutil.Process(daemon.pid)
    cpu0, t0, rss = cpu_seconds(proc), time.monotonic(), [rss_mb(proc)]
    while time.monotonic() - t0 < ctx.sizes.idle_s:
        time.sleep(min(1.0, ctx.sizes.idle_s - (time.monotonic() - t0)))
        rss.append(rss_mb(proc))
    used = cpu_seconds(proc) - cpu0
    pct = used / (time.monotonic() - t0) * 100
    threads = proc.num_threads()
    terminate(daemon)
    window = f"{ctx.sizes.idle_s:g} s"
    return [
        Row("4 idle `mlsm watch`: CPU (incl. children; 10 ms ticks)", window,
            f"{pct:.3f} % of a core ({used:.2f} s CPU)",
            target="< 0.5 %", verdict=verdict(pct < 0.5)),
        Row(f"4a idle RSS (incl. children; mean, max; {threads} threads)",
            f"{len(rss)} samples", f"{statistics.mean(rss):.1f} MB", f"max {max(rss):.1f} MB",
            "< 60 MB", verdict(max(rss) < 60)),
    ]


# ----- 5. heartbeat latency, kill completeness, crash trials ----------------------------
def beat_trial(d: Path, iteration: int, timeout: float) -> float:
    """ms from (last heartbeat t + timeout) until the training tree (and shim) is gone."""
    run = d / "logs" / f"iter_{iteration:03d}"
    wait_for(lambda: (run / "quiet").exists(), 30, f"iteration {iteration} to stop beating")
    beat_t = float(json.loads((run / "heartbeat.json").read_text())["t"])
    pids = read_ints(run / "pids") or []
    shim = (status(d).get("training") or {}).get("pid")
    pids += [shim] if shim else []
    wait_for(lambda: not any(map(running, pids)), 30, "the stale tree to go")
    return (time.time() - (beat_t + timeout)) * 1000


def beat_trials(ctx: Ctx, d: Path, n: int) -> list[float]:
    out = []
    for i in range(1, n + 1):
        out.append(beat_trial(d, i, 1.0))
        reap_orphans(ctx)
    return out


def bench_heartbeat(ctx: Ctx) -> list[Row]:
    n = ctx.sizes.heartbeat
    d = ctx.exp("beat", {"IDEA.md": "x\n", "PLAN.md": "# plan\n", "train.py": BEAT_TRAIN,
                         "train.src": BEAT_TRAIN})
    daemon = ctx.mlsm("watch", [d], "--agent", "command", "--agent-cmd", ctx.agent_script(),
                      "--heartbeat-timeout", "1", "--grace", "1", "--max-failures", "1000",
                      "--max-iterations", str(n + 2), MLSM_HEARTBEAT_INTERVAL="0.05")
    lat = beat_trials(ctx, d, n)
    terminate(daemon)
    return [Row("5 stale heartbeat: (last beat t + 1 s timeout) → tree gone", str(n),
                ms(p50(lat)), ms(p99(lat)))]


def hard_tree(d: Path) -> list[int] | None:
    """Every recorded pid of tree_train.py plus the shim, once all are recorded."""
    pids = [read_ints(d / "pids" / name) for name in TREE_NAMES]
    st = status(d)
    shim = (st.get("training") or {}).get("pid")
    if st.get("state") != "training" or not shim or not all(pids):
        return None
    return [shim, *(p[0] for p in pids if p)]


def kill_trial(ctx: Ctx, d: Path) -> tuple[int, int, int, float]:
    """(processes alive at STOP, survivors at `stopped`, survivors 0.5 s later, ms to gone)."""
    pids = wait_for(lambda: hard_tree(d), 30, "tree_train.py's tree")
    live = [p for p in pids if running(p)]
    t0 = time.monotonic()
    (d / "STOP").touch()
    wait_for(lambda: status(d).get("state") == "stopped", 30, "stopped")
    at_stop = sum(map(running, live))
    gone = (time.monotonic() - t0) * 1000 if not at_stop else float("nan")
    time.sleep(0.5)
    later = [p for p in live if running(p)]
    for pid in later:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    shutil.rmtree(d / "pids")
    (d / "STOP").unlink()
    reap_orphans(ctx)
    return len(live), at_stop, len(later), gone


def bench_kill(ctx: Ctx) -> list[Row]:
    d = ctx.exp("kill", {"IDEA.md": "x\n", "PLAN.md": "# plan\n",
                         "train.py": TREE_TRAIN.read_text()})
    daemon = ctx.mlsm("watch", [d], "--agent", "command", "--agent-cmd", "/bin/true",
                      "--grace", "0.5")
    trials = [kill_trial(ctx, d) for _ in range(ctx.sizes.kill)]
    terminate(daemon)
    total = sum(t[0] for t in trials)
    at_stop, later = sum(t[1] for t in trials), sum(t[2] for t in trials)
    times = [t[3] for t in trials if t[3] == t[3]]
    n = str(len(trials))
    return [
        Row("5a kill completeness (--grace 0.5): survivors at `stopped` / processes", n,
            f"{at_stop} / {total}", f"{later} still alive 0.5 s later", "0",
            verdict(at_stop == 0 and later == 0)),
        Row("5b STOP → status `stopped`, that hard tree all gone", str(len(times)),
            ms(p50(times)) if times else "—", ms(p99(times)) if times else "—"),
    ]


def launches(d: Path) -> Counter[str]:
    try:
        return Counter((d / "launches.log").read_text().split())
    except OSError:
        return Counter()


def progressed(d: Path, run: subprocess.Popen[bytes], target: int) -> bool:
    return len(events(d)) >= target or run.poll() is not None


def crash_trial(ctx: Ctx, index: int, rng: random.Random) -> tuple[int, int, int, bool]:
    """(kills, duplicated launches, lost iterations, final run ok) of one chaos trial."""
    d = ctx.exp(f"crash/t{index:02d}", {"IDEA.md": "x\n"})
    args = ("--agent", "command", "--agent-cmd", f"{PY} {FAKE_AGENT}", "--grace", "2",
            "--retry-backoff", "0.05", "--max-iterations", "3")
    env = {"FAKE_TRAIN_BODY": COUNTED_TRAIN, "MLSM_HEARTBEAT_INTERVAL": "0.05"}
    kills = 0
    for _ in range(ctx.sizes.crash_kills):
        target = len(events(d)) + rng.randint(1, 12)
        run = ctx.mlsm("run", [d], *args, **env)
        wait_for(functools.partial(progressed, d, run, target), 60, "journal progress",
                 interval=0.002)
        if run.poll() is not None:
            break
        run.kill()  # kill -9 at a random point of the journal
        run.wait()
        kills += 1
    final = ctx.mlsm("run", [d], *args, **env)
    ok = final.wait(120) == 0 and status(d).get("state") == "done"
    reap(d)
    reap_orphans(ctx)
    return (kills, *lost_or_doubled(d), ok)


def lost_or_doubled(d: Path) -> tuple[int, int]:
    counts = launches(d)
    history = [row["iteration"] for row in status(d).get("history", [])]
    duplicated = sum(c - 1 for c in counts.values() if c > 1) + len(history) - len(set(history))
    lost = len({1, 2, 3} - set(history)) + len({"1", "2", "3"} - set(counts))
    return duplicated, lost


def bench_crash(ctx: Ctx) -> list[Row]:
    rng = random.Random(7)
    trials = [crash_trial(ctx, i, rng) for i in range(ctx.sizes.crash)]
    reap(ctx.root / "crash")
    kills = sum(t[0] for t in trials)
    dup, lost = sum(t[1] for t in trials), sum(t[2] for t in trials)
    bad = sum(not t[3] for t in trials)
    return [Row("5c crash (kill -9 `mlsm run`): duplicated launches / lost iterations / "
                "final runs not done", f"{len(trials)} ({kills} kills)",
                f"{dup} / {lost} / {bad}", target="0 / 0 / 0",
                verdict=verdict(dup == lost == bad == 0))]


# ----- report ---------------------------------------------------------------------------
def versions() -> str:
    found = [f"Python {platform.python_version()}"]
    for name in ("mlsm", "psutil", "watchdog", "transitions"):
        try:
            found.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{name} ?")
    return ", ".join(found)


def cpu() -> str:
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{model}, {os.cpu_count()} cores (load average at start {load}), " \
           f"{platform.system()} {platform.release()}"


def idleness(window: float = 1.0) -> str:
    """How busy the machine was over `window` seconds before the start. A leaked process once
    used a CPU through a whole session of measurements and made the daemon look 40 ms slower."""
    procs = list(psutil.process_iter())
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.cpu_percent(None)  # the first reading only starts the count
    busy = psutil.cpu_percent(interval=window) * (os.cpu_count() or 1)
    usage: list[tuple[float, str]] = []
    zombies = 0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            zombies += proc.status() == psutil.STATUS_ZOMBIE
            usage.append((proc.cpu_percent(None), f"{proc.name()} pid {proc.pid}"))
    line = f"{busy:.0f} % of a CPU busy over {window:g} s before the start, {zombies} zombies"
    if busy <= 20 and zombies <= 10:
        return line
    top = max(usage, default=(0.0, "?"))
    warning = (f"NOT IDLE: {line} (busiest: {top[1]}, {top[0]:.0f} %); these figures are not "
               f"comparable with an idle run")
    print(warning, file=sys.stderr, flush=True)
    return warning


def table(rows: list[Row]) -> str:
    lines = ["| measurement | trials | median | p99 | target | result |",
             "|---|---:|---:|---:|---|---|"]
    lines += [f"| {r.name} | {r.trials} | {r.median} | {r.p99} | {r.target} | {r.verdict} |"
              for r in rows]
    return "\n".join(lines)


SECTIONS: tuple[tuple[str, Callable[[Ctx], list[Row]]], ...] = (
    ("IDEA.md → agent start", bench_start),
    ("STOP → 17-process tree gone", bench_stop),
    ("orchestration overhead", bench_iteration),
    ("idle daemon", bench_idle),
    ("heartbeat detection", bench_heartbeat),
    ("kill completeness", bench_kill),
    ("crash trials", bench_crash),
)


def run_section(ctx: Ctx, title: str, fn: Callable[[Ctx], list[Row]]) -> list[Row]:
    started = time.monotonic()
    try:
        rows = fn(ctx)
    except (TimeoutError, RuntimeError, subprocess.SubprocessError, OSError) as exc:
        rows = [Row(f"{title}: did not complete", "—", f"{type(exc).__name__}: {exc}",
                    verdict="MISS")]
    print(f"  {title}: {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="few trials (< 90 s)")
    parser.add_argument("--only", action="append", metavar="WORD",
                        help="only the sections whose title has WORD (repeatable)")
    args = parser.parse_args()
    sizes = QUICK if args.quick else Sizes()
    sections = [(t, fn) for t, fn in SECTIONS
                if not args.only or any(w.lower() in t.lower() for w in args.only)]
    reaper = become_subreaper()
    header = f"{versions()}\n\n{cpu()}; {idleness()}; {proc_count()} processes at start"
    started = time.monotonic()
    rows: list[Row] = []
    with context(sizes) as ctx:
        for title, fn in sections:
            rows += run_section(ctx, title, fn)
    header += f", {proc_count()} at the end; the benchmark " + (
        "is a child subreaper and reaps orphans between trials" if reaper
        else "could not become a subreaper: orphans are left to pid 1")
    mode = "--quick" if sizes == QUICK else "full"
    print(f"## mlsm core benchmark ({mode})\n\n{header}\n")
    print(table(rows))
    print(f"\ntotal {time.monotonic() - started:.0f} s; medians of derived rows are "
          "differences of medians; p99 = 99th percentile (inclusive), ≈ max for few trials")
    misses = [r.name for r in rows if r.verdict == "MISS"]
    return 1 if misses else 0


if __name__ == "__main__":
    sys.exit(main())
