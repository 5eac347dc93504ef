"""The `torchrun` launcher: a local launch whose training command runs under torchrun.

The shim (and the sandbox) stay outside; torchrun starts N ranks, each through a tiny wrapper
(`mlsm.hooks.ranklogs`) that puts its output in `rank_K/`. Every process inherits the run's
tags, so the local tree kill reaches the torchrun agent and every worker, though torchrun
starts each worker in a session of its own. torchrun's own restarts are off (`--max-restarts
0`) unless `--torchrun-args` says otherwise: a failed rank fails the iteration, and mlsm decides.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import shutil
import sys

from mlsm.handlers.launchers.base import Spec
from mlsm.handlers.launchers.local import LocalLauncher, LocalRun
from mlsm.machine.core.config import Config
from mlsm.machine.core.errors import ConfigError

RENDEZVOUS = ("--standalone", "--nnodes", "--rdzv-endpoint", "--rdzv-backend", "--master-addr",
              "--master-port", "--rdzv-id")


def _given(args: list[str], flag: str) -> bool:
    """Whether `args` set torchrun's `flag` (either spelling, `--x v` or `--x=v`)."""
    names = {flag, flag.replace("-", "_").replace("__", "--", 1)}
    return any(a in names or a.split("=", 1)[0] in names for a in args)


def extra_args(cfg: Config) -> list[str]:
    """--torchrun-args as a list; a clear error when its quotes do not close."""
    try:
        return shlex.split(cfg.torchrun_args or "")
    except ValueError as exc:
        raise ConfigError(f"--torchrun-args {cfg.torchrun_args!r} cannot be split like a "
                          f"shell line ({exc}): fix its quotes") from None


def torchrun_exe(train: list[str]) -> list[str]:
    """torchrun itself: the training's own Python running torch.distributed.run, else the
    `torchrun` on PATH."""
    if os.path.basename(train[0]).startswith("python"):
        return [train[0], "-m", "torch.distributed.run"]
    found = shutil.which("torchrun")
    if found is None:
        raise OSError(f"torchrun is not on PATH and the training command ({train[0]}) is not a "
                      f"Python that could run it: install torch, or start the command with "
                      f"python")
    return [found]


def command(train: list[str], cfg: Config, devices: str | None) -> list[str]:
    """The training command wrapped in torchrun: one rank per GPU of the run by default."""
    extra = extra_args(cfg)
    nproc = cfg.nproc_per_node or (len(devices.split(",")) if devices else 1)
    opts = [f"--nproc-per-node={nproc}"]
    if not _given(extra, "--max-restarts"):
        opts.append("--max-restarts=0")
    if not any(_given(extra, flag) for flag in RENDEZVOUS):
        opts.append("--standalone")  # one node, a free port: experiments never collide
    return [*torchrun_exe(train), *opts, *extra, "--no-python", sys.executable, "-P", "-m",
            "mlsm.hooks.ranklogs", "--", *train]


class TorchrunLauncher(LocalLauncher):
    """A local process tree: shim → (sandbox) → torchrun agent → N ranks."""

    name = "torchrun"

    def spawn(self, spec: Spec) -> LocalRun:
        train = list(spec.record_cmd or [])
        if not train or spec.argv[len(spec.argv) - len(train):] != train:
            raise OSError("the torchrun launcher runs trainings only (no training command "
                          "found at the end of the launch)")
        wrapped = command(train, spec.config or Config(), spec.devices)
        argv = [*spec.argv[:len(spec.argv) - len(train)], *wrapped]
        return super().spawn(dataclasses.replace(spec, argv=argv, record_cmd=wrapped))
