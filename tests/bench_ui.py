"""Figures for the web UI, the trackers and the TensorBoard question; prints markdown tables.

Usage: `python tests/bench_ui.py [--quick] [--n 200]` (not collected by pytest). Needs
starlette + uvicorn, Playwright with Debian's Chromium for the page figures, mlflow and wandb
for the export figures, torch for the training-loop figures; a part whose needs are missing
is skipped with a line saying why.

1. The overview over N experiments (copies of a finished one) served by `mlsm ui`: time to
   first paint (navigation start → the rows drawn, measured in the page), status.json
   written → the row changed in the page (both clocks are this machine's), and the server's
   CPU and memory while idle, with no page and with one overview open.
2. Export per iteration to MLflow (SQLite and file store), W&B (offline) and TensorBoard's
   event files, after the fact, from the files.
3. The training loop's speed under `mlsm run` with --mlflow, --wandb, --tensorboard and with
   none, alternating runs, logging every step and every 10th. Run on an older commit, where
   --tensorboard mirrored from inside the training loop, it measures that design too.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
from helpers import wait_for  # the tests' helpers: this script lives beside them

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
AGENT = f"{PY} {REPO / 'tests' / 'fake_agent.py'}"
CHROMIUM = os.environ.get("MLSM_CHROMIUM", "/usr/bin/chromium")
OFFLINE = {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "MLFLOW_ALLOW_FILE_STORE": "true",
           "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1"}
PACKAGES = ("mlsm", "starlette", "uvicorn", "playwright", "mlflow", "wandb", "torch",
            "tensorboard")
FAST_TRAIN = '''\
import os
from mlsm import hooks
it = int(os.environ["MLSM_ITERATION"])
hooks.params(lr=0.1, hidden=64)
for i in range({steps}):
    hooks.log(step=i, total_steps={steps}, loss=1.0 / (i + it), acc=i / {steps})
hooks.result(loss=1.0 / (it + 1), goal="minimize")
'''
MLP_TRAIN = '''\
import time, torch
from mlsm import hooks
torch.set_num_threads(1)
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))
opt = torch.optim.SGD(model.parameters(), lr=0.01)
x, y = torch.randn(32, 64), torch.randn(32, 1)
n = {steps}
t0 = time.perf_counter()
for step in range(n):
    loss = torch.nn.functional.mse_loss(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    if step % {every} == 0:
        hooks.log(step=step, total_steps=n, loss=loss.item())
hooks.result(steps_per_s=n / (time.perf_counter() - t0), goal="maximize")
'''
Row = tuple[str, str, str, str, str]  # measurement, trials, median, p99, target/result


# ----- helpers ---------------------------------------------------------------------------------
def env(**extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("MLSM_", "FAKE_"))}
    return {**base, **OFFLINE, **extra}


def p50(xs: list[float]) -> float:
    return statistics.median(xs)


def p99(xs: list[float]) -> float:
    return statistics.quantiles(xs, n=100, method="inclusive")[98] if len(xs) > 1 else xs[0]


def mlsm(*args: str | Path, extra_env: dict[str, str] | None = None,
         timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PY, "-m", "mlsm.machine.cli", *map(str, args)], capture_output=True,
                          text=True, env=env(**(extra_env or {})), timeout=timeout)


def finished(root: Path, name: str, iterations: int, body: str) -> Path:
    """A DONE experiment made by a real `mlsm run` with the scripted fake agent."""
    d = root / name
    d.mkdir(parents=True)
    (d / "IDEA.md").write_text("Make the loss small.\n")
    done = mlsm("run", d, "--agent", "command", "--agent-cmd", AGENT, "--max-iterations",
                str(iterations), extra_env={"FAKE_TRAIN_BODY": body})
    if done.returncode != 0:
        raise RuntimeError(f"mlsm run failed: {done.stdout[-2000:]}{done.stderr[-2000:]}")
    return d


def copies(template: Path, root: Path, n: int) -> list[Path]:
    root.mkdir()
    out = []
    for k in range(n):
        d = root / f"exp-{k:03d}"
        shutil.copytree(template, d, ignore=shutil.ignore_patterns("git", "lock"))
        out.append(d)
    return out


@contextlib.contextmanager
def ui_server(*args: str | Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    out = Path(tempfile.mkdtemp(prefix="mlsm-ui-")) / "server.out"
    with out.open("wb") as fh:
        proc = subprocess.Popen([PY, "-m", "mlsm.machine.cli", *map(str, args)], stdout=fh,
                                stderr=subprocess.STDOUT, env=env())
    try:
        url = wait_for(lambda: re.search(r"(http://127\.0\.0\.1:\d+/)", out.read_text()), 60,
                   "the UI's URL")
        yield proc, url.group(1)
    finally:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(30)
        proc.kill()
        shutil.rmtree(out.parent, ignore_errors=True)


def idle_usage(proc: psutil.Process, seconds: float) -> tuple[float, float]:
    """(CPU % of one core, resident MB) of `proc` and its children over `seconds`."""
    def cpu_s() -> float:
        total = 0.0
        for p in (proc, *proc.children(recursive=True)):
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                total += t.user + t.system
        return total

    before, t0 = cpu_s(), time.monotonic()
    time.sleep(seconds)  # the measuring window itself: nothing to wait on but time
    used, wall = cpu_s() - before, time.monotonic() - t0
    rss = sum(p.memory_info().rss for p in (proc, *proc.children(recursive=True)))
    return 100 * used / wall, rss / 2**20


# ----- 1. the overview -------------------------------------------------------------------------
OBSERVE = """() => {
  window.__seen = [];
  new MutationObserver((muts) => {
    const now = Date.now();
    for (const m of muts) {
      const tr = m.target.closest ? m.target.closest('tr[data-key]') : null;
      if (tr) window.__seen.push([tr.dataset.key, now, tr.textContent]);
    }
  }).observe(document.querySelector('tbody'), {childList: true, subtree: true});
}"""


def bench_page(root: Path, dirs: list[Path], trials: int, idle_s: float) -> list[Row]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return [("overview figures", "-", "-", "-", "skipped: playwright is not installed")]
    if not Path(CHROMIUM).exists():
        return [("overview figures", "-", "-", "-", f"skipped: no Chromium at {CHROMIUM}")]
    rows: list[Row] = []
    with ui_server("ui", root, "--port", "0") as (proc, url), sync_playwright() as p:
        server = psutil.Process(proc.pid)
        urllib.request.urlopen(url + "api/overview", timeout=60).read()  # the first look
        time.sleep(5)  # let the start settle before the window
        cpu0, rss0 = idle_usage(server, idle_s)
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        floor = blank_paints(browser, trials)
        rows.append(("floor: an empty page from a plain HTTP server, a new profile each time",
                     str(len(floor)), f"{p50(floor):.0f} ms", f"{p99(floor):.0f} ms", ""))
        for label, fresh in (("a new browser profile each time", True),
                             ("the page opened again", False)):
            paints = first_paints(browser, url, trials, fresh, len(dirs))
            rows.append((f"overview of {len(dirs)}: first paint, {label}", str(len(paints)),
                         f"{p50(paints):.0f} ms", f"{p99(paints):.0f} ms",
                         "≤ 300 ms " + ("✔" if p99(paints) <= 300 else "✘")))
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        page.goto(url)
        page.wait_for_function("() => window.mlsmPainted > 0")
        page.evaluate(OBSERVE)
        lat = [update_latency(page, dirs[(k * 37) % len(dirs)], k) for k in range(trials)]
        rows.append(("status.json written → row changed in the page", str(len(lat)),
                     f"{p50(lat):.0f} ms", f"{p99(lat):.0f} ms",
                     "p99 ≤ 500 ms " + ("✔" if p99(lat) <= 500 else "✘")))
        cpu1, rss1 = idle_usage(server, idle_s)
        browser.close()
    rows.append((f"`mlsm ui` idle over {len(dirs)}, no page open ({idle_s:.0f} s)", "1",
                 f"{cpu0:.2f} % CPU", f"{rss0:.0f} MB", ""))
    rows.append((f"`mlsm ui` idle over {len(dirs)}, one overview open ({idle_s:.0f} s)", "1",
                 f"{cpu1:.2f} % CPU", f"{rss1:.0f} MB", ""))
    return rows


BLANK = (b"<!doctype html><html><body><p>x</p><script>requestAnimationFrame(() => "
         b"{ window.mlsmPainted = performance.now(); });</script></body></html>")


def blank_paints(browser: Any, trials: int) -> list[float]:
    """The browser's own share: an empty page, served by http.server, to its first frame."""
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("content-type", "text/html")
            self.send_header("content-length", str(len(BLANK)))
            self.end_headers()
            self.wfile.write(BLANK)

        def log_message(self, *_: Any) -> None:
            return

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        out = []
        for _ in range(trials):
            context = browser.new_context()
            page = context.new_page()
            page.goto(url)
            page.wait_for_function("() => window.mlsmPainted > 0")
            out.append(float(page.evaluate("() => window.mlsmPainted")))
            context.close()
        return out
    finally:
        server.shutdown()
        server.server_close()


