"""PLANNING, CODING, ANALYZING and REPORTING's action: run one agent step as a supervised tree."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from mlsm.handlers import prompting
from mlsm.handlers.agents.base import AgentBackend, AgentOutcome, AgentStep, Role, check_product
from mlsm.handlers.launchers.base import Handle, Spec
from mlsm.handlers.supervised import SupervisedRun
from mlsm.machine.core.config import Config
from mlsm.machine.core.events import EXITED, Event
from mlsm.machine.core.store import write_atomic


def free_name(run_dir: Path, stem: str, suffix: str) -> Path:
    """`stem.suffix`, or `stem.2.suffix`, ... : a retry never overwrites an earlier transcript."""
    path = run_dir / f"{stem}{suffix}"
    k = 2
    while path.exists():
        path = run_dir / f"{stem}.{k}{suffix}"
        k += 1
    return path


def prepare_step(role: Role, exp_dir: Path, run_dir: Path, iteration: int, attempt: int,
                 config: Config, context: dict[str, Any], spent_usd: float = 0.0) -> AgentStep:
    """Create the run folder, render and save the prompt, pick the transcript's name."""
    run_dir.mkdir(parents=True, exist_ok=True)
    transcript = free_name(run_dir, f"agent_{role}", ".log")
    prompt_file = transcript.with_name(transcript.name.replace("agent_", "prompt_")[:-4] + ".md")
    step = AgentStep(role=role, exp_dir=exp_dir, run_dir=run_dir, iteration=iteration,
                     attempt=attempt, prompt="", prompt_file=prompt_file,
                     transcript=transcript, config=config, spent_usd=spent_usd)
    ctx = {**context, "exp_dir": exp_dir, "run_dir": run_dir, "iteration": iteration,
           "product": step.product, "max_iterations": config.max_iterations,
           "train_cmd": " ".join(config.train_argv())}
    prompt = prompting.render(role, ctx)
    write_atomic(prompt_file, prompt.encode())
    return dataclasses.replace(step, prompt=prompt)


class AgentRun(SupervisedRun):
    """One agent process tree and the thread that waits for it, times it out, and reports."""

    kind = "agent"

    def __init__(self, backend: AgentBackend, step: AgentStep, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.backend, self.step = backend, step
        self._killed_for: str | None = None

    def spawn(self) -> Handle:
        """Start the agent in the experiment directory, stdin closed, output to the transcript."""
        env = self.backend.env(self.step, dict(os.environ))
        self.launched = self.launcher.spawn(Spec(
            argv=self.backend.argv(self.step), cwd=self.step.exp_dir, env=env,
            stdout=self.step.transcript, experiment=self.step.exp_dir))
        return self.launched.handle

    def watch(self) -> None:
        self.start_watching(f"agent-{self.step.role}")

    def _transcript_size(self) -> int:
        try:
            return self.step.transcript.stat().st_size
        except OSError:
            return 0

    def _watch(self) -> None:
        assert self.launched is not None
        cfg = self.step.config
        start = last_growth = self.clock()
        size = self._transcript_size()
        while not self.abandoned:
            if self.launched.wait(self.POLL_S):
                break
            now = self.clock()
            if (new := self._transcript_size()) != size:
                size, last_growth = new, now
            if cfg.agent_timeout and now - start > cfg.agent_timeout:
                self._timeout(f"ran longer than --agent-timeout {cfg.agent_timeout:g}s")
                break
            if cfg.agent_idle_timeout and now - last_growth > cfg.agent_idle_timeout:
                self._timeout(f"wrote nothing for {now - last_growth:.0f}s "
                              f"(--agent-idle-timeout {cfg.agent_idle_timeout:g}s)")
                break
        if self.abandoned or self.stopping():
            return
        left = self.cleanup()
        self.emit(Event(EXITED, self.run_id, {"kind": "agent", "outcome": self._outcome(),
                                              "leftovers": left}))

    def _timeout(self, why: str) -> None:
        self._killed_for = f"the {self.step.role} agent {why} and was killed"
        self.log.warning("agent_timeout", role=self.step.role, detail=self._killed_for)
        self.kill_for("agent_timeout", self._killed_for)

    def _outcome(self) -> AgentOutcome:
        assert self.launched is not None
        if self._killed_for:
            return AgentOutcome(ok=False, reason=self._killed_for)
        returncode = self.launched.returncode
        try:
            outcome = self.backend.collect(self.step, -9 if returncode is None else returncode)
        except Exception as exc:  # a backend bug must fail the step, not kill the waiter
            return AgentOutcome(ok=False, reason=f"reading the {self.step.role} agent's output "
                                                 f"failed: {exc!r}")
        if outcome.ok:
            problem = check_product(self.step.role, self.step.product)
            if problem:
                return AgentOutcome(ok=False, reason=problem, turns=outcome.turns,
                                    cost_usd=outcome.cost_usd, session_id=outcome.session_id)
        return outcome
