"""The training-script templates the builtin agent can run, and when one really fits an idea."""

from __future__ import annotations

import dataclasses
import json
import re
from importlib import resources
from pathlib import Path

from mlsm.handlers.builtin.context import Settings
from mlsm.handlers.builtin.idea import Idea, match_metric
from mlsm.machine.core.errors import ConfigError, ExitCode, MlsmError
from mlsm.machine.core.results import Objective

MARKER = "# mlsm builtin template: "
CAN_DO = ("the built-in agent can tune your own train.py, or run one of its templates: "
          "charlm, classification, regression (--template NAME); for new code use an LLM "
          "agent: --agent claude or codex")
_OBJECTIVE_LINE = re.compile(r"^OBJECTIVE = .*$", re.M)
_GOAL_LINE = re.compile(r"^GOAL = .*$", re.M)

# What an idea may ask for that no template implements: named data sets, pretrained models,
# architectures, other modalities, the person's own data. Any of these rules a template out.
FOREIGN = (
    r"\bsst-?2\b", r"\bglue\b", r"\bimdb\b", r"\bsquad\b", r"\b(?:fashion-?)?mnist\b",
    r"\bcifar[- ]?\d*", r"\bimagenet\b", r"\bcoco\b", r"\bwikitext\S*", r"shakespeare",
    r"\bkaggle\b", r"\buci\b", r"\bhouse[- ]?prices?\b", r"\bhousing\b", r"\btitanic\b",
    r"\biris\b", r"\bpenn treebank\b", r"\benwik\d*", r"\btext8\b", r"\bopenwebtext\b",
    r"\bpre-?trained\b", r"\bfine-?tun\w*", r"\btransformers?\b", r"self-attention",
    r"\battention (?:layers?|heads?|mechanism)", r"multi-head", r"\b(?:ro|distil)?bert\b",
    r"\bgpt-?\w*", r"\bllama\w*", r"\bmistral\b", r"\bt5\b", r"\bllms?\b", r"\bresnet\w*",
    r"\bvit\b", r"\bu-?net\b", r"\bcnns?\b", r"\bconvolution\w*", r"\blstms?\b", r"\bgru\b",
    r"\brnns?\b", r"\brecurrent\b", r"\bdiffusion\b", r"\bgans?\b", r"\bvae\b",
    r"\bautoencoder\w*", r"\bmemory[- ]tokens?\b", r"\bxgboost\b", r"\blightgbm\b",
    r"\brandom forests?\b", r"\bgradient[- ]boost\w*", r"\bsvms?\b", r"\blora\b",
    r"hugging ?face", r"\btorchvision\b", r"\bgnns?\b", r"\bgraph neural", r"\breinforcement\b",
    r"\bimages?\b", r"\bvision\b", r"\bpixels?\b", r"\bphotos?\b", r"\baudio\b", r"\bspeech\b",
    r"\bvideos?\b", r"\bsentiment\b", r"\breviews?\b", r"\btweets?\b", r"\btokeni[sz]\w*",
    r"\bsubword\b", r"\bword[- ]level\b", r"\.csv\b", r"\bcsv\b", r"\bparquet\b",
    r"\breal[- ]world data", r"\breal data(?:set)?\b", r"\b(?:my|our) (?:own )?data(?:set)?\b",
)


class NoTemplateError(MlsmError):
    """No template really fits the idea and there is no train.py: the builtin agent refuses."""

    exit_code = ExitCode.ERROR  # 3: the daemon's step fails, and the run ends FAILED


@dataclasses.dataclass(frozen=True)
class Template:
    """One template: a small PyTorch script under templates/ that uses `mlsm.hooks`."""

    name: str
    summary: str
    metrics: tuple[str, ...]  # what its hooks.result reports; the first is its default objective

    @property
    def objective(self) -> str:
        return self.metrics[0]

    def reports(self, name: str | None) -> str | None:
        """The metric of this template that `name` (from IDEA.md or a flag) means, if any."""
        return match_metric(name, list(self.metrics)) if name else None

    def source(self, objective: Objective | None = None) -> str:
        """The script as written into an experiment: a first line naming the template, and its
        hooks.result objective set to `objective` when the template reports that metric."""
        body = (resources.files("mlsm.handlers.builtin") / "templates" / f"{self.name}.py")
        text = body.read_text(encoding="utf-8")
        if objective is not None and objective.name in self.metrics:
            name, goal = json.dumps(objective.name), json.dumps(objective.goal)
            text = _OBJECTIVE_LINE.sub(lambda _: f"OBJECTIVE = {name}  # from PLAN.md", text, 1)
            text = _GOAL_LINE.sub(lambda _: f"GOAL = {goal}", text, 1)
        return f"{MARKER}{self.name}\n{text}"