def first_paints(browser: Any, url: str, trials: int, fresh: bool, n: int) -> list[float]:
    """Navigation start → the rows drawn (window.mlsmPainted, read in the page)."""
    out = []
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    for _ in range(trials):
        if fresh:
            context.close()
            context = browser.new_context(viewport={"width": 1440, "height": 900})
        page = context.new_page()
        page.goto(url)
        page.wait_for_function("() => window.mlsmPainted > 0", timeout=30_000)
        out.append(float(page.evaluate("() => window.mlsmPainted")))
        assert page.locator("tbody tr").count() == n
        page.close()
    context.close()
    return out


def update_latency(page: Any, d: Path, k: int) -> float:
    """Write a new cost into status.json (atomically) and time it until the row shows it."""
    doc = json.loads((d / "status.json").read_text())
    cost = 100 + k + 0.25
    doc["cost_usd"] = cost
    doc["seq"] = doc.get("seq", 0) + 1
    tmp = d / ".status.json.bench.tmp"
    tmp.write_text(json.dumps(doc))
    t0 = time.time()
    os.replace(tmp, d / "status.json")
    needle = f"${cost:.2f}"
    seen = wait_for(lambda: page.evaluate(
        "([k, n]) => (window.__seen.find(s => s[0] === k && s[2].includes(n)) || [0, 0])[1]",
        [d.name, needle]), 10, f"{d.name} showing {needle}", interval=0.02)
    return float(seen) - t0 * 1000


