"""The sandbox: bubblewrap around a training command, the one wrapper every launcher shares.

Inside, training has its own pid namespace (it sees neither the daemon nor other experiments,
and when the namespace's first process dies the kernel kills everything in it, escapees
included), a read-only view of the machine, a private /tmp, an empty $HOME, no network unless
allowed, and exactly one writable place: its own run folder. There is no die-with-parent, so a
training outlives a daemon crash and a fresh daemon can still kill it.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

MODES = ("auto", "bwrap", "none")
APPARMOR_HINT = (
    "on Ubuntu 24.04 and later AppArmor blocks unprivileged user namespaces: allow them with "
    "`sudo sysctl kernel.apparmor_restrict_unprivileged_userns=0` (or an AppArmor profile for "
    "bwrap), or run with --sandbox none"
)
GPU_SHARED = ("/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools", "/dev/nvidia-modeset")


@dataclasses.dataclass(frozen=True)
class Bind:
    """A path the person shares with training (`--sandbox-bind PATH[:ro]`)."""

    path: Path
    writable: bool = True

    @classmethod
    def parse(cls, text: str) -> Bind:
        path, _, mode = text.partition(":")
        if mode not in ("", "ro", "rw"):
            raise ValueError(f"--sandbox-bind {text!r}: add ':ro' or ':rw' after the path, or "
                             f"nothing")
        return cls(Path(path).expanduser().resolve(), mode != "ro")


@dataclasses.dataclass(frozen=True)
class Policy:
    """What one training may see and touch."""

    exp_dir: Path
    run_dir: Path
    binds: tuple[Bind, ...] = ()
    allow_network: bool = False
    home: Path | None = None
    devices: str | None = None  # the run's CUDA_VISIBLE_DEVICES (None: every GPU present)


@functools.cache
def preflight(bwrap: str = "bwrap") -> str | None:
    """None when bwrap can build a sandbox here; else one sentence saying why and what to do."""
    exe = shutil.which(bwrap)
    if exe is None:
        return ("bubblewrap is not installed: `apt-get install bubblewrap` (or your "
                "distribution's package), or run with --sandbox none")
    try:
        done = subprocess.run([exe, "--unshare-pid", "--unshare-net", "--ro-bind", "/", "/",
                               "--dev", "/dev", "--proc", "/proc", "true"],
                              capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"bwrap could not run ({exc}); run with --sandbox none"
    if done.returncode != 0:
        said = " ".join(done.stderr.split())[:200]
        return f"bwrap cannot create namespaces here ({said}); {APPARMOR_HINT}"
    return None


def _interpreter_paths(argv0: str) -> list[Path]:
    """Where the training's Python and ours live (they must stay visible under a hidden $HOME)."""
    found = {Path(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    exe = shutil.which(argv0) or argv0
    if os.path.isabs(exe):
        found.add(Path(exe).parent.parent)
        found.add(Path(os.path.realpath(exe)).parent.parent)
    # Library folders only: sys.path[0] may be the daemon's cwd, a folder that holds $HOME.
    found.update(Path(p) for p in sys.path
                 if p and os.path.isdir(p) and ("-packages" in p or "/lib/python" in p))
    found.add(Path(__file__).resolve().parents[2])  # mlsm's own code (hooks), if installed there
    return sorted(found)


def gpu_devices(visible: str | None) -> list[str]:
    """The /dev nodes of the run's GPUs plus the shared control devices that exist."""
    nodes = sorted(glob.glob("/dev/nvidia[0-9]*"))
    if visible is not None and visible.strip():
        wanted = {v.strip() for v in visible.split(",")}
        nodes = [n for n in nodes if n.removeprefix("/dev/nvidia") in wanted]
    return [*nodes, *(p for p in GPU_SHARED if os.path.exists(p))]


def _under(path: Path, parent: Path) -> bool:
    return path == parent or parent in path.parents


def _masked(policy: Policy) -> list[Path]:
    """Folders replaced by an empty private tmpfs: /tmp, and $HOME."""
    home = policy.home
    return [Path("/tmp"), *([home] if home and home.is_dir() and home != Path("/") else [])]


def _private_args(policy: Policy, keep: Iterable[Path]) -> list[str]:
    """Private, empty /tmp and $HOME; the interpreter's and mlsm's own folders inside them
    stay visible, read-only (a venv under /tmp or ~ must still run)."""
    masks = _masked(policy)
    args = [arg for mask in masks for arg in ("--tmpfs", str(mask))]
    for path in keep:
        if any(_under(path, mask) and path != mask for mask in masks):
            args += ["--ro-bind-try", str(path), str(path)]
    return args


def wrap(argv: list[str], policy: Policy, bwrap: str = "bwrap") -> list[str]:
    """`argv` run inside bubblewrap under `policy`."""
    args = [shutil.which(bwrap) or bwrap, "--unshare-pid", "--unshare-ipc", "--unshare-uts",
            "--unshare-cgroup-try", "--new-session"]
    if not policy.allow_network:
        args.append("--unshare-net")
    args += ["--ro-bind", "/", "/", "--dev", "/dev"]
    for node in gpu_devices(policy.devices):
        args += ["--dev-bind", node, node]
    args += ["--proc", "/proc"]
    args += _private_args(policy, _interpreter_paths(argv[0]))
    args += ["--ro-bind", str(policy.exp_dir), str(policy.exp_dir),
             "--bind", str(policy.run_dir), str(policy.run_dir)]
    for bind in policy.binds:
        args += ["--bind-try" if bind.writable else "--ro-bind-try", str(bind.path),
                 str(bind.path)]
    args += ["--chdir", str(policy.exp_dir), "--setenv", "TMPDIR", "/tmp", "--", *argv]
    return args


CUDA_PROBE = "import torch; print(torch.cuda.is_available())"


def cuda_mismatch(python: str, policy: Policy, timeout: float = 120) -> str | None:
    """Where GPUs exist: None when torch sees CUDA the same inside the sandbox as outside,
    else the sentence to refuse with (never a silent fall-back to the CPU)."""
    if not gpu_devices(policy.devices):
        return None
    answers = []
    for argv in ([python, "-c", CUDA_PROBE], wrap([python, "-c", CUDA_PROBE], policy)):
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"could not ask torch whether CUDA works ({exc})"
        answers.append(done.stdout.strip() or f"error: {done.stderr.strip()[-200:]}")
    if answers[0] == answers[1]:
        return None
    return (f"torch.cuda.is_available() is {answers[0]} outside the sandbox but {answers[1]} "
            f"inside it: check the /dev/nvidia* devices and driver paths, or run with "
            f"--sandbox none")


def describe(policy: Policy) -> str:
    """One line for the runner log: what this sandbox allows."""
    extra = ", ".join(f"{b.path}{'' if b.writable else ' (read-only)'}" for b in policy.binds)
    return (f"bwrap: own pid namespace, read-only filesystem except {policy.run_dir}, private "
            f"/tmp, empty $HOME, network {'on' if policy.allow_network else 'off'}"
            + (f", shared: {extra}" if extra else ""))