TEMPLATES: dict[str, Template] = {
    t.name: t
    for t in (
        Template("classification", "a small MLP that classifies three interleaved spirals "
                 "(generated 2-D data, 1,500 points)", ("val_acc", "val_loss")),
        Template("regression", "a small MLP that fits a smooth nonlinear function of five "
                 "inputs (generated data, 2,500 points)", ("val_loss", "val_mse", "val_rmse")),
        Template("charlm", "a tiny character-level language model (an MLP over a window of "
                 "previous characters) on a 21 KB public-domain text shipped with mlsm",
                 ("val_loss", "val_bpc", "val_ppl")),
    )
}


def foreign(idea: Idea) -> list[str]:
    """What the idea asks for that no template implements, as written there (lower case)."""
    text = idea.text.lower()
    found = [m.group(0) for p in FOREIGN for m in re.finditer(p, text)]
    return list(dict.fromkeys(found))


def choose(idea: Idea, settings: Settings, wanted: str | None) -> tuple[Template, str]:
    """The template to run when there is no train.py, and why: the one named with --template,
    else the one whose task the idea asks for with nothing foreign; else NoTemplateError.
    `wanted` is the objective already decided (flag, status) or named in IDEA.md."""
    if settings.template:
        return _forced(TEMPLATES[settings.template], settings, idea)
    if idea.task is None:
        raise NoTemplateError(f"IDEA.md names no task a built-in template implements: {CAN_DO}")
    extra = foreign(idea)
    if extra:
        quoted = ", ".join(f'"{w}"' for w in extra[:5])
        raise NoTemplateError(f"IDEA.md asks for what no built-in template implements "
                              f"({quoted}): {CAN_DO}")
    template = TEMPLATES[idea.task]
    if wanted and template.reports(wanted) is None:
        raise NoTemplateError(
            f"the objective {wanted} is not a metric the {template.name} template reports "
            f"({', '.join(template.metrics)}): {CAN_DO}")
    return template, why_template(template, idea, settings)


def _forced(template: Template, settings: Settings, idea: Idea) -> tuple[Template, str]:
    if settings.objective and template.reports(settings.objective) is None:
        raise ConfigError(f"the {template.name} template (--template) reports "
                          f"{', '.join(template.metrics)}, not the objective "
                          f"{settings.objective} (--objective): drop one of the two")
    return template, why_template(template, idea, settings)


def why_template(template: Template, idea: Idea | None, settings: Settings) -> str:
    """Why a template runs, as a clause ("chosen ..."): --template, or the idea's task."""
    if settings.template == template.name:
        extra = foreign(idea) if idea else []
        return f"with --template {template.name}" + (
            "; IDEA.md also asks for " + ", ".join(f'"{w}"' for w in extra[:5])
            + ", which this stand-in does not implement" if extra else "")
    words = idea.words_for(template.name)[:6] if idea else []
    quoted = f" ({', '.join(f'“{w}”' for w in words)})" if words else ""
    return f"because IDEA.md asks for a {template.name} task{quoted}"


def script_template(exp_dir: Path) -> Template | None:
    """The template the experiment's train.py was written from, if any."""
    train = exp_dir / "train.py"
    if not train.is_file():
        return None
    return detect(train.read_text(encoding="utf-8", errors="replace"))


def detect(script: str) -> Template | None:
    """The template a train.py was written from, by its first line; None for a person's own."""
    first = script.split("\n", 1)[0]
    if first.startswith(MARKER):
        return TEMPLATES.get(first[len(MARKER):].strip())
    return None
