"""Config resolves once: flag > MLSM_* environment > mlsm.toml > default, with clear errors."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from mlsm.machine.core.config import OPTIONS, Config, resolve
from mlsm.machine.core.errors import ConfigError


def test_defaults(tmp_path: Path) -> None:
    cfg = resolve(tmp_path, {}, {})
    assert cfg.max_iterations == 10 and cfg.max_hours == 24 and cfg.agent == "claude"
    assert cfg.train_argv() == [sys.executable, "train.py"]


def test_precedence_flag_env_file_default(tmp_path: Path) -> None:
    (tmp_path / "mlsm.toml").write_text("max-iterations = 4\ngrace = 3\nrun_timeout = 9\n")
    env = {"MLSM_GRACE": "2", "MLSM_MAX_ITERATIONS": "5"}
    cfg = resolve(tmp_path, {"max_iterations": 6}, env)
    assert (cfg.max_iterations, cfg.grace, cfg.run_timeout) == (6, 2.0, 9.0)
    assert cfg.sources["max_iterations"] == "flag" and cfg.sources["grace"] == "env"
    assert cfg.sources["run_timeout"] == "file" and "agent" not in cfg.sources


def test_config_is_frozen(tmp_path: Path) -> None:
    cfg = resolve(tmp_path, {}, {})
    with pytest.raises(AttributeError):
        cfg.grace = 1  # type: ignore[misc]


@pytest.mark.parametrize("raw,expected", [("1", True), ("yes", True), ("off", False),
                                          ("FALSE", False)])
def test_bool_env(tmp_path: Path, raw: str, expected: bool) -> None:
    assert resolve(tmp_path, {}, {"MLSM_POLL": raw}).poll is expected


def test_list_from_env_and_file(tmp_path: Path) -> None:
    assert resolve(tmp_path, {}, {"MLSM_TRAIN_ENV": "A, B"}).train_env == ("A", "B")
    (tmp_path / "mlsm.toml").write_text('train-env = ["WANDB_MODE"]\n')
    assert resolve(tmp_path, {}, {}).train_env == ("WANDB_MODE",)


@pytest.mark.parametrize("toml,needle", [
    ("max_iterations = 2.5\n", "expected a whole number"),
    ("max-iterations = true\n", "expected a whole number"),
    ('agent = "gpt"\n', "expected one of claude, codex, command, builtin"),
    ("poll = 3\n", "expected true or false"),
    ("grace = -1\n", "'grace' must be >= 0"),
    ("bogus = 1\n", "unknown key 'bogus'"),
])
def test_bad_file_values_name_key_and_value(tmp_path: Path, toml: str, needle: str) -> None:
    (tmp_path / "mlsm.toml").write_text(toml)
    with pytest.raises(ConfigError, match=r"mlsm\.toml") as info:
        resolve(tmp_path, {}, {})
    assert needle in str(info.value)


def test_toml_that_is_a_directory_or_binary(tmp_path: Path) -> None:
    (tmp_path / "mlsm.toml").mkdir()
    with pytest.raises(ConfigError, match="is not a file"):
        resolve(tmp_path, {}, {})
    (tmp_path / "mlsm.toml").rmdir()
    (tmp_path / "mlsm.toml").write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match="not UTF-8"):
        resolve(tmp_path, {}, {})


def test_command_agent_needs_a_command() -> None:
    with pytest.raises(ConfigError, match="--agent-cmd"):
        Config(agent="command").agent_argv()
    assert Config(agent_cmd="aider --yes 'a b'").agent_argv() == ["aider", "--yes", "a b"]


def test_every_option_has_env_and_flag_names() -> None:
    for opt in OPTIONS:
        assert opt.env == "MLSM_" + opt.name.upper()
        assert opt.flag.startswith("--") and "_" not in opt.flag
        assert hasattr(Config(), opt.name)
