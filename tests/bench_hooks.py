"""Benchmark of mlsm.hooks against plain JSON lines and TensorBoard; prints markdown tables."""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

BATCH, BATCHES = 10_000, 200  # per-call cost: the time of BATCH calls / BATCH, BATCHES times
SLOW_BATCH, SLOW_BATCHES = 1_000, 30  # for calls of tens of microseconds (keeps the run short)
TRAIN_STEPS, TRAIN_ROUNDS = 200, 30  # short rounds, many: a drifting load hits all alike


def per_call(loop: Callable[[int], None], batch: int, batches: int) -> list[float]:
    """Microseconds per call, one sample per batch; `loop(n)` makes n calls."""
    loop(min(batch, 1000))  # warm up: first writes, lazy imports, caches
    samples = []
    for _ in range(batches):
        start = time.perf_counter()
        loop(batch)
        samples.append((time.perf_counter() - start) / batch * 1e6)
    return samples


def heartbeat_loop(hooks: ModuleType) -> Callable[[int], None]:
    beat = hooks.heartbeat

    def loop(n: int) -> None:
        for _ in range(n):
            beat()
    return loop


def forced_beat_loop(hooks: ModuleType) -> Callable[[int], None]:
    beat = hooks.heartbeat

    def loop(n: int) -> None:
        for _ in range(n):
            beat(expect_next_within=60.0)
    return loop


def log_loop(hooks: ModuleType, values: list[float]) -> Callable[[int], None]:
    log = hooks.log

    def loop(n: int) -> None:
        for i in range(n):
            log(step=i, loss=values[i & 1023])
    return loop


def jsonl_loop(path: Path, values: list[float]) -> Callable[[int], None]:
    fh = open(path, "a")  # noqa: SIM115 (kept open for the whole run, as a logger would)
    dumps, now = json.dumps, time.time

    def loop(n: int) -> None:
        for i in range(n):
            fh.write(dumps({"step": i, "t": now(), "loss": values[i & 1023]}) + "\n")
    return loop


def tensorboard_loop(log_dir: Path, values: list[float]) -> Callable[[int], None] | None:
    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("tensorboard") is None:
        return None
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(log_dir))

    def loop(n: int) -> None:
        for i in range(n):
            writer.add_scalar("loss", values[i & 1023], i)
    return loop


def p99(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=100)[98]


def call_table(results: dict[str, list[float]], reference: str) -> str:
    base = statistics.median(results[reference])
    lines = ["| call | median µs/call | p99 µs/call | ratio to hooks.log |", "|---|---:|---:|---:|"]
    for name, samples in results.items():
        median = statistics.median(samples)
        lines.append(f"| {name} | {median:.3f} | {p99(samples):.3f} | {median / base:.2f} |")
    return "\n".join(lines)


VARIANTS = ("no logging", "loss.item() only (what any logger pays)",
            "hooks.log(step=step, loss=loss.item())")


Training = tuple[dict[str, tuple[float, float]], float, float]


def train_rates(hooks: ModuleType) -> Training | None:
    """Per variant of a tiny CPU MLP's step: median steps/s, and the median over rounds of its
    slowdown against no logging (rounds rotate the order, so a drifting load hits all alike);
    then the µs spent inside hooks.log per step and the median step time in µs."""
    if importlib.util.find_spec("torch") is None:
        return None
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))
    opt = torch.optim.SGD(net.parameters(), lr=1e-3)
    x, y = torch.randn(32, 64), torch.randn(32, 1)

    clock, inside = time.perf_counter, [0.0]

    def run(variant: int) -> float:
        start = clock()
        for step in range(TRAIN_STEPS):
            loss = torch.nn.functional.mse_loss(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if variant == 1:
                loss.item()
            elif variant == 2:
                value = loss.item()
                before = clock()  # the log call alone: a direct measure, immune to load drift
                hooks.log(step=step, loss=value)
                inside[0] += clock() - before
        return TRAIN_STEPS / (clock() - start)

    rates: list[list[float]] = [[] for _ in VARIANTS]
    for r in range(-1, TRAIN_ROUNDS):  # round -1 warms up
        for v in [(r + k) % len(VARIANTS) for k in range(len(VARIANTS))]:
            rate = run(v)
            if r >= 0:
                rates[v].append(rate)
            else:
                inside[0] = 0.0
    slow = [[p / q - 1 for p, q in zip(rates[0], mine, strict=True)] for mine in rates]
    table = {name: (statistics.median(rates[i]), statistics.median(slow[i]))
             for i, name in enumerate(VARIANTS)}
    return table, inside[0] / (TRAIN_ROUNDS * TRAIN_STEPS) * 1e6, 1e6 / statistics.median(rates[2])


def import_ms(run_dir: Path) -> float:
    """Milliseconds `from mlsm import hooks` takes in a fresh process under mlsm (best of 5)."""
    code = ("import time; t = time.perf_counter(); from mlsm import hooks; "
            "print((time.perf_counter() - t) * 1e3)")
    env = {**os.environ, "MLSM_RUN_DIR": str(run_dir)}
    runs = [subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                           text=True, check=True).stdout for _ in range(5)]
    return min(float(out) for out in runs)


