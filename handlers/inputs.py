"""Read the person's files safely: IDEA.md and friends, with one-sentence problems."""

from __future__ import annotations

import os
import stat
from pathlib import Path


def file_signature(path: Path) -> tuple[int, int, int] | None:
    """(mode, size, mtime_ns) of a path, or None when it does not exist; used to log once."""
    try:
        st = path.lstat()
    except OSError:
        return None
    return (st.st_mode, st.st_size, st.st_mtime_ns)


def read_text_file(path: Path, what: str | None = None) -> tuple[str | None, str | None]:
    """(text, None) when usable; (None, problem) when present but bad; (None, None) if absent."""
    what = what or path.name
    if not path.exists():
        if path.is_symlink():
            return None, f"{what} is a broken link ({path} -> {os.readlink(path)}): fix the link"
        return None, None
    try:
        st = path.stat()
    except OSError as exc:
        return None, f"cannot read {what} ({exc.strerror}): check the file"
    if stat.S_ISDIR(st.st_mode):
        return None, f"{what} is a directory, not a file: remove it and write a text file"
    if not stat.S_ISREG(st.st_mode):
        return None, f"{what} is not a regular file: replace it with a text file"
    try:
        data = path.read_bytes()
    except OSError as exc:
        return None, f"cannot read {what} ({exc.strerror}): fix its permissions"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, (f"{what} is not UTF-8 text (bad byte at offset {exc.start}): "
                      f"save it as UTF-8")
    if not text.strip():
        return None, f"{what} is empty: write the experiment idea in it to start"
    return text, None
