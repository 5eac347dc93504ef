"""The training shim: nothing runs without the daemon's go; every ending lands in exit.json."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SHIM = [sys.executable, "-m", "mlsm.hooks.shim"]


def _shim(run_dir: Path, argv: list[str], stdin: bytes) -> int:
    done = subprocess.run([*SHIM, str(run_dir), "--", *argv], input=stdin,
                          capture_output=True, timeout=60, check=False)
    return done.returncode


def test_without_go_nothing_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    code = _shim(tmp_path, [sys.executable, "-c", f"open({str(marker)!r}, 'w')"], b"")
    assert code == 75 and not marker.exists() and not (tmp_path / "exit.json").exists()


def test_go_runs_and_records_the_exit(tmp_path: Path) -> None:
    assert _shim(tmp_path, [sys.executable, "-c", "raise SystemExit(4)"], b"go\n") == 4
    record = json.loads((tmp_path / "exit.json").read_text())
    assert record["returncode"] == 4 and record["reason"] == "exited"
    assert record["duration_s"] >= 0 and record["pid"] > 0


def test_a_signal_is_recorded_by_name(tmp_path: Path) -> None:
    code = _shim(tmp_path, [sys.executable, "-c", "import os; os.kill(os.getpid(), 9)"], b"go\n")
    assert code == 128 + 9
    record = json.loads((tmp_path / "exit.json").read_text())
    assert record["signal"] == "SIGKILL" and record["reason"] == "signal"


def test_a_missing_command_is_a_clear_exit(tmp_path: Path) -> None:
    assert _shim(tmp_path, ["no-such-trainer-xyz"], b"go\n") == 127
    record = json.loads((tmp_path / "exit.json").read_text())
    assert "cannot start training command 'no-such-trainer-xyz'" in record["detail"]


def test_a_kill_note_names_the_reason(tmp_path: Path) -> None:
    (tmp_path / "kill.json").write_text(json.dumps(
        {"reason": "stale_heartbeat", "detail": "no heartbeat for 9s", "seconds": 9.0}))
    _shim(tmp_path, [sys.executable, "-c", "import os; os.kill(os.getpid(), 15)"], b"go\n")
    record = json.loads((tmp_path / "exit.json").read_text())
    assert record["reason"] == "stale_heartbeat" and record["seconds"] == 9.0
    assert record["signal"] == "SIGTERM"
