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
from typing import Any

BATCH, BATCHES = 10_000, 200  # per-call cost: the time of BATCH calls / BATCH, BATCHES times
SLOW_BATCH, SLOW_BATCHES = 1_000, 30  # for calls of tens of microseconds (keeps the run short)
TRAIN_STEPS, TRAIN_ROUNDS = 200, 150  # short rounds, many: a drifting load hits all alike


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


BASE, LOGGED, TIMED = 0, 1, 2  # modes of a training round


def train(log: Callable[..., object], by_name: bool, steps: int, rounds: int,
          batch: int = 32) -> dict[str, Any]:
    """A tiny CPU MLP (64-64-1, batch 32, 1 thread): `rounds` pairs of rounds without and with
    `log` every step, the order alternating, then rounds that time the call alone.

    `loss.item()` runs in every round, so only the logger differs. The call is made directly,
    `log(step=s, loss=v)` when `by_name` (hooks.log's signature), else `log(s, v)`: a wrapper
    or a timer around it would be charged to the logger, so the steps/s rounds have neither.
    """
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))
    opt = torch.optim.SGD(net.parameters(), lr=1e-3)
    x, y, clock = torch.randn(batch, 64), torch.randn(batch, 1), time.perf_counter

    def run(mode: int) -> tuple[float, float]:
        inside, start = 0.0, clock()
        for step in range(steps):
            loss = torch.nn.functional.mse_loss(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            value = loss.item()
            if mode == LOGGED:
                if by_name:
                    log(step=step, loss=value)
                else:
                    log(step, value)
            elif mode == TIMED:
                before = clock()
                if by_name:
                    log(step=step, loss=value)
                else:
                    log(step, value)
                inside += clock() - before
        return steps / (clock() - start), inside

    base: list[float] = []
    logged: list[float] = []
    for r in range(-1, rounds):  # round -1 warms up
        for mode in (BASE, LOGGED) if r % 2 else (LOGGED, BASE):
            rate = run(mode)[0]
            if r >= 0:
                (logged if mode == LOGGED else base).append(rate)
    timed = max(3, rounds // 5)
    inside = sum(run(TIMED)[1] for _ in range(timed))
    return {"base": base, "log": logged, "inside_us": inside / (timed * steps) * 1e6}


def slowdowns(doc: dict[str, Any]) -> list[float]:
    """Per pair of rounds: steps/s without / with the logger - 1."""
    return [b / w - 1 for b, w in zip(doc["base"], doc["log"], strict=True)]


def empty_log(step: int | None = None, *, total_steps: int | None = None,
              **metrics: float) -> None:
    """hooks.log's signature and nothing else: the floor for any hook written in Python."""


def clock_and_buffer() -> Callable[..., None]:
    """What any Python logger of timed rows must do at least: read the clock, keep the row."""
    rows: list[tuple[int | None, float, dict[str, float]]] = []
    now = time.monotonic

    def log(step: int | None = None, **metrics: float) -> None:
        rows.append((step, now(), metrics))
        if len(rows) >= 4096:
            rows.clear()
    return log


def train_rates(hooks: ModuleType) -> dict[str, dict[str, Any]] | None:
    """hooks.log and two floors, each in its own rounds of the tiny MLP."""
    if importlib.util.find_spec("torch") is None:
        return None
    contenders = {"hooks.log(step=step, loss=loss.item())": hooks.log,
                  "floor: an empty function with hooks.log's signature": empty_log,
                  "floor: read the clock and keep the row, nothing else": clock_and_buffer()}
    out = {name: train(log, True, TRAIN_STEPS, TRAIN_ROUNDS) for name, log in contenders.items()}
    # the cost is per call: with more work per step, the same call is a smaller share
    out["hooks.log, the same MLP with batch 2048"] = train(hooks.log, True, TRAIN_STEPS,
                                                            TRAIN_ROUNDS // 3, batch=2048)
    return out


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


def print_training(training: dict[str, dict[str, Any]] | None) -> None:
    if training is None:
        print("\ntorch not installed: training loop skipped")
        return
    print(f"\n| tiny MLP 64-64-1, batch 32, 1 thread, logging every step (pairs of {TRAIN_STEPS}-"
          f"step rounds: {TRAIN_ROUNDS}, {TRAIN_ROUNDS // 3} for batch 2048) | steps/s without | "
          "steps/s with | slowdown, median (IQR) | inside the call, µs/step (% of a step) |")
    print("|---|---:|---:|---:|---:|")
    for name, doc in training.items():
        slow = sorted(slowdowns(doc))
        q1, q3 = statistics.quantiles(slow, n=4)[0], statistics.quantiles(slow, n=4)[2]
        step_us = 1e6 / statistics.median(doc["log"])
        print(f"| {name} | {statistics.median(doc['base']):,.0f} | "
              f"{statistics.median(doc['log']):,.0f} | {statistics.median(slow) * 100:+.2f} % "
              f"({q1 * 100:+.2f} to {q3 * 100:+.2f}) | {doc['inside_us']:.2f} "
              f"({doc['inside_us'] / step_us * 100:.2f} %) |")


if __name__ == "__main__":
    sys.exit(main())
