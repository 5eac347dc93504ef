#!/usr/bin/env python3
"""A scripted fake agent for tests: behaviour per role chosen by FAKE_* environment variables."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

TRAIN = '''\
import json, os, sys
from mlsm import hooks
for i in range(3):
    hooks.log(step=i, total_steps=3, loss=1.0 / (i + 1 + {it}))
hooks.result(loss=1.0 / ({it} + 1), goal="minimize")
print("done iteration {it}")
'''


def main() -> int:
    role = os.environ["MLSM_ROLE"]
    exp = Path(os.environ["MLSM_DIR"])
    run_dir = Path(os.environ["MLSM_RUN_DIR"])
    it = int(os.environ["MLSM_ITERATION"])
    print(f"fake agent role={role} iteration={it} pid={os.getpid()}", flush=True)
    assert Path(os.environ["MLSM_PROMPT_FILE"]).is_file()
    (exp / f".fake_{role}_pid").write_text(str(os.getpid()))
    if os.environ.get("FAKE_HANG_ROLE") == role:
        if os.environ.get("FAKE_IGNORE_TERM"):
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        while True:
            time.sleep(3600)
    fail_role = os.environ.get("FAKE_FAIL_ROLE")
    if fail_role == role:
        print("fake agent: deliberate failure", file=sys.stderr)
        return 3
    if os.environ.get("FAKE_NO_PRODUCT_ROLE") == role:
        return 0
    if role == "plan":
        (exp / "PLAN.md").write_text("# Plan\nTry things.\n")
    elif role == "code":
        body = os.environ.get("FAKE_TRAIN_BODY") or TRAIN.format(it=it)
        (exp / "train.py").write_text(body)
    elif role == "analyze":
        finish_at = int(os.environ.get("FAKE_FINISH_AT", "0") or 0)
        decision = os.environ.get("FAKE_DECISION") or (
            "finish" if finish_at and it >= finish_at else "continue")
        (run_dir / "decision.json").write_text(json.dumps(
            {"decision": decision, "reason": f"fake decision at iteration {it}"}))
    elif role == "report":
        (exp / "REPORT.md").write_text("# Report\n\n## Summary\nFake.\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
