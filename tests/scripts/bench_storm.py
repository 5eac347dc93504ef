"""A training that storms its experiment root (10,000 files a pass) and floods stdout."""

import json
import os
import sys
import time
from pathlib import Path

FILES = 10_000
LIFETIME_S = 300.0  # a safety net: the benchmark kills it long before
LINE = "x" * 200
root = Path(os.environ["MLSM_DIR"])
run = Path(os.environ["MLSM_RUN_DIR"])
start, written, out_bytes = time.monotonic(), 0, 0


def note(name: str, text: str) -> None:
    """Write a file in the run folder (not the watched root) atomically."""
    (run / f".{name}.tmp").write_text(text)
    os.replace(run / f".{name}.tmp", run / name)


while time.monotonic() - start < LIFETIME_S:  # create 10,000 files (stdout line each), delete
    for i in range(FILES):
        (root / f"storm_{i:05d}.txt").write_text(LINE)
        out_bytes += sys.stdout.write(f"{written:9d} {LINE}\n")
        written += 1
        if written % 1000 == 0:
            note("storm.json", json.dumps({"files": written, "stdout_bytes": out_bytes,
                                           "s": time.monotonic() - start}))
        if written == 1000:  # in full swing: the benchmark may STOP now
            note("storm.pid", str(os.getpid()))
    for i in range(FILES):
        (root / f"storm_{i:05d}.txt").unlink()
