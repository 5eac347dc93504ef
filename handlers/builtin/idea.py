"""What IDEA.md asks for: the task, the objective and its direction, success criteria, budget."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from mlsm.handlers.inputs import read_text_file
from mlsm.machine.errors import InputError

_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_NAME = r"[a-z][\w.]*"
_OPS = {">=": ">=", "=>": ">=", "≥": ">=", "<=": "<=", "=<": "<=", "≤": "<=", ">": ">", "<": "<"}
_CRITERION = re.compile(
    rf"(?<![\w.])({_NAME})`?\s*(>=|=>|<=|=<|≥|≤|>|<)\s*({_NUM})\s*(%?)")
_WORDED = re.compile(
    rf"(?<![\w.])({_NAME})`?\s+(?:of\s+|reaches\s+|reach\s+)?"
    rf"(at least|at most|above|below|over|under)\s+({_NUM})\s*(%?)")
_WORD_OPS = {"at least": ">=", "above": ">", "over": ">", "at most": "<=", "below": "<",
             "under": "<"}
_METRIC_STEMS = re.compile(
    r"acc|loss|bpc|perplexity|ppl|f1|auc|mse|rmse|mae|r2|error|score|reward|precision|recall")
_SUCCESS_LINE = re.compile(r"success|criteri|target|goal|\baim\b|\bdone when")
_OBJECTIVE = re.compile(r"^[\s*_>#-]*(?:objective|metric)[*_\s]*[:=]([^\n]*)", re.M)
_FILLER = re.compile(r"maximi[sz]e|minimi[sz]e|the|a|an|to|of|on|is|higher|lower|better")
_VERB = re.compile(r"\b(maximi[sz]e|minimi[sz]e)\b([^.\n]*)")
_ITERATIONS = re.compile(r"\b(\d+)\s+(?:iterations?|trials)\b")
_TIME = re.compile(r"\b(\d+(?:\.\d+)?)\s*(minutes?|mins?|hours?|hrs?)\b")
_PHRASES = (
    (r"\bvalidation\s+accuracy\b", "val_acc"), (r"\bval(?:idation)?[ -]acc(?:uracy)?\b", "val_acc"),
    (r"\bvalidation\s+loss\b", "val_loss"), (r"\bval\s+loss\b", "val_loss"),
    (r"\btest\s+accuracy\b", "test_acc"), (r"\btest\s+loss\b", "test_loss"),
    (r"\bbits\s+per\s+char(?:acter)?\b", "val_bpc"),
)
# Words that name a task, scored to pick a template; the first task wins a tie.
TASK_WORDS: dict[str, tuple[str, ...]] = {
    "classification": (r"classif\w*", r"accuracy", r"\bclass(?:es)?\b", r"\blabels?\b",
                       r"spirals?", r"categor\w*", r"\bf1\b", r"val_acc"),
    "regression": (r"regress\w*", r"continuous", r"(?:\b|_)(?:mse|rmse|mae|r2)\b",
                   r"curve[- ]fitting", r"\bfit (?:a|the) function",
                   r"\bpredict (?:a|the) (?:value|number|price)"),
    "charlm": (r"language model\w*", r"char(?:acter)?[- ]level", r"next[- ]char\w*",
               r"\btext\b", r"\bcorpus\b", r"perplexity", r"\bbpc\b", r"val_bpc",
               r"\bcharacters?\b", r"\blm\b"),
}


@dataclasses.dataclass(frozen=True)
class Criterion:
    """A success criterion such as `val_acc >= 0.95`."""

    metric: str
    op: str
    value: float

    @property
    def goal(self) -> str:
        return "maximize" if self.op in (">", ">=") else "minimize"

    def met(self, value: float) -> bool:
        return {">=": value >= self.value, ">": value > self.value,
                "<=": value <= self.value, "<": value < self.value}[self.op]

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.value:g}"


@dataclasses.dataclass(frozen=True)
class Idea:
    """The parts of IDEA.md the builtin agent acts on; the text itself is kept for quoting."""

    text: str
    title: str
    task_scores: dict[str, int]
    objective: str | None
    goal: str | None
    criteria: tuple[Criterion, ...]
    max_iterations: int | None
    minutes: float | None
    constraints: tuple[str, ...]

    @property
    def task(self) -> str:
        """The best-scoring task; classification when no task word appears."""
        best = max(self.task_scores.values(), default=0)
        return next((t for t, s in self.task_scores.items() if s == best and s > 0),
                    "classification")

    def words_for(self, task: str) -> list[str]:
        """The task words found in the idea, for saying why a template was chosen."""
        text = _normalise(self.text)
        return sorted({m.group(0) for p in TASK_WORDS[task] for m in re.finditer(p, text)})


def read_idea(exp_dir: Path) -> Idea:
    """Read and parse IDEA.md; a missing, empty or unreadable file is an InputError."""
    text, problem = read_text_file(exp_dir / "IDEA.md", "IDEA.md")
    if problem:
        raise InputError(problem)
    if text is None:
        raise InputError(f"no IDEA.md in {exp_dir}: write the experiment idea there first")
    return parse_idea(text)


def read_idea_or_none(exp_dir: Path) -> Idea | None:
    """The idea when IDEA.md is usable, else None (analysis and reports work without it)."""
    try:
        return read_idea(exp_dir)
    except InputError:
        return None


def parse_idea(text: str) -> Idea:
    """Parse the idea's text; every field is optional except the text itself."""
    norm = _normalise(text)
    criteria = _criteria(norm)
    objective, goal = _objective(norm, criteria)
    iterations = [int(m.group(1)) for m in _ITERATIONS.finditer(norm) if int(m.group(1)) > 0]
    return Idea(
        text=text,
        title=_title(text),
        task_scores={t: sum(len(re.findall(p, norm)) for p in ps) for t, ps in TASK_WORDS.items()},
        objective=objective,
        goal=goal,
        criteria=criteria,
        max_iterations=min(iterations) if iterations else None,
        minutes=_minutes(norm),
        constraints=_constraints(text),
    )


