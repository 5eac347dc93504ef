"""Which experiments a view follows: directories named directly, and the subdirectories of roots."""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from mlsm.hooks.layout import IDEA, STATUS

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._ -]{0,99}$")


def is_experiment(path: Path) -> bool:
    """A directory with an IDEA.md or a status.json."""
    return os.path.isdir(path) and (os.path.exists(os.path.join(path, IDEA))
                                    or os.path.exists(os.path.join(path, STATUS)))


def name_problem(name: str) -> str | None:
    """Why `name` cannot be a new experiment's directory (None when it can)."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\x00" in name:
        return "a name is one path component: no '/', no '..'"
    if name.startswith(".") or ".." in name:
        return "a name may not start with a dot or contain '..'"
    if not _NAME.match(name):
        return "use letters, digits, '.', '_', '-' and spaces (at most 100)"
    return None


class _Root:
    """One root's listing, kept until the root's mtime changes (an entry came or went)."""

    def __init__(self) -> None:
        self.mtime: int | None = None
        self.found: list[Path] = []
        self.candidates: list[Path] = []  # subdirectories without IDEA.md yet

    def refresh(self, root: Path) -> list[Path]:
        try:
            mtime = os.stat(root).st_mtime_ns
        except OSError:
            self.mtime, self.found, self.candidates = None, [], []
            return []
        if mtime != self.mtime:
            # an mtime this fresh may yet hide another change in the same tick: list again
            self.mtime = mtime if time.time() - mtime / 1e9 > 2 else None
            self._list(root)
        elif self.candidates:  # a subdirectory gaining IDEA.md leaves the root's mtime alone
            grown = [c for c in self.candidates if is_experiment(c)]
            if grown:
                self.candidates = [c for c in self.candidates if c not in grown]
                self.found = sorted([*self.found, *grown])
        return self.found

    def _list(self, root: Path) -> None:
        try:
            with os.scandir(root) as entries:
                subdirs = sorted(Path(e.path) for e in entries
                                 if not e.name.startswith(".") and e.is_dir(follow_symlinks=False))
        except OSError:
            subdirs = []
        self.found = [d for d in subdirs if is_experiment(d)]
        self.candidates = [d for d in subdirs if d not in set(self.found)]


class Catalog:
    """Experiments named directly (`dirs`) and folders of experiments (`roots`); safe to share
    between threads, and cheap to ask often (a root is listed again only when it changed)."""

    def __init__(self, dirs: Iterable[Path] = (), roots: Iterable[Path] = ()) -> None:
        self.dirs = tuple(dirs)
        self.roots = tuple(roots)
        self._lock = threading.Lock()
        self._listings = {root: _Root() for root in self.roots}
        self._keyed: tuple[tuple[Path, ...], dict[str, Path]] | None = None

    @classmethod
    def of(cls, paths: Iterable[Path]) -> Catalog:
        """An experiment for each path that is one, a root for every other directory."""
        dirs: list[Path] = []
        roots: list[Path] = []
        for p in paths:
            (dirs if is_experiment(p) else roots).append(p.resolve())
        return cls(dirs, roots)

    def experiments(self) -> list[Path]:
        """Every experiment now: the named ones, then each root's subdirectories by name."""
        with self._lock:
            found = list(self.dirs)
            for root in self.roots:
                found += self._listings[root].refresh(root)
            return found

    def waiting(self) -> list[Path]:
        """Subfolders of roots without IDEA.md yet (as of the last `experiments()`)."""
        with self._lock:
            return [c for listing in self._listings.values() for c in listing.candidates]

    def keyed(self) -> dict[str, Path]:
        """A short, stable URL key per experiment: its name, made unique by a path hash."""
        paths = tuple(self.experiments())
        cached = self._keyed
        if cached is not None and cached[0] == paths:
            return cached[1]
        names = Counter(p.name for p in paths)
        out: dict[str, Path] = {}
        for p in paths:
            key = p.name if names[p.name] == 1 else f"{p.name}-{_short(p)}"
            out[key] = p
        self._keyed = (paths, out)
        return out


def _short(path: Path) -> str:
    return hashlib.sha1(str(path).encode()).hexdigest()[:6]
