"""Training never sees the agent's secrets; watchdog overflow wakes every engine."""

from __future__ import annotations

import json
import logging
from typing import Any

from helpers import Experiment

from mlsm.handlers.environment import training_env
from mlsm.machine.daemon import OverflowHandler

DUMP_ENV = ("import json, os\njson.dump(dict(os.environ), "
            "open(os.path.join(os.environ['TEST_SHARED'], 'env.json'), 'w'))\n")
SECRETS = {
    "ANTHROPIC_API_KEY": "sk-ant-x", "ANTHROPIC_BASE_URL": "http://x", "OPENAI_API_KEY": "sk-x",
    "GITHUB_TOKEN": "ghp", "AWS_SECRET_ACCESS_KEY": "aws", "AWS_ACCESS_KEY_ID": "id",
    "MY_SERVICE_TOKEN": "t", "HF_TOKEN": "hf", "WANDB_API_KEY": "w", "DB_PASSWORD": "p",
    "GOOGLE_APPLICATION_CREDENTIALS": "/k.json", "CLAUDE_CODE_OAUTH_TOKEN": "o",
}


def test_training_env_withholds_secrets_only(exp: Experiment) -> None:
    exp.write("IDEA.md", "x")
    exp.write("train.py", DUMP_ENV)
    run = exp.mlsm("run", "--max-iterations", "1", "--train-env", "WANDB_MODE",
                   "--train-env", "MY_SERVICE_TOKEN", WANDB_MODE="offline",
                   CUDA_VISIBLE_DEVICES="0", SOMETHING_RANDOM="r", **SECRETS)
    assert run.wait() == 7, run.output()  # the script reports no objective
    env = json.loads((exp.shared / "env.json").read_text())
    leaked = sorted(set(SECRETS) & set(env) - {"MY_SERVICE_TOKEN"})
    assert leaked == []
    assert env["MY_SERVICE_TOKEN"] == "t"  # named by the person: passed on purpose
    assert env["WANDB_MODE"] == "offline" and env["CUDA_VISIBLE_DEVICES"] == "0"
    assert env["SOMETHING_RANDOM"] == "r"  # ordinary variables pass (secrets never do)
    assert "environment_withheld" in exp.runner_log()
    assert env["MLSM_RUN_DIR"].endswith("iter_001") and env["PYTHONUNBUFFERED"] == "1"
    agent_env_seen = (exp.path / "logs" / "iter_001" / "agent_analyze.log").exists()
    assert agent_env_seen  # the agent ran with the full environment (it needs its keys)


def test_training_env_unit() -> None:
    env, held = training_env({"PATH": "/bin", "LC_ALL": "C", "OPENAI_API_KEY": "x",
                              "MY_TOKEN": "t", "DATA_DIR": "/d", "HF_DATASETS_CACHE": "/c"},
                             extra=("MY_TOKEN",))
    assert env == {"PATH": "/bin", "LC_ALL": "C", "MY_TOKEN": "t", "DATA_DIR": "/d",
                   "HF_DATASETS_CACHE": "/c", "PYTHONUNBUFFERED": "1"}
    assert held == ["OPENAI_API_KEY"]


class _FakeExp:
    def __init__(self) -> None:
        self.woken = 0
        self.events: list[str] = []
        self.log = self

    def warning(self, event: str, **_: Any) -> None:
        self.events.append(event)

    def wake(self) -> None:
        self.woken += 1


def test_inotify_overflow_wakes_every_engine() -> None:
    exps = [_FakeExp(), _FakeExp()]
    handler = OverflowHandler(lambda: exps)  # type: ignore[arg-type, return-value]
    logger = logging.getLogger("watchdog.observers")
    logger.addHandler(handler)
    try:
        logging.getLogger("watchdog.observers.inotify_c").warning(
            "Inotify queue overflowed; filesystem events were lost")
        logging.getLogger("watchdog.observers.inotify_c").warning("something else")
    finally:
        logger.removeHandler(handler)
    assert [e.woken for e in exps] == [1, 1]
    assert exps[0].events == ["inotify_overflow"]