def bench_daemon_ui(root: Path, n: int, idle_s: float) -> list[Row]:
    """What --ui adds to an idle daemon over the same N finished experiments."""
    rows: list[Row] = []
    for label, extra in (("without --ui", []), ("with --ui", ["--ui", str(free_port())])):
        proc = subprocess.Popen([PY, "-m", "mlsm.machine.cli", "watch", "--discover", str(root),
                                 "--agent", "command", "--agent-cmd", "/bin/true", *extra],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env())
        try:
            daemon = psutil.Process(proc.pid)
            wait_for(lambda: sum(1 for d in root.iterdir() if (d / ".mlsm" / "lock").exists()) >= n,
                 120, "every experiment adopted")
            time.sleep(20)  # let the start settle before the window
            cpu, rss = idle_usage(daemon, idle_s)
            rows.append((f"idle daemon over {n} finished experiments, {label} ({idle_s:.0f} s)",
                         "1", f"{cpu:.2f} % CPU", f"{rss:.0f} MB", ""))
        finally:
            proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(60)
            proc.kill()
    return rows


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# ----- 2. export -------------------------------------------------------------------------------
def bench_export(root: Path, iterations: int, steps: int) -> list[Row]:
    from mlsm.machine.views.export import make_target
    from mlsm.machine.views.export.base import Exporter

    source = finished(root, "export-src", iterations, FAST_TRAIN.format(steps=steps))
    rows: list[Row] = []
    cases = [("MLflow, SQLite store", "mlflow", f"sqlite:///{root / 'mlflow.db'}"),
             ("MLflow, file store", "mlflow", (root / "mlruns").as_uri()),
             ("W&B, offline", "wandb", ""),
             ("TensorBoard event files", "tensorboard", "")]
    os.environ.update(OFFLINE)
    os.environ["WANDB_DIR"] = str(root / "wb")
    for label, name, setting in cases:
        d = root / f"export-{name}-{len(rows)}"
        shutil.copytree(source, d, ignore=shutil.ignore_patterns("git", "lock", "export_*"))
        try:
            t0 = time.perf_counter()
            target = make_target(name, setting, d)
            opened = time.perf_counter() - t0
        except ImportError:
            rows.append((f"export to {label}", "-", "-", "-", f"skipped: no {name}"))
            continue
        t1 = time.perf_counter()
        ended = Exporter(d, target).sync()
        per_it = (time.perf_counter() - t1) / iterations
        target.shutdown()
        assert ended, label
        rows.append((f"export to {label}: per iteration ({steps} steps x 2 metrics, params, "
                     f"result, 4 files)", str(iterations), f"{per_it * 1000:.0f} ms", "",
                     f"import + open: {opened:.1f} s, once per daemon"))
    return rows


