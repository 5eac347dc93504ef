"""The experiment directory's paths: the one place their names are spelled (stdlib only)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

IDEA = "IDEA.md"
PLAN = "PLAN.md"
TRAIN = "train.py"
REPORT = "REPORT.md"
STOP = "STOP"
RETRY = "RETRY"
RESTART = "RESTART"
STATUS = "status.json"
LEDGER = "results.tsv"
TOML = "mlsm.toml"
NOTES = "NOTES.md"
PRIVATE = ".mlsm"
LOGS = "logs"

WATCHED = frozenset({IDEA, PLAN, TRAIN, REPORT, STOP, RETRY, RESTART, TOML})
"""Names in the root whose events wake an engine."""


def iteration_dir_name(iteration: int) -> str:
    """`iter_007`: the folder of one code → train → analyze round."""
    return f"iter_{iteration:03d}"


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where every file of one experiment lives; ask it instead of joining names by hand."""

    root: Path

    def _at(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    @property
    def idea(self) -> Path:
        return self._at(IDEA)

    @property
    def plan(self) -> Path:
        return self._at(PLAN)

    @property
    def train(self) -> Path:
        return self._at(TRAIN)

    @property
    def report(self) -> Path:
        return self._at(REPORT)

    @property
    def stop(self) -> Path:
        return self._at(STOP)

    @property
    def retry(self) -> Path:
        return self._at(RETRY)

    @property
    def restart(self) -> Path:
        return self._at(RESTART)

    @property
    def status(self) -> Path:
        return self._at(STATUS)

    @property
    def ledger(self) -> Path:
        return self._at(LEDGER)

    @property
    def toml(self) -> Path:
        return self._at(TOML)

    @property
    def private(self) -> Path:
        return self._at(PRIVATE)

    @property
    def lock(self) -> Path:
        return self._at(PRIVATE, "lock")

    @property
    def config_json(self) -> Path:
        return self._at(PRIVATE, "config.json")

    @property
    def instructions(self) -> Path:
        return self._at(PRIVATE, "instructions.md")

    @property
    def hooks_dir(self) -> Path:
        return self._at(PRIVATE, "hooks")

    @property
    def logs(self) -> Path:
        return self._at(LOGS)

    @property
    def journal(self) -> Path:
        return self._at(LOGS, "events.jsonl")

    @property
    def runner_log(self) -> Path:
        return self._at(LOGS, "runner.log")

    @property
    def hooks_log(self) -> Path:
        return self._at(LOGS, "hooks.log")

    def iteration_dir(self, iteration: int) -> Path:
        """`logs/iter_NNN/`: training output, agent transcripts and the decision."""
        return self._at(LOGS, iteration_dir_name(iteration))

    def step_dir(self, role: str, iteration: int) -> Path:
        """Where an agent step of `role` keeps its prompt and transcript."""
        if role in ("plan", "report"):
            return self._at(LOGS, role)
        return self.iteration_dir(iteration)

    def product(self, role: str, iteration: int) -> Path:
        """The file a step of `role` must leave behind."""
        if role == "analyze":
            return self.iteration_dir(iteration) / "decision.json"
        return {"plan": self.plan, "code": self.train, "report": self.report}[role]
