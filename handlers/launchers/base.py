"""The launcher seam: how TRAINING (or an agent step) turns a command into a killable handle.

A launcher turns a `Spec` into a `Launched` run whose `handle` (a JSON object) is stored in
status.json; from a handle alone it can tell liveness, signal, kill with grace, clean up what a run
left behind, and re-attach after a daemon restart. Nothing outside launchers touches pids, /proc,
job ids or a scheduler's commands. A handle may name a job on another host, and asking about it
may cost a command: callers ask at most a few times a second.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from mlsm.machine.core.config import Config

Handle = dict[str, Any]
"""A launcher's identity of a run, as stored in status.json; `launcher` names its owner."""


@dataclasses.dataclass(frozen=True)
class Spec:
    """What to run: the command, where, with which environment, and where its output goes."""

    argv: list[str]
    cwd: Path
    env: Mapping[str, str]
    stdout: Path
    stderr: Path | None = None  # None: together with stdout
    handshake: bool = False  # the command waits for `release()` before doing anything
    record_cmd: list[str] | None = None  # what status.json shows (the argv without wrappers)
    experiment: Path | None = None  # tags the run's processes with their experiment
    config: Config | None = None  # the experiment's settings (a launcher's options are there)
    devices: str | None = None  # the GPU group of the pool (CUDA_VISIBLE_DEVICES), if any


@dataclasses.dataclass(frozen=True)
class KillReport:
    """What a kill found: processes signalled, and any that outlived SIGKILL."""

    found: int
    survivors: int = 0


class Launched(Protocol):
    """A started (or re-attached) run."""

    handle: Handle

    @property
    def returncode(self) -> int | None:
        """The main process's exit code from our own wait; None when unknown or running."""

    def release(self) -> None:
        """The handle is persisted: let the run begin."""

    def cancel(self) -> None:
        """The handle could not be persisted: make the run end before it begins."""

    def wait(self, timeout: float | None) -> bool:
        """Wait up to `timeout` seconds; True once the main process has ended."""

    def begun(self) -> bool:
        """Whether the run has left its queue; a pending or requeued job has not, and no
        heartbeat or run timeout counts until it has."""


class Launcher(Protocol):
    """One way of running commands: `local` (a process tree here), later torchrun and Slurm."""

    name: str

    def spawn(self, spec: Spec) -> Launched:
        """Start the run (held until `release()` when `spec.handshake`); OSError if impossible."""

    def reattach(self, handle: Handle) -> Launched | None:
        """The run a previous daemon started, if it is still the same run; else None."""

    def alive(self, handle: Handle) -> bool:
        """Whether the run's main process (or job) still runs."""

    def signal(self, handle: Handle, signum: int) -> bool:
        """Send `signum` to the run's main process and its descendants; False if gone."""

    def kill(self, handle: Handle, grace: float) -> KillReport:
        """SIGTERM everything of the run, wait `grace`, SIGKILL what is left; safe to repeat."""

    def leftovers(self, handle: Handle, grace: float) -> int:
        """Kill what is left of a run whose main process has ended; returns how many were."""

    def usage(self, handle: Handle) -> tuple[int, int]:
        """(processes, resident bytes) of the run's tree; (0, 0) where it cannot be seen."""

    def kill_gpu_holders(self, handle: Handle, grace: float) -> list[int]:
        """After the run's tree is gone: kill what still holds the GPUs it was handed (one
        that escaped its tags); their pids. [] where the launcher cannot see them."""

    def strays(self, experiment: Path, keep: list[str]) -> list[Handle]:
        """Runs of `experiment` that still have processes but are not in `keep` (run ids)."""

    def describe(self, handle: Handle) -> str:
        """`pid 1234` or `job 567`: how a person names the run."""

    def why_gone(self, handle: Handle) -> str:
        """A few words on why a recorded run is not alive (ended, another boot, pid reused)."""
