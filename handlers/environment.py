"""The environment of AI-written training code: ordinary variables pass, secrets never do."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping

SECRET_PATTERNS = (
    "ANTHROPIC_*", "OPENAI_*", "CLAUDE_*", "CODEX_*", "*_API_KEY", "*_APIKEY", "*API_KEY*",
    "*_TOKEN", "*_TOKEN_*", "*TOKEN", "*_SECRET*", "*SECRET", "*PASSWORD*", "*PASSWD*",
    "*_CREDENTIALS*", "*_PRIVATE_KEY*", "AWS_*", "AZURE_*", "GOOGLE_APPLICATION_CREDENTIALS",
    "GCP_*", "GH_*", "GITHUB_*", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "WANDB_API_KEY",
    "SSH_AUTH_SOCK", "GPG_AGENT_INFO", "KRB5CCNAME", "VAULT_*", "NPM_CONFIG__AUTH*",
    "DOCKER_AUTH_CONFIG", "DATABASE_URL", "*_DSN",
)
"""Names withheld from training unless the person passes them with --train-env."""

AGENT_ONLY = ("MLSM_AGENT_CMD", "MLSM_CLAUDE_BIN", "MLSM_CODEX_BIN", "MLSM_MODEL",
              "MLSM_UI_TOKEN", "MLSM_NOTIFY")
"""mlsm's own settings that concern the agent, not the training."""


def _matches(name: str, patterns: Iterable[str]) -> bool:
    upper = name.upper()
    return any(fnmatch.fnmatchcase(upper, p) for p in patterns)


def withheld(name: str) -> bool:
    """Whether `name` is a secret or an agent setting that training never sees by default."""
    return name in AGENT_ONLY or _matches(name, SECRET_PATTERNS)


def training_env(environ: Mapping[str, str],
                 extra: Iterable[str] = ()) -> tuple[dict[str, str], list[str]]:
    """(the training's environment, the names withheld); `extra` names pass regardless."""
    passed = set(extra)
    env: dict[str, str] = {}
    held: list[str] = []
    for name, value in environ.items():
        if name in passed or not withheld(name):
            env[name] = value
        else:
            held.append(name)
    env["PYTHONUNBUFFERED"] = "1"
    return env, sorted(held)
