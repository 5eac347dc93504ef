"""What IDEA.md asks for: the task, the objective and its direction, success criteria, budget."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from mlsm.handlers.inputs import read_text_file
from mlsm.hooks.layout import Layout
from mlsm.machine.core.errors import InputError

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
_SUCCESS = re.compile(r"success|criteri|\bdone when\b|\bsucceed")
_BULLET = re.compile(r"^(?:[-*+]|\d+[.)])\s+")
_PERCENT = re.compile(rf"({_NUM})\s*(?:%|percent\b)")
_BY_PERCENT = re.compile(rf"\bby\s+(?:at\s+least\s+|more\s+than\s+)?({_NUM})\s*(?:%|percent\b)")
_BASELINE = re.compile(r"\bbaseline")
_BEAT = re.compile(r"\b(beats?|beating|outperform\w*|better|improv\w*)\b")
_IMPROVE = re.compile(r"\b(beats?|beating|outperform\w*|better|improv\w*|lower|higher|"
                      r"smaller|larger|greater|reduc\w*|increas\w*|decreas\w*|cuts?|gains?)\b")
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
    """A success criterion: absolute (`val_acc >= 0.97`), or relative to the baseline (`2 %
    better than the baseline`: an improvement of 2 % of the baseline's value, in the metric's
    direction). `metric` None means the objective."""

    metric: str | None
    op: str
    value: float
    relative: bool = False
    direction: str | None = None  # a relative criterion's own "lower"/"higher", if it said one

    @property
    def goal(self) -> str | None:
        """The direction an absolute criterion implies (relative ones follow the objective)."""
        if self.relative:
            return self.direction
        return "maximize" if self.op in (">", ">=") else "minimize"

    def threshold(self, baseline: float | None, goal: str) -> float | None:
        """The value a run must reach: the absolute bound, or the baseline moved by the
        fraction in direction `goal` (the objective's, for the objective); None when a relative
        criterion has no baseline."""
        if not self.relative:
            return self.value
        if baseline is None:
            return None
        step = abs(baseline) * self.value
        return baseline + step if goal == "maximize" else baseline - step

    def met(self, value: float, baseline: float | None, goal: str) -> bool:
        """Whether `value` meets the criterion (a relative one needs the baseline's value)."""
        limit = self.threshold(baseline, goal)
        if limit is None:
            return False
        if not self.relative:
            return {">=": value >= limit, ">": value > limit,
                    "<=": value <= limit, "<": value < limit}[self.op]
        slack = 1e-9 * max(1.0, abs(limit))  # 0.8 * 1.02 is 0.8160000000000001 in floats
        if self.value == 0:  # "beats the baseline": strictly better
            return value > limit if goal == "maximize" else value < limit
        return value >= limit - slack if goal == "maximize" else value <= limit + slack

    def describe(self, objective: str | None = None) -> str:
        """The criterion in words; a relative one names its baseline."""
        metric = self.metric or objective or "the objective"
        if not self.relative:
            return f"{metric} {self.op} {self.value:g}"
        way = {"maximize": " higher", "minimize": " lower"}.get(self.direction or "", " better")
        if self.value == 0:
            return f"{metric}{way} than the baseline's"
        return f"{metric} at least {self.value * 100:g}%{way} than the baseline's (relative)"

    def __str__(self) -> str:
        return self.describe()


@dataclasses.dataclass(frozen=True)
class Idea:
    """The parts of IDEA.md the builtin agent acts on; the text itself is kept for quoting."""

    text: str
    title: str
    task_scores: dict[str, int]
    objective: str | None
    goal: str | None
    criteria: tuple[Criterion, ...]
    unclear: tuple[str, ...]  # success statements the parser could not read, quoted
    max_iterations: int | None
    minutes: float | None
    constraints: tuple[str, ...]

    @property
    def task(self) -> str | None:
        """The best-scoring task; None when no task word appears."""
        best = max(self.task_scores.values(), default=0)
        return next((t for t, s in self.task_scores.items() if s == best and s > 0), None)

    def words_for(self, task: str) -> list[str]:
        """The task words found in the idea, for saying why a template was chosen."""
        text = _normalise(self.text)
        return sorted({m.group(0) for p in TASK_WORDS[task] for m in re.finditer(p, text)})


def read_idea(exp_dir: Path) -> Idea:
    """Read and parse IDEA.md; a missing, empty or unreadable file is an InputError."""
    text, problem = read_text_file(Layout(exp_dir).idea)
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
    criteria, unclear = _criteria(text)
    objective, goal = _objective(norm, criteria)
    iterations = [int(m.group(1)) for m in _ITERATIONS.finditer(norm) if int(m.group(1)) > 0]
    return Idea(
        text=text,
        title=_title(text),
        task_scores={t: sum(len(re.findall(p, norm)) for p in ps) for t, ps in TASK_WORDS.items()},
        objective=objective,
        goal=goal,
        criteria=criteria,
        unclear=unclear,
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


def _criteria(text: str) -> tuple[tuple[Criterion, ...], tuple[str, ...]]:
    """The criteria of every sentence, and the success sentences none could be read from."""
    found: list[Criterion] = []
    unclear: list[str] = []
    for sentence, success in _sentences(text):
        norm = _normalise(sentence)
        relative = _relative(norm, success)
        parsed = relative + _absolute(norm, success, bool(relative))
        found += parsed
        if success and not parsed:
            unclear.append(sentence)
    unique = {(c.metric, c.op, c.value, c.relative): c for c in found}
    return tuple(unique.values()), tuple(dict.fromkeys(unclear))


def _sentences(text: str) -> list[tuple[str, bool]]:
    """Each sentence of the text's paragraphs and list items, and whether it states success
    (it says so, or it sits under a heading about success)."""
    out: list[tuple[str, bool]] = []
    for unit, under in _units(text):
        for sentence in re.split(r"(?<=[.!?;])\s+", unit):
            sentence = sentence.strip()
            if sentence and not _OBJECTIVE.match(sentence.lower()):
                out.append((sentence, under or bool(_SUCCESS.search(sentence.lower()))))
    return out


def _units(text: str) -> list[tuple[str, bool]]:
    """Paragraphs and list items with wrapped lines joined; headings are left out."""
    units: list[tuple[list[str], bool]] = []
    under, fresh = False, True
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            under, fresh = bool(_SUCCESS.search(stripped.lower())), True
        elif not stripped:
            fresh = True
        elif fresh or _BULLET.match(stripped):
            units.append(([_BULLET.sub("", stripped)], under))
            fresh = False
        else:
            units[-1][0].append(stripped)
    return [(" ".join(lines), flag) for lines, flag in units]


def _relative(norm: str, success: bool) -> list[Criterion]:
    """`beats the baseline by 2%`, `2% better than the baseline`, and in a success statement
    `improve val_loss by 2%` or `beat the baseline` (strictly better)."""
    if not _IMPROVE.search(norm):
        return []
    pct, by, baseline = _PERCENT.search(norm), _BY_PERCENT.search(norm), _BASELINE.search(norm)
    hit = by or pct if baseline else by if success else None
    if hit is None and not (success and baseline and _BEAT.search(norm)):
        return []
    fraction = float(hit.group(1)) / 100.0 if hit else 0.0
    return [Criterion(_metric_in(norm), ">=", fraction, relative=True,
                      direction=_direction(norm))]


def _absolute(norm: str, success: bool, relative: bool) -> list[Criterion]:
    """`val_acc >= 0.97`, `val_acc of at least 97%`: bounds on a named metric."""
    found: list[tuple[int, Criterion]] = []
    for pattern, ops in ((_CRITERION, _OPS), (_WORDED, _WORD_OPS)):
        for m in pattern.finditer(norm):
            if relative and m.group(4):
                continue  # "val_loss 2% lower than the baseline" is not `val_loss < 0.02`
            if _METRIC_STEMS.search(m.group(1)) or (success and "_" in m.group(1)):
                found.append((m.start(), _criterion(m.group(1), ops[m.group(2)], m.group(3),
                                                    m.group(4))))
    return [c for _, c in sorted(found, key=lambda pc: pc[0])]


def _metric_in(norm: str) -> str | None:
    """The metric a sentence names (an identifier such as `val_loss` first), if any."""
    words = [w.strip("`*()[],.:;'\"") for w in norm.split()]
    words = [w[:-2] if w.endswith("'s") else w for w in words]
    names = [w for w in words if re.fullmatch(_NAME, w) and _METRIC_STEMS.search(w)
             and not _FILLER.fullmatch(w) and w != "baseline"]
    ranked = [w for w in names if "_" in w] + names
    return ranked[0] if ranked else None


def _direction(norm: str) -> str | None:
    if re.search(r"\b(lower|smaller|less|reduc\w*|decreas\w*|cuts?)\b", norm):
        return "minimize"
    if re.search(r"\b(higher|larger|greater|increas\w*|raises?)\b", norm):
        return "maximize"
    return None


def _criterion(metric: str, op: str, raw: str, percent: str) -> Criterion:
    value = float(raw) / 100.0 if percent else float(raw)
    return Criterion(metric.rstrip("."), op, value)


def _objective(norm: str, criteria: tuple[Criterion, ...]) -> tuple[str | None, str | None]:
    explicit = _OBJECTIVE.search(norm)
    verb = _VERB.search(norm)
    named = _pick_metric(explicit.group(1), everything=True) if explicit else None
    if explicit and named:
        return named, _goal_in(explicit.group(1)) or _goal_of(named, criteria, verb)
    named_criteria = [c for c in criteria if c.metric and c.goal]
    if named_criteria:
        return named_criteria[0].metric, named_criteria[0].goal
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
        if c.metric == name and c.goal:
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


def match_metric(name: str, available: list[str]) -> str | None:
    """The reported metric a name from IDEA.md means: exact, then `val_` prefixed, then
    `accuracy` read as `acc` and `perplexity` as `ppl`."""
    short = name.replace("accuracy", "acc").replace("perplexity", "ppl")
    for candidate in (name, f"val_{name}", short, f"val_{short}"):
        if candidate in available:
            return candidate
    return None
