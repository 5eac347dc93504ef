"""Read the person's files safely: IDEA.md and friends, with one-sentence problems."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from mlsm.hooks.rundir import read_capped


def file_signature(path: Path) -> tuple[int, int, int] | None:
    """(mode, size, mtime_ns) of a path, or None when it does not exist; used to log once."""
    try:
        st = path.lstat()
    except OSError:
        return None
    return (st.st_mode, st.st_size, st.st_mtime_ns)


TEXT_CAP = 1 << 20
"""The largest IDEA.md or PLAN.md mlsm reads (1 MB): it is copied into every prompt."""


def read_text_file(path: Path, what: str | None = None,
                   cap: int = TEXT_CAP) -> tuple[str | None, str | None]:
    """(text, None) when usable; (None, problem) when present but bad; (None, None) if absent.

    A link may point inside the experiment only (a link to /etc/passwd would be sent to an
    API); special files are refused without opening them, so a FIFO cannot block a read.
    """
    what = what or path.name
    if not path.exists():
        if path.is_symlink():
            return None, f"{what} is a broken link ({path} -> {os.readlink(path)}): fix the link"
        return None, None
    problem = _kind_problem(path, what, cap)
    if problem:
        return None, problem
    data = read_capped(path.resolve(), cap)
    if data is None:
        return None, f"cannot read {what}: check the file and its permissions"
    return _decode(data, what)


def _kind_problem(path: Path, what: str, cap: int) -> str | None:
    try:
        st = path.stat()
    except OSError as exc:
        return f"cannot read {what} ({exc.strerror}): check the file"
    if stat.S_ISDIR(st.st_mode):
        return f"{what} is a directory, not a file: remove it and write a text file"
    if not stat.S_ISREG(st.st_mode):
        return f"{what} is not a regular file: replace it with a text file"
    if path.is_symlink() and path.parent.resolve() not in path.resolve().parents:
        return (f"{what} is a link to {path.resolve()}, outside the experiment: copy the text "
                f"into the experiment instead")
    if st.st_size > cap:
        return (f"{what} is {st.st_size / 2**20:.1f} MB, more than mlsm reads "
                f"({cap >> 20} MB): shorten it")
    return None


def _decode(data: bytes, what: str) -> tuple[str | None, str | None]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, (f"{what} is not UTF-8 text (bad byte at offset {exc.start}): "
                      f"save it as UTF-8")
    if "\0" in text:
        return None, f"{what} contains NUL bytes (is it a binary file?): save it as plain text"
    if not text.strip():
        return None, f"{what} is empty: write the experiment idea in it to start"
    return text, None