def versions() -> str:
    found = []
    for name in ("torch", "tensorboard"):
        try:
            found.append(f"{name} {__import__(name).__version__}")
        except ImportError:
            found.append(f"{name} not installed")
    return f"Python {platform.python_version()}, " + ", ".join(found) + f", {platform.machine()}"


def measure(hooks: ModuleType, tmp: Path) -> dict[str, list[float]]:
    rng = random.Random(0)
    values = [rng.random() for _ in range(1024)]
    results = {
        "hooks.heartbeat() (rate-limited: ≤1 write/s)":
            per_call(heartbeat_loop(hooks), BATCH, BATCHES),
        "hooks.log(step=i, loss=x) (amortised, flushes included)":
            per_call(log_loop(hooks, values), BATCH, BATCHES),
        'f.write(json.dumps({"step", "t", "loss"}) + "\\n")':
            per_call(jsonl_loop(tmp / "plain.jsonl", values), BATCH, BATCHES),
        "hooks.heartbeat(expect_next_within=60) (always writes)":
            per_call(forced_beat_loop(hooks), SLOW_BATCH, SLOW_BATCHES),
    }
    tb = tensorboard_loop(tmp / "tb", values)
    if tb is not None:
        results["SummaryWriter.add_scalar (torch.utils.tensorboard)"] = per_call(
            tb, SLOW_BATCH, SLOW_BATCHES)
    return results


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="mlsm-bench-") as folder:
        tmp = Path(folder)
        os.environ["MLSM_RUN_DIR"] = str(tmp)  # before the import: hooks read it once
        from mlsm import hooks

        started = time.perf_counter()
        results = measure(hooks, tmp)
        rates = train_rates(hooks)
        hooks.flush()
        print(f"## mlsm.hooks benchmark\n\n{versions()}; import of mlsm.hooks: "
              f"{import_ms(tmp):.1f} ms\n")
        print(call_table(results, "hooks.log(step=i, loss=x) (amortised, flushes included)"))
        print(f"\n(batches of {BATCH} calls, {BATCHES} of them; writing calls: {SLOW_BATCHES} "
              f"batches of {SLOW_BATCH})")
        print_training(rates)
        print(f"\ntotal {time.perf_counter() - started:.0f} s")
    return 0


def print_training(training: Training | None) -> None:
    if training is None:
        print("\ntorch not installed: training loop skipped")
        return
    rates, inside, step = training
    print(f"\n| tiny MLP 64-64-1, batch 32, 1 thread ({TRAIN_ROUNDS} rounds of {TRAIN_STEPS} "
          "steps) | steps/s (median) | slowdown (median of rounds) |")
    print("|---|---:|---:|")
    for name, (rate, slowdown) in rates.items():
        print(f"| {name} | {rate:,.0f} | {slowdown * 100:+.1f} % |")
    print(f"\nTimed directly inside the loop, hooks.log took {inside:.2f} µs per step: "
          f"{inside / step * 100:.2f} % of a {step:.0f} µs step.")


if __name__ == "__main__":
    sys.exit(main())