# ----- 3. the training loop --------------------------------------------------------------------
def loop_speed(root: Path, label: str, k: int, flags: list[str], steps: int,
               every: int) -> float:
    d = root / f"loop-{label}-{every}-{k}"
    d.mkdir()
    (d / "IDEA.md").write_text("x\n")
    extra = {"FAKE_TRAIN_BODY": MLP_TRAIN.format(steps=steps, every=every),
             "WANDB_DIR": str(root / "wb")}
    done = mlsm("run", d, "--agent", "command", "--agent-cmd", AGENT, "--max-iterations", "1",
                *flags, extra_env=extra)
    if done.returncode != 0:
        raise RuntimeError(f"{label}: {done.stdout[-1500:]}{done.stderr[-1500:]}")
    result = json.loads((d / "logs" / "iter_001" / "result.json").read_text())
    return float(result["metrics"]["steps_per_s"])


def bench_loop(root: Path, rounds: int, steps: int, every: int,
               trackers: tuple[str, ...] = ("mlflow", "wandb", "tensorboard")) -> list[Row]:
    try:
        import torch  # noqa: F401
    except ImportError:
        return [("training loop", "-", "-", "-", "skipped: torch is not installed")]
    configs = {"none": [], "--mlflow": ["--mlflow", f"sqlite:///{root / 'loop.db'}"],
               "--wandb": ["--wandb"], "--tensorboard": ["--tensorboard"]}
    configs = {k: v for k, v in configs.items() if k == "none" or k.strip("-") in trackers}
    speeds: dict[str, list[float]] = {k: [] for k in configs}
    for k in range(rounds):
        for label, flags in configs.items():  # alternating: drift hits every config alike
            speeds[label].append(loop_speed(root, label.strip("-"), k, flags, steps, every))
    base = p50(speeds["none"])
    rows: list[Row] = []
    for label, xs in speeds.items():
        change = 100 * (base / p50(xs) - 1)
        spread = 100 * (max(xs) - min(xs)) / p50(xs)
        often = "step" if every == 1 else f"{every} steps"
        rows.append((f"tiny-MLP loop, `hooks.log` every {often}, under `mlsm run` {label}",
                     str(len(xs)),
                     f"{p50(xs):,.0f} steps/s", f"spread {spread:.1f} %",
                     "baseline" if label == "none" else f"slowdown {change:+.1f} %"))
    return rows


# ----- main ------------------------------------------------------------------------------------
def versions() -> str:
    found = []
    for name in PACKAGES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found.append(f"{name} {importlib.metadata.version(name)}")
    return ", ".join(found)


def table(rows: list[Row]) -> str:
    lines = ["| measurement | trials | median | p99 / spread | target / note |",
             "|---|---:|---:|---:|---|"]
    lines += [f"| {' | '.join(r)} |" for r in rows]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer trials, shorter windows")
    ap.add_argument("--n", type=int, default=200, help="experiments in the overview")
    ap.add_argument("--only", choices=("page", "daemon", "export", "loop"), action="append")
    ap.add_argument("--trackers", default="mlflow,wandb,tensorboard",
                    help="which to compare in the training-loop figures")
    ap.add_argument("--every", default="1,10", help="hooks.log every N steps, for each N")
    args = ap.parse_args()
    trials, idle_s, rounds = (10, 10.0, 2) if args.quick else (50, 60.0, 5)
    parts = set(args.only or ("page", "daemon", "export", "loop"))
    root = Path(tempfile.mkdtemp(prefix="mlsm-bench-ui-"))
    started = time.monotonic()
    rows: list[Row] = []
    try:
        if parts & {"page", "daemon"}:
            template = finished(root, "template", 3, FAST_TRAIN.format(steps=500))
            dirs = copies(template, root / "many", args.n)
            if "page" in parts:
                rows += bench_page(root / "many", dirs, trials, idle_s)
            if "daemon" in parts:
                rows += bench_daemon_ui(root / "many", args.n, idle_s)
        if "export" in parts:
            rows += bench_export(root, 5, 2000)
        if "loop" in parts:
            for every in map(int, args.every.split(",")):
                rows += bench_loop(root, rounds, 20_000 if args.quick else 40_000, every,
                                   tuple(args.trackers.split(",")))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        cpu = next(line.split(":", 1)[1].strip()
                   for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    print(f"\n## mlsm UI, trackers and training loop ({os.cpu_count()} CPUs, {cpu}; "
          f"Python {platform.python_version()}; {versions()})\n")
    print(table(rows))
    print(f"\n(total {time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
