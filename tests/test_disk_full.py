"""A full disk: status.json keeps its last good state, one clear error, and the run carries on."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import Experiment, wait_for

FILL = '''\
import os
from pathlib import Path
with open(Path(os.environ["MLSM_RUN_DIR"]) / "filler", "wb") as fh:  # the one writable place
    try:
        while True:
            fh.write(b"x" * 65536)
            fh.flush()
    except OSError:
        pass
print("disk full", flush=True)
'''


@pytest.fixture
def small_fs(exp: Experiment) -> Iterator[Path]:
    """A 4 MiB tmpfs mounted on the experiment directory (needs root; skipped otherwise)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(exp.path)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield exp.path
    finally:
        with contextlib.suppress(Exception):
            subprocess.run(["umount", "-l", str(exp.path)], check=False)


def _valid_status(d: Path) -> bool:
    try:
        json.loads((d / "status.json").read_text())
    except FileNotFoundError:
        return True
    except ValueError:
        return False
    return True


def test_full_disk_keeps_last_good_state_and_recovers(exp: Experiment, small_fs: Path) -> None:
    exp.write("IDEA.md", "x")
    exp.write("PLAN.md", "# plan\n")
    exp.write("train.py", FILL)
    daemon = exp.mlsm("watch", "--max-iterations", "1", "--agent-retries", "8",
                      "--retry-backoff", "0.5")
    wait_for(lambda: "status_write_failed" in daemon.output()
             or "environment_error" in daemon.output(), 60, "the daemon to notice the full disk")
    out = daemon.output()
    assert "No space left on device" in out
    # One clear error per outage (a few bytes freed elsewhere may end one early), not one per
    # retry every 2 s.
    assert out.count("status_write_failed") <= out.count("status_write_recovered") + 1
    for _ in range(20):
        assert _valid_status(small_fs)  # never a truncated file
    (small_fs / "logs" / "iter_001" / "filler").unlink()
    exp.wait_state("done", timeout=60)
    assert "status_write_recovered" in exp.runner_log() or \
        "status_write_recovered" in daemon.output()
    daemon.signal(15)
    daemon.wait()
