"""How quick `mlsm status DIR` is beside a bare `python -c pass`; prints a markdown table.

Usage: `python tests/bench_status.py [DIR] [--trials N]`. Without DIR it makes a finished
experiment first (two iterations with the fake agent). The two commands alternate, so the
ratio of their medians is measured side by side on the same (noisy) machine.

Both run without PYTHONDONTWRITEBYTECODE, and a warm-up run of each comes first, so mlsm's
modules are imported from their cached bytecode, as an installed mlsm is: with that variable
set, a module edited since its last cache is compiled again on every start (about 10 ms each).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
MLSM = str(Path(PY).with_name("mlsm"))
TARGET_RATIO = 4.0
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def finished_experiment(root: Path) -> Path:
    """A DONE experiment made by a real `mlsm run` with the scripted fake agent."""
    d = root / "fin"
    d.mkdir()
    (d / "IDEA.md").write_text("Make the loss small.\n")
    agent = f"{PY} {REPO / 'tests' / 'fake_agent.py'}"
    subprocess.run([MLSM, "run", str(d), "--agent", "command", "--agent-cmd", agent,
                    "--max-iterations", "2", "--retry-backoff", "0.05"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    return d


def elapsed_ms(argv: list[str]) -> tuple[float, float]:
    """Wall and CPU (user + system) milliseconds of one run; CPU suffers less from load."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, env=ENV)
    wall = (time.perf_counter() - start) * 1000
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) * 1000
    return wall, cpu


Samples = dict[str, list[tuple[float, float]]]


def measure(exp_dir: Path, trials: int) -> Samples:
    commands = {"`python -c pass`": [PY, "-c", "pass"],
                "`mlsm status DIR` (DONE)": [MLSM, "status", str(exp_dir)]}
    for _ in range(2):  # warm the page cache and write the bytecode caches
        for argv in commands.values():
            elapsed_ms(argv)
    samples: Samples = {name: [] for name in commands}
    for _ in range(trials):  # alternate, so both see the same load
        for name, argv in commands.items():
            samples[name].append(elapsed_ms(argv))
    return samples


def table(samples: Samples) -> str:
    rows = ["| command | wall median ms | wall min-max ms | CPU median ms | wall ratio | "
            "CPU ratio |", "|---|---:|---:|---:|---:|---:|"]
    bare = samples["`python -c pass`"]
    base_wall, base_cpu = (statistics.median(xs) for xs in zip(*bare, strict=True))
    for name, runs in samples.items():
        walls, cpus = zip(*runs, strict=True)
        wall, cpu = statistics.median(walls), statistics.median(cpus)
        rows.append(f"| {name} | {wall:.1f} | {min(walls):.1f}-{max(walls):.1f} | {cpu:.1f} | "
                    f"{wall / base_wall:.2f} | {cpu / base_cpu:.2f} |")
    status = [w for w, _ in samples["`mlsm status DIR` (DONE)"]]
    ratio = statistics.median(status) / base_wall
    verdict = "✔" if ratio <= TARGET_RATIO else "✘"
    rows.append(f"\nwall ratio {ratio:.2f} (target ≤ {TARGET_RATIO:g}) {verdict}, "
                f"{len(status)} trials each, Python {sys.version.split()[0]}, "
                f"load average {os.getloadavg()[0]:.2f}")
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("dir", nargs="?", type=Path)
    parser.add_argument("--trials", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        exp_dir = args.dir or finished_experiment(Path(tmp))
        samples = measure(exp_dir, args.trials)
    print(table(samples))
    return 0


if __name__ == "__main__":
    sys.exit(main())