def _normalise(text: str) -> str:
    text = text.lower()
    for pattern, name in _PHRASES:
        text = re.sub(pattern, name, text)
    return text


def _title(text: str) -> str:
    for line in text.splitlines():
        line = line.strip().lstrip("#").strip()
        if line:
            return line[:120]
    return "experiment"


def _criteria(norm: str) -> tuple[Criterion, ...]:
    found: list[tuple[int, Criterion]] = []
    for pattern, ops in ((_CRITERION, _OPS), (_WORDED, _WORD_OPS)):
        for m in pattern.finditer(norm):
            if _metric_like(m.group(1), _line_at(norm, m.start())):
                c = _criterion(m.group(1), ops[m.group(2)], m.group(3), m.group(4))
                found.append((m.start(), c))
    unique = {(c.metric, c.op, c.value): c for _, c in sorted(found, key=lambda pc: pc[0])}
    return tuple(unique.values())


def _metric_like(name: str, line: str) -> bool:
    """A metric name, or any name on a line about success (so `batch_size <= 256` in a list of
    constraints is not taken for a criterion)."""
    return bool(_METRIC_STEMS.search(name) or _SUCCESS_LINE.search(line))


def _line_at(text: str, pos: int) -> str:
    start = text.rfind("\n", 0, pos) + 1
    end = text.find("\n", pos)
    return text[start: end if end >= 0 else len(text)]


def _criterion(metric: str, op: str, raw: str, percent: str) -> Criterion:
    value = float(raw) / 100.0 if percent else float(raw)
    return Criterion(metric.rstrip("."), op, value)


def _objective(norm: str, criteria: tuple[Criterion, ...]) -> tuple[str | None, str | None]:
    explicit = _OBJECTIVE.search(norm)
    verb = _VERB.search(norm)
    named = _pick_metric(explicit.group(1), everything=True) if explicit else None
    if explicit and named:
        return named, _goal_in(explicit.group(1)) or _goal_of(named, criteria, verb)
    if criteria:
        return criteria[0].metric, criteria[0].goal
    named = _pick_metric(verb.group(2)) if verb else None
    if verb and named:
        return named, _goal_in(verb.group(1))
    return None, None


def _pick_metric(text: str, everything: bool = False) -> str | None:
    """The metric a phrase names within its first six words: an identifier such as `val_loss`
    first, else a word that sounds like a metric, else (with `everything`) any word."""
    words = [w.strip("`*()[],.:;'\"") for w in text.split()[:6]]
    names = [w for w in words if re.fullmatch(_NAME, w) and not _FILLER.fullmatch(w)]
    metrics = [w for w in names if _METRIC_STEMS.search(w)]
    ranked = [w for w in metrics if "_" in w] + metrics + (names if everything else [])
    return ranked[0] if ranked else None


def _goal_of(name: str, criteria: tuple[Criterion, ...], verb: re.Match[str] | None) -> str | None:
    for c in criteria:
        if c.metric == name:
            return c.goal
    if verb and _pick_metric(verb.group(2)) == name:
        return _goal_in(verb.group(1))
    return None


def _goal_in(text: str) -> str | None:
    if re.search(r"maximi[sz]e|higher is better", text):
        return "maximize"
    if re.search(r"minimi[sz]e|lower is better", text):
        return "minimize"
    return None


def _minutes(norm: str) -> float | None:
    found = []
    for m in _TIME.finditer(norm):
        value = float(m.group(1))
        found.append(value * 60.0 if m.group(2).startswith("h") else value)
    return min(found) if found else None


def _constraints(text: str) -> tuple[str, ...]:
    """The lines under a heading that mentions constraints (markdown bullets stripped)."""
    out: list[str] = []
    inside = False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            inside = "constraint" in stripped.lower()
            continue
        if inside and stripped:
            out.append(stripped.lstrip("-*+ ").strip())
    return tuple(out)
