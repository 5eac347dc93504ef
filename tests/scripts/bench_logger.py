"""Loggers timed in a fresh process (µs per call, tiny-MLP slowdown); prints one JSON line."""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

Loop = Callable[[int], None]  # makes n logging calls
Step = Callable[..., object]  # logs one value: log(step, value), or hooks.log(step=, loss=)
Setup = tuple[Loop, Step, Callable[[], None]]  # ... and a close/flush at the end
BATCHED = 100  # metrics per log_batch call in the buffered MLflow variant


@functools.cache
def bench_hooks() -> ModuleType:
    """tests/bench_hooks.py, for its per-call measuring loop (one method for every logger)."""
    path = Path(__file__).resolve().parents[1] / "bench_hooks.py"
    spec = importlib.util.spec_from_file_location("bench_hooks", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def setup_hooks(tmp: Path, values: list[float]) -> Setup:
    # MLSM_RUN_DIR is set by the parent: hooks read their configuration at import.
    from mlsm import hooks

    # hooks.log itself: train() calls it as log(step=s, loss=v), with no wrapper to pay for
    return bench_hooks().log_loop(hooks, values), hooks.log, hooks.flush


def setup_jsonl(tmp: Path, values: list[float]) -> Setup:
    fh = open(tmp / "train.jsonl", "a")  # noqa: SIM115 (open for the whole run, as a logger)
    dumps, now = json.dumps, time.time

    def step(s: int, v: float) -> None:
        fh.write(dumps({"step": s, "t": now(), "loss": v}) + "\n")
    return bench_hooks().jsonl_loop(tmp / "plain.jsonl", values), step, fh.close


def setup_tensorboard(tmp: Path, values: list[float]) -> Setup:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(tmp / "tb-train"))
    loop = bench_hooks().tensorboard_loop(tmp / "tb", values)
    assert loop is not None
    return loop, lambda s, v: writer.add_scalar("loss", v, s), writer.close


def setup_wandb(tmp: Path, values: list[float]) -> Setup:
    import wandb

    run = wandb.init(project="mlsm-bench", dir=str(tmp), mode="offline")
    log = wandb.log

    def loop(n: int) -> None:
        for i in range(n):
            log({"loss": values[i & 1023]})  # wandb counts steps itself: they must increase

    def close() -> None:
        run.finish()
        wandb.teardown()  # stops wandb-core, so no process outlives this one
    return loop, lambda s, v: log({"loss": v}), close


def start_mlflow(store: str, tmp: Path) -> tuple[ModuleType, Any]:
    import mlflow

    # MLflow 3 refuses the file store unless MLFLOW_ALLOW_FILE_STORE=true; sqlite is its default.
    uri = (tmp / "mlruns").as_uri() if store == "file" else f"sqlite:///{tmp / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    return mlflow, mlflow.start_run()


def setup_mlflow_metric(store: str) -> Callable[[Path, list[float]], Setup]:
    def setup(tmp: Path, values: list[float]) -> Setup:
        mlflow, _ = start_mlflow(store, tmp)
        log = mlflow.log_metric

        def loop(n: int) -> None:
            for i in range(n):
                log("loss", values[i & 1023], step=i)
        return loop, lambda s, v: log("loss", v, step=s), mlflow.end_run
    return setup


def setup_mlflow_batch(store: str, per_call: int) -> Callable[[Path, list[float]], Setup]:
    """log_batch with `per_call` Metrics a call; the loop buffers, so costs are per metric."""
    def setup(tmp: Path, values: list[float]) -> Setup:
        mlflow, run = start_mlflow(store, tmp)
        from mlflow.entities import Metric
        from mlflow.tracking import MlflowClient

        batch, run_id, buf = MlflowClient().log_batch, run.info.run_id, []

        def step(s: int, v: float) -> None:
            buf.append(Metric("loss", v, int(time.time() * 1000), s))
            if len(buf) >= per_call:
                batch(run_id, metrics=buf[:])
                buf.clear()

        def loop(n: int) -> None:
            for i in range(n):
                step(i, values[i & 1023])
        return loop, step, mlflow.end_run
    return setup


SETUPS: dict[str, tuple[str, Callable[[Path, list[float]], Setup]]] = {
    "hooks": ("mlsm", setup_hooks),
    "hooks-py": ("mlsm", setup_hooks),  # run with MLSM_HOOKS_COMPILED=0
    "jsonl": ("json", setup_jsonl),
    "tensorboard": ("tensorboard", setup_tensorboard),
    "wandb": ("wandb", setup_wandb),
    "mlflow-metric-file": ("mlflow", setup_mlflow_metric("file")),
    "mlflow-batch1-file": ("mlflow", setup_mlflow_batch("file", 1)),
    f"mlflow-batch{BATCHED}-file": ("mlflow", setup_mlflow_batch("file", BATCHED)),
    "mlflow-metric-sqlite": ("mlflow", setup_mlflow_metric("sqlite")),
    "mlflow-batch1-sqlite": ("mlflow", setup_mlflow_batch("sqlite", 1)),
}


def measure(key: str, tmp: Path, sizes: dict[str, int]) -> dict[str, Any]:
    """Per-call samples, then the training rounds, of one contender (set up in `tmp`)."""
    package, setup = SETUPS[key]
    if package != "json" and importlib.util.find_spec(package) is None:
        return {"missing": package}
    rng = random.Random(0)
    values = [rng.random() for _ in range(1024)]
    tmp.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    loop, step, close = setup(tmp, values)
    doc: dict[str, Any] = {"setup_s": time.perf_counter() - t0}
    doc["per_call"] = bench_hooks().per_call(loop, sizes["calls"], sizes["batches"])
    doc.update(bench_hooks().train(step, key.startswith("hooks"), sizes["steps"], sizes["rounds"]))
    t0 = time.perf_counter()
    close()
    doc["close_s"] = time.perf_counter() - t0
    return doc


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("tmp", type=Path, help="a folder for the loggers' files")
    parser.add_argument("spec", help='JSON: {"<contender>": {"calls", "batches", "steps", '
                        '"rounds"}, ...}, run in this order, one after another')
    a = parser.parse_args()
    out: dict[str, Any] = {}
    for key, sizes in json.loads(a.spec).items():
        try:
            out[key] = measure(key, a.tmp / key, sizes)
        except Exception as exc:  # one broken library must not hide the others' figures
            out[key] = {"error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
