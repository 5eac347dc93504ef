"""status.json: atomic writes, clear refusals, nothing truncated when the disk says no."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from mlsm.machine.core import status as store
from mlsm.machine.core import store as files
from mlsm.machine.core.errors import InputError
from mlsm.machine.core.status import Status


def test_roundtrip_and_no_temp_left(tmp_path: Path) -> None:
    doc = Status(max_iterations=5)
    store.write_status(tmp_path, doc)
    assert store.read_status(tmp_path) == doc
    assert json.loads((tmp_path / "status.json").read_text())["schema"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["status.json"]


def test_missing_is_none(tmp_path: Path) -> None:
    assert store.read_status(tmp_path) is None


def test_disk_full_keeps_last_good_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    good = Status(max_iterations=5)
    store.write_status(tmp_path, good)
    before = (tmp_path / "status.json").read_bytes()
    real_write = os.write

    def full(fd: int, data: bytes) -> int:
        real_write(fd, bytes(data)[:10])  # a partial write, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(files.StoreError, match=r"No space left on device.*retried"):
        store.write_status(tmp_path, Status(max_iterations=5, iteration=3))
    monkeypatch.undo()
    assert (tmp_path / "status.json").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["status.json"]


def test_stray_temps_removed(tmp_path: Path) -> None:
    (tmp_path / ".status.json.123.tmp").write_text("{partial")
    (tmp_path / "keep.tmp").write_text("x")
    removed = files.remove_stray_temps(tmp_path)
    assert [p.name for p in removed] == [".status.json.123.tmp"]
    assert (tmp_path / "keep.tmp").exists()


@pytest.mark.parametrize("content,needle", [
    (b"", "corrupt (Expecting value"),
    (b'{"schema": 1, "state": "idle", "iteration": -1}', "iteration must be"),
    (b'{"schema": 1, "state": "idle", "iteration": 0, "training": 5}',
     "training has the wrong type"),
    (b'{"schema": 99}', "schema 99"),
    (b"[1, 2]", "not a JSON object"),
])
def test_refusals_name_the_problem(tmp_path: Path, content: bytes, needle: str) -> None:
    (tmp_path / "status.json").write_bytes(content)
    with pytest.raises(InputError) as info:
        store.read_status(tmp_path)
    assert needle in str(info.value)


def test_status_dir_is_refused(tmp_path: Path) -> None:
    (tmp_path / "status.json").mkdir()
    with pytest.raises(InputError, match="is a directory"):
        store.read_status(tmp_path)


def test_seed_format_adopted(tmp_path: Path) -> None:
    (tmp_path / "status.json").write_text(json.dumps(
        {"iteration": 4, "timestamp": "x", "complete": True}))
    doc = store.read_status(tmp_path)
    assert doc is not None and doc.state == "done" and doc.iteration == 4
