"""Trackers fed from the files, after the fact: `--mlflow`, `--wandb`, `--tensorboard` and
`mlsm export`.

`base.py` follows an experiment's files; one module per tracker (`mlflow.py`, `wandb.py`,
`tensorboard.py`) implements `base.Target`. The daemon runs `Follower`, a thread that never
touches an engine.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any, NamedTuple

from mlsm.hooks.layout import Layout
from mlsm.machine.core.config import Config, resolve
from mlsm.machine.core.errors import ConfigError, MlsmError
from mlsm.machine.views.catalog import Catalog
from mlsm.machine.views.export.base import Exporter, Target, sync_quietly

TARGETS = ("mlflow", "wandb", "tensorboard")
INTERVAL_S = 2.0
BACKOFF_S = 30.0  # after a failure, leave that tracker alone this long
FINAL_PASS_S = 120.0  # the most a stopping daemon waits for the last export
NICE = 10


class Want(NamedTuple):
    """A tracker the settings turn on: its name, its setting (a URI, or ""), and whether a
    running iteration's metrics go out while it trains."""

    name: str
    setting: str
    live: bool = False


def wanted(config: Config) -> list[Want]:
    """Each tracker `config` turns on."""
    out = []
    if config.mlflow:
        out.append(Want("mlflow", config.mlflow, config.mlflow_live))
    if config.wandb:
        out.append(Want("wandb", ""))
    if config.tensorboard:
        out.append(Want("tensorboard", ""))
    return out


def make_target(name: str, setting: str, exp_dir: Path, live: bool = False) -> Target:
    """The target `name` for `setting` (`auto`: the tracker's default place)."""
    if name == "mlflow":
        from mlsm.machine.views.export import mlflow

        uri = setting if setting and setting != "auto" else mlflow.default_uri(exp_dir)
        return mlflow.MlflowTarget(uri, live)
    if name == "wandb":
        from mlsm.machine.views.export import wandb

        os.environ.setdefault("WANDB_SILENT", "true")
        return wandb.WandbTarget(wandb.default_folder(exp_dir))
    if name == "tensorboard":
        from mlsm.machine.views.export import tensorboard

        return tensorboard.TensorboardTarget()
    raise ConfigError(f"unknown tracker {name!r} (known: {', '.join(TARGETS)})")


def _missing(name: str) -> MlsmError:
    return ConfigError(f"--{name} needs the {name} package: pip install {name}")


def export_once(exp_dir: Path, name: str, setting: str) -> tuple[bool, str | None]:
    """`mlsm export`: one pass over an experiment (ended?, the error if any)."""
    if not Layout(exp_dir).status.is_file():
        raise MlsmError(f"{exp_dir} has no status.json: nothing to export yet")
    try:
        target = make_target(name, setting, exp_dir)
    except ImportError:
        raise _missing(name) from None
    try:
        return sync_quietly(Exporter(exp_dir, target))
    finally:
        target.shutdown()


class Follower:
    """The daemon's exporter thread: a pass per experiment and tracker whenever its files
    changed, a last pass when the daemon stops."""

    def __init__(self, catalog: Catalog, flags: Mapping[str, Any],
                 console: IO[str] | None = sys.stderr, interval: float = INTERVAL_S) -> None:
        self.catalog = catalog
        self.flags = dict(flags)
        self.console = console
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._targets: dict[tuple[str, str, bool], Target] = {}
        self._exporters: dict[tuple[Path, str], Exporter] = {}
        self._seen: dict[tuple[Path, str], tuple[Any, ...]] = {}
        self._resting: dict[tuple[Path, str], float] = {}
        self._said: set[str] = set()
        self._configs: dict[Path, tuple[Any, list[Want]]] = {}

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="mlsm-export", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(FINAL_PASS_S)

    def _run(self) -> None:
        # Linux renices just this thread (and what it starts, like wandb-core): training and
        # the engines win any fight for a CPU.
        with contextlib.suppress(OSError, AttributeError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICE)
        while not self._stop.wait(self.interval):
            self.run_pass()
        self.run_pass(final=True)
        for target in self._targets.values():
            self._quietly(target.shutdown)

    def run_pass(self, final: bool = False) -> None:
        """One look at every experiment; exported only where its files changed."""
        import time

        for d in self.catalog.experiments():
            for want in self._wanted(d):
                name, key = want.name, (d, want.name)
                if not final and self._resting.get(key, 0.0) > time.monotonic():
                    continue
                sig = _signature(d)
                if sig == self._seen.get(key):
                    continue
                exporter = self._exporter(d, want)
                if exporter is None:
                    continue
                _ended, error = sync_quietly(exporter)
                if error:
                    self._say(f"mlsm: export to {name} failed for {d}: {error}; retrying in "
                              f"{BACKOFF_S:g}s")
                    self._resting[key] = time.monotonic() + BACKOFF_S
                else:
                    self._seen[key] = sig

    def _wanted(self, d: Path) -> list[Want]:
        """The trackers `d` asks for (flag > env > its mlsm.toml), read again when the
        toml changes."""
        toml = Layout(d).toml
        try:
            stamp: Any = toml.stat().st_mtime_ns
        except OSError:
            stamp = None
        cached = self._configs.get(d)
        if cached is None or cached[0] != stamp:
            try:
                cached = (stamp, wanted(resolve(d, self.flags)))
            except MlsmError:
                cached = (stamp, [])  # the daemon reports config errors itself
            self._configs[d] = cached
        return cached[1]

    def _exporter(self, d: Path, want: Want) -> Exporter | None:
        key = (d, want.name)
        if key not in self._exporters:
            try:
                target = self._target(want, d)
            except ImportError:
                self._say(str(_missing(want.name)))
                return None
            except Exception as exc:  # a tracker that cannot even start: say so once
                self._say(f"mlsm: cannot open {want.name} for {d}: {type(exc).__name__}: {exc}")
                return None
            self._exporters[key] = Exporter(d, target)
        return self._exporters[key]

    def _target(self, want: Want, d: Path) -> Target:
        place = want.setting if want.setting not in ("", "auto") else f"auto:{d.parent}"
        probe = (want.name, place, want.live)
        if probe not in self._targets:
            self._targets[probe] = make_target(want.name, want.setting, d, want.live)
        return self._targets[probe]

    def _say(self, text: str) -> None:
        if text not in self._said and self.console is not None:
            self._said.add(text)
            print(text, file=self.console, flush=True)

    @staticmethod
    def _quietly(fn: Any) -> None:
        try:
            fn()
        except Exception:  # shutting a tracker down must not stop the daemon's shutdown
            return


def _signature(d: Path) -> tuple[Any, ...]:
    """What changes when there is something new to export: status.json, REPORT.md, and the
    newest run folder's metrics."""
    layout = Layout(d)
    try:
        newest = max((p for p in layout.logs.iterdir() if p.name.startswith("iter_")),
                     default=None)
    except OSError:
        newest = None
    paths = [layout.status, layout.report]
    if newest is not None:
        paths.append(newest / "metrics.jsonl")
    return tuple(_stamp(p) for p in paths)


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size
