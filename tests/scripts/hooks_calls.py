"""A seeded random sequence of hooks.log calls of every shape; prints what each odd call raised.

Run twice, with MLSM_HOOKS_COMPILED=0 and without: both processes must write the same
metrics.jsonl (but for "t") and print the same lines (tests/test_hooks.py compares them).
"""

from __future__ import annotations

import math
import random
import sys
from typing import Any

from mlsm import hooks

try:
    import torch
except ImportError:  # the tensor cases are skipped; both runs skip them alike
    torch = None

FLOATS = [0.5, -0.0, 1e-300, 1e300, -2.5, math.nan, math.inf, -math.inf, 1 / 3, 0.1, 1e-7,
          1.7976931348623157e308, 123456789012.5]
ODD = [3, True, None, "x", 2**70, [1.0]]
STEPS: list[Any] = [0, 1, 10**15, -5, None, 2.7, "3", True, 2**70]
NAMES = [("loss",), ("loss", "acc"), ('q"uote', "a%d", "ünï"), ("val_loss",), ("lr", "loss"),
         tuple(f"m{i}" for i in range(20))]


def value(rng: random.Random) -> Any:
    roll = rng.random()
    if roll < 0.75:
        return rng.random()
    if roll < 0.9:
        return rng.choice(FLOATS)
    if roll < 0.95 and torch is not None:
        return torch.tensor(rng.random())
    return rng.choice(ODD)


def call(rng: random.Random, log: Any) -> None:
    names = rng.choice(NAMES)
    metrics = {name: value(rng) for name in names[: rng.randint(0, len(names))]}
    step = rng.randint(0, 10**6) if rng.random() < 0.8 else rng.choice(STEPS)
    extra: dict[str, Any] = {}
    if rng.random() < 0.2:
        extra["total_steps"] = rng.choice([1000, 1000, 2000, None, 2**70, "many"])
    try:
        if rng.random() < 0.2:
            log(step, **extra, **metrics)  # step given by position
        elif rng.random() < 0.05:
            log(step, 2, **metrics)  # one positional too many
        elif rng.random() < 0.05:
            log(step, step=step, **metrics)  # step given twice
        else:
            log(step=step, **extra, **metrics)
    except TypeError as exc:
        print(f"TypeError: {exc}")


def main() -> int:
    rng = random.Random(int(sys.argv[1]))
    log = hooks.log  # bound once, as a training script does
    for i in range(int(sys.argv[2])):
        call(rng, log)
        if i % 997 == 0:
            hooks.flush()
    hooks.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
