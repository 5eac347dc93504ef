"""The training-script templates the builtin agent can write, and how one is chosen."""

from __future__ import annotations

import dataclasses
from importlib import resources
from pathlib import Path

from mlsm.handlers.builtin.idea import Idea

MARKER = "# mlsm builtin template: "


@dataclasses.dataclass(frozen=True)
class Template:
    """One template: a small PyTorch script under templates/ that uses `mlsm.hooks`."""

    name: str
    summary: str
    objective: str
    goal: str

    def source(self) -> str:
        """The script as written into an experiment, with a first line naming the template."""
        body = (resources.files("mlsm.handlers.builtin") / "templates" / f"{self.name}.py")
        return f"{MARKER}{self.name}\n" + body.read_text(encoding="utf-8")


TEMPLATES: dict[str, Template] = {
    t.name: t
    for t in (
        Template("classification", "a small MLP that classifies three interleaved spirals "
                 "(generated 2-D data, 1,500 points)", "val_acc", "maximize"),
        Template("regression", "a small MLP that fits a smooth nonlinear function of five "
                 "inputs (generated data, 2,500 points)", "val_loss", "minimize"),
        Template("charlm", "a tiny character-level language model (an MLP over a window of "
                 "previous characters) on a 21 KB public-domain text shipped with mlsm",
                 "val_loss", "minimize"),
    )
}


def choose(idea: Idea) -> tuple[Template, str]:
    """The template for an idea, and a sentence saying why it was chosen."""
    template = TEMPLATES[idea.task]
    words = idea.words_for(template.name)
    if not words:
        return template, "IDEA.md names no task, so the default classification template is used"
    quoted = ", ".join(f'"{w}"' for w in words[:6])
    return template, f"IDEA.md mentions {quoted}"


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
