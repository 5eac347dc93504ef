"""What the sandbox costs: launch time and STOP → tree gone, with and without bwrap, side by side.

Run `python tests/bench_sandbox.py [--trials N]`; prints a markdown table. Rounds alternate
between the two modes so the machine's noise falls on both alike.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import helpers  # the tests' helpers: this script lives beside them in tests/

from mlsm.handlers.launchers import sandbox
from mlsm.handlers.training import shim_argv

PY = sys.executable
TREE = Path(__file__).parent / "scripts" / "tree_train.py"
NAMES = ("main", "child", "grandchild", "setsid_grandchild", "setsid", "ignores_term",
         "orphan_parent", "orphan")


def launch_once(root: Path, wrapped: bool) -> float:
    """Seconds from the shim's start to the training's first line (a stamp it writes)."""
    exp, run = root / "exp", root / "exp" / "logs" / "iter_001"
    run.mkdir(parents=True, exist_ok=True)
    stamp = run / "stamp"
    stamp.unlink(missing_ok=True)
    argv = [PY, "-c", f"import time; open({str(stamp)!r}, 'w').write(repr(time.time()))"]
    if wrapped:
        argv = sandbox.wrap(argv, sandbox.Policy(exp, run, home=Path.home()))
    start = time.time()
    proc = subprocess.Popen(shim_argv(run, argv), cwd=exp, stdin=subprocess.PIPE)
    assert proc.stdin is not None
    proc.stdin.write(b"go\n")
    proc.stdin.close()
    proc.wait(30)
    return float(stamp.read_text()) - start


def stop_once(root: Path, mode: str) -> float:
    """Seconds from STOP to every process of the 8-process tree gone (one ignores SIGTERM, so
    each trial includes --grace 0.5 before the SIGKILL)."""
    exp, shared = root / f"stop-{mode}", root / f"shared-{mode}"
    shutil.rmtree(exp, ignore_errors=True)
    shutil.rmtree(shared, ignore_errors=True)
    exp.mkdir()
    shared.mkdir()
    for name, text in (("IDEA.md", "x\n"), ("PLAN.md", "# p\n"), ("train.py", TREE.read_text())):
        (exp / name).write_text(text)
    daemon = subprocess.Popen([PY, "-m", "mlsm.machine.cli", "watch", str(exp), "--agent",
                               "command", "--agent-cmd", "/bin/true", "--grace", "0.5",
                               "--sandbox", mode, "--sandbox-bind", str(shared)],
                              cwd=root, env={"TEST_SHARED": str(shared), "PATH": "/usr/bin:/bin"},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        pids_dir = shared / "pids"
        helpers.wait_for(lambda: all((pids_dir / n).exists() for n in NAMES), 30, "tree")
        pids = helpers.host_pids(exp, [int((pids_dir / n).read_text()) for n in NAMES])
        start = time.monotonic()
        (exp / "STOP").touch()
        helpers.wait_for(lambda: all(helpers.gone(p) for p in pids), 30, "tree gone", 0.001)
        return time.monotonic() - start
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(30)


def row(name: str, xs: list[float]) -> str:
    ms = sorted(x * 1000 for x in xs)
    p99 = ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))]
    return f"| {name} | {len(ms)} | {statistics.median(ms):.1f} ms | {p99:.1f} ms |"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=30)
    n = parser.parse_args().trials
    problem = sandbox.preflight()
    if problem:
        print(f"no sandbox here: {problem}")
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        plain, boxed = [], []
        for _ in range(n):
            plain.append(launch_once(root, False))
            boxed.append(launch_once(root, True))
        stop_plain, stop_boxed = [], []
        for _ in range(max(3, n // 3)):
            stop_plain.append(stop_once(root, "none"))
            stop_boxed.append(stop_once(root, "bwrap"))
    extra = [b - p for b, p in zip(boxed, plain, strict=True)]  # paired: adjacent rounds
    print("| measurement | trials | median | p99 |\n|---|---:|---:|---:|")
    for name, xs in (("shim start → training's first line, no sandbox", plain),
                     ("… in bwrap", boxed), ("bwrap's extra, paired rounds", extra),
                     ("STOP → tree gone (incl. --grace 0.5), no sandbox", stop_plain),
                     ("STOP → tree gone (incl. --grace 0.5), bwrap", stop_boxed)):
        print(row(name, xs))
    print(f"\nsandbox start-up over an unsandboxed launch: "
          f"{statistics.median(extra) * 1000:.1f} ms, the median of paired rounds "
          f"(target ≤ 20 ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
