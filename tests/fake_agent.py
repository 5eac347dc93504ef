#!/usr/bin/env python3
"""A scripted fake agent for tests: behaviour per role chosen by FAKE_* variables and marker files.

- `<exp>/hang_<role>` exists: hang (with a child and a grandchild) until killed.
- FAKE_IGNORE_TERM=1: the hanging agent ignores SIGTERM.
- FAKE_FAIL_ROLE=<role>: exit 3 without a product.  FAKE_NO_PRODUCT_ROLE: exit 0, no product.
- FAKE_DECISION: the analyze decision (default: continue, or finish at FAKE_FINISH_AT).
- FAKE_TRAIN_BODY: the train.py the code role writes.
- FAKE_DECISION_FILE: decision.json is a copy of this file's bytes (hostile decisions).
- FAKE_DECISION_SPECIAL=fifo|devzero: decision.json is a FIFO / a link to /dev/zero.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

TRAIN = '''\
from mlsm import hooks
for i in range(3):
    hooks.log(step=i, total_steps=3, loss=1.0 / (i + 1 + {it}))
hooks.result(loss=1.0 / ({it} + 1), goal="minimize")
print("done iteration {it}")
'''
SLEEPER = "import signal\nwhile True: signal.pause()"


def hang(exp: Path, role: str) -> None:
    if os.environ.get("FAKE_IGNORE_TERM"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    child = subprocess.Popen([sys.executable, "-c",
                              f"import subprocess,sys,time; subprocess.Popen([sys.executable,"
                              f"'-c',{SLEEPER!r}]); import signal; signal.pause()"])
    tmp = exp / f".hung_{role}.tmp"
    tmp.write_text(f"{os.getpid()} {child.pid}")
    tmp.rename(exp / f"hung_{role}.pid")  # atomic: a reader never sees it half-written
    while True:
        signal.pause()


def write_product(role: str, exp: Path, run_dir: Path, it: int) -> None:
    if role == "plan":
        (exp / "PLAN.md").write_text("# Plan\nTry things.\n")
    elif role == "code":
        body = os.environ.get("FAKE_TRAIN_BODY") or TRAIN.format(it=it)
        (exp / "train.py").write_text(body)
    elif role == "analyze" and plant_decision(run_dir / "decision.json"):
        return
    elif role == "analyze":
        finish_at = int(os.environ.get("FAKE_FINISH_AT", "0") or 0)
        decision = os.environ.get("FAKE_DECISION") or (
            "finish" if finish_at and it >= finish_at else "continue")
        (run_dir / "decision.json").write_text(json.dumps(
            {"decision": decision, "reason": f"fake decision at iteration {it}"}))
    elif role == "report":
        (exp / "REPORT.md").write_text("# Report\n\n## Summary\nFake.\n")


def plant_decision(path: Path) -> bool:
    """A hostile decision.json from FAKE_DECISION_FILE or FAKE_DECISION_SPECIAL; False: none."""
    special = os.environ.get("FAKE_DECISION_SPECIAL")
    if special == "fifo":
        os.mkfifo(path)
    elif special == "devzero":
        os.symlink("/dev/zero", path)
    elif os.environ.get("FAKE_DECISION_FILE"):
        path.write_bytes(Path(os.environ["FAKE_DECISION_FILE"]).read_bytes())
    else:
        return False
    return True


def main() -> int:
    role = os.environ["MLSM_ROLE"]
    exp = Path(os.environ["MLSM_DIR"])
    run_dir = Path(os.environ["MLSM_RUN_DIR"])
    it = int(os.environ["MLSM_ITERATION"])
    print(f"fake agent role={role} iteration={it} pid={os.getpid()}", flush=True)
    assert Path(os.environ["MLSM_PROMPT_FILE"]).is_file()
    assert "Ground rules" in Path(os.environ["MLSM_INSTRUCTIONS_FILE"]).read_text()
    with (exp / "agent_calls.log").open("a") as fh:
        fh.write(f"{role} {it}\n")
    if (exp / f"hang_{role}").exists():
        hang(exp, role)
    if os.environ.get("FAKE_FAIL_ROLE") == role:
        print("fake agent: deliberate failure", file=sys.stderr)
        return 3
    if os.environ.get("FAKE_NO_PRODUCT_ROLE") != role:
        write_product(role, exp, run_dir, it)
    return 0


if __name__ == "__main__":
    sys.exit(main())
