"""Shared test helpers: experiment directories, a real `mlsm` daemon in a subprocess, deadlines."""

from __future__ import annotations

import collections
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

REPO = Path(__file__).resolve().parents[1]
FAKE_AGENT = REPO / "tests" / "fake_agent.py"
AGENT_CMD = f"{sys.executable} {FAKE_AGENT}"


class WaitTimeout(AssertionError, TimeoutError):
    """A deadline passed: a failed assertion in tests, a TimeoutError for the benchmarks."""


def wait_for(pred: Callable[[], Any], timeout: float = 20.0, what: str = "condition",
             interval: float = 0.01) -> Any:
    """Poll `pred` until truthy or the deadline passes (then fail, saying what we waited for)."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise WaitTimeout(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def read_status(d: Path) -> dict[str, Any]:
    try:
        doc: dict[str, Any] = json.loads((d / "status.json").read_text())
        return doc
    except (OSError, ValueError):
        return {}


def gone(pid: int) -> bool:
    """A pid that no longer runs (a zombie counts as dead)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


class Mlsm:
    """A real `mlsm` process (watch or run) with its output captured to files."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.out = cwd / f"mlsm-{time.monotonic_ns()}.out"
        self._fh = self.out.open("wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "mlsm.machine.cli", *args],
                                     stdout=self._fh, stderr=subprocess.STDOUT, env=env,
                                     cwd=cwd)

    def wait(self, timeout: float = 60) -> int:
        code = self.proc.wait(timeout)
        self._fh.close()
        return code

    def output(self) -> str:
        return self.out.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class Experiment:
    """An experiment directory plus helpers to drive it."""

    def __init__(self, path: Path, env: dict[str, str], procs: list[Mlsm]) -> None:
        self.path = path
        self.env = env
        self._procs = procs
        # Where a sandboxed training may write for the test to read (the experiment directory
        # is read-only to it): $TEST_SHARED, shared with --sandbox-bind.
        self.shared = path.parent / "shared"
        self.shared.mkdir(exist_ok=True)
        self.env["TEST_SHARED"] = str(self.shared)

    def write(self, name: str, text: str) -> Path:
        target = self.path / name
        target.write_text(text)
        return target

    def status(self) -> dict[str, Any]:
        return read_status(self.path)

    def state(self) -> str | None:
        return self.status().get("state")

    def wait_state(self, *states: str, timeout: float = 30) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            s = self.status()
            return s if s.get("state") in states else None
        result: dict[str, Any] = wait_for(check, timeout, f"state in {states} "
                                          f"(now {self.state()})")
        return result

    def mlsm(self, cmd: str, *args: str, agent: bool = True, **env: str) -> Mlsm:
        extra = ["--agent", "command", "--agent-cmd", AGENT_CMD] if agent else []
        proc = Mlsm([cmd, str(self.path), *extra, "--grace", "2", "--retry-backoff", "0.05",
                     "--sandbox-bind", str(self.shared), *args], self.path.parent,
                    {**self.env, **env})
        self._procs.append(proc)
        return proc

    def runner_log(self) -> str:
        try:
            return (self.path / "logs" / "runner.log").read_text()
        except OSError:
            return ""

    def events(self) -> list[dict[str, Any]]:
        try:
            lines = (self.path / "logs" / "events.jsonl").read_text().splitlines()
        except OSError:
            return []
        return [json.loads(line) for line in lines if line.strip()]

    def agent_calls(self) -> list[str]:
        try:
            return (self.path / "agent_calls.log").read_text().split("\n")[:-1]
        except OSError:
            return []


@pytest.fixture
def exp(tmp_path: Path) -> Iterator[Experiment]:
    """An empty experiment directory; every mlsm started through it is killed at teardown."""
    d = tmp_path / "exp"
    d.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLSM_", "FAKE_"))}
    procs: list[Mlsm] = []
    e = Experiment(d, env, procs)
    yield e
    for p in procs:
        with contextlib.suppress(Exception):
            p.signal(signal.SIGTERM)
            p.proc.wait(10)
        p.kill()
    _kill_tagged(d)


def _kill_tagged(d: Path) -> None:
    """Leave no process behind that a test started in `d` (by its cwd or environment)."""
    kill_matching(lambda info: _started_in(info, d))


def _started_in(info: dict[str, Any], d: Path) -> bool:
    environ = info.get("environ") or {}
    return str(info.get("cwd") or "").startswith(str(d)) \
        or str(environ.get("MLSM_EXPERIMENT", "")).startswith(str(d))


def kill_matching(match: Callable[[dict[str, Any]], bool]) -> list[str]:
    """SIGKILL every process whose psutil info (pid, cwd, cmdline, environ) `match`es, and its
    process group; returns what was found ("pid: command"). A pid hopper can slip past one pass
    over /proc, so each group seen is killed until it has nobody alive, and the search ends
    after three passes in a row find nobody."""
    groups: set[int] = set()
    unseen: collections.Counter[int] = collections.Counter()  # passes a group had nobody alive
    killed: dict[int, str] = {}
    idle = 0
    for _ in range(500):
        found, live = _scan(match)
        killed.update((p.pid, " ".join(p.info["cmdline"] or [])[:120]) for p in found)
        for proc in found:
            with contextlib.suppress(psutil.Error, OSError):
                groups.add(os.getpgid(proc.pid))
                proc.kill()
        groups.discard(os.getpgrp())
        for group in groups:
            unseen[group] = 0 if group in live else unseen[group] + 1
        # A group of zombies (our own unreaped children) still takes signals: done after three
        # passes without a live member, which a hopper cannot keep up.
        groups = {g for g in groups if unseen[g] < 3 and _killpg(g)}
        idle = 0 if found or groups else idle + 1
        if idle == 3:
            break
    return [f"{pid}: {cmd}" for pid, cmd in sorted(killed.items())]


def _scan(match: Callable[[dict[str, Any]], bool]) -> tuple[list[psutil.Process], set[int]]:
    """One pass: the live processes that `match`, and every group with a live member. Newest
    pid first: a pid hopper's current pid lives ~10 ms, less than a pass over a busy /proc, so
    it is looked at right after the listing, while it still lives."""
    found: list[psutil.Process] = []
    live: set[int] = set()
    for pid in sorted(psutil.pids(), reverse=True):
        try:
            proc = psutil.Process(pid)
            proc.info = proc.as_dict(["pid", "cwd", "cmdline", "environ", "status"])
        except psutil.Error:
            continue
        if proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        with contextlib.suppress(OSError):
            live.add(os.getpgid(pid))
        if pid != os.getpid() and match(proc.info):
            found.append(proc)
    return found, live


@pytest.fixture(scope="session", autouse=True)
def no_leftovers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The backstop behind every test's own cleanup: at the end of the session, nothing started
    under the session's temporary folder may still run. What is found is killed and reported
    as a warning (a leaked pid hopper once took a CPU of this machine for hours)."""
    yield
    base = tmp_path_factory.getbasetemp()
    left = kill_matching(lambda info: _started_in(info, base))
    if left:
        warnings.warn(f"{len(left)} processes outlived the tests and were killed: "
                      + "; ".join(left[:5]), stacklevel=1)


def _killpg(group: int) -> bool:
    """SIGKILL to `group`; False once nobody is left in it."""
    try:
        os.killpg(group, signal.SIGKILL)
    except ProcessLookupError:
        return False
    return True


def host_pids(d: Path, recorded: list[int]) -> list[int]:
    """Host pids of the live processes in `d` that recorded `recorded` as their own pid: inside
    the sandbox's pid namespace a process sees another number (NSpid maps the two)."""
    found: dict[int, int] = {}
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError, ValueError):
            if not proc.cwd().startswith(str(d)):
                continue
            ns = [line for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines()
                  if line.startswith("NSpid:")]
            own = int(ns[0].split()[-1]) if ns else proc.pid
            found.setdefault(own, proc.pid)
    return [found[p] for p in recorded if p in found]  # those not found have exited
