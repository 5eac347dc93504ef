"""Every option of mlsm, resolved once (flag > MLSM_* env > mlsm.toml > default) into Config."""

from __future__ import annotations

import dataclasses
import math
import os
import shlex
import sys
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from mlsm.hooks.layout import TRAIN
from mlsm.hooks.rundir import read_capped
from mlsm.machine.core.errors import ConfigError

AGENTS = ("claude", "codex", "command", "builtin")
GOALS = ("minimize", "maximize")


@dataclasses.dataclass(frozen=True)
class Option:
    """One setting: its name (snake_case), parser, default and one line of help."""

    name: str
    kind: str  # "str" | "int" | "float" | "bool" | "list" | "choice"
    default: Any
    help: str
    choices: tuple[str, ...] = ()
    minimum: float | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return "MLSM_" + self.name.upper()


OPTIONS: tuple[Option, ...] = (
    Option("agent", "choice", "claude", "Which agent plans, codes and analyzes.", AGENTS),
    Option("agent_cmd", "str", None, "Command line of the `command` agent (split like a shell)."),
    Option("max_iterations", "int", 10, "Iterations of code → train → analyze.", minimum=1),
    Option("train_cmd", "str", None, "Training command (default: this Python running train.py)."),
    Option("agent_timeout", "float", 3600.0, "Seconds one agent step may take.", minimum=0),
    Option("agent_idle_timeout", "float", 900.0,
           "Seconds an agent's transcript may stay silent before it counts as hung (0: off).",
           minimum=0),
    Option("agent_retries", "int", 3, "Retries of a failed agent step before FAILED.", minimum=0),
    Option("retry_backoff", "float", 2.0, "First back-off in seconds; doubles each retry.",
           minimum=0),
    Option("run_timeout", "float", 0.0, "Seconds one training run may take (0: no limit).",
           minimum=0),
    Option("grace", "float", 10.0, "Seconds between SIGTERM and SIGKILL.", minimum=0),
    Option("max_hours", "float", 24.0, "Wall-clock budget of the whole experiment, in hours.",
           minimum=0),
    Option("heartbeat_timeout", "float", 600.0,
           "Seconds without a new heartbeat before training counts as stale.", minimum=0),
    Option("startup_grace", "float", 900.0, "Seconds allowed before the first heartbeat.",
           minimum=0),
    Option("output_timeout", "float", 1800.0,
           "For scripts that never beat: seconds without log growth before stale.", minimum=0),
    Option("max_failures", "int", 3, "Consecutive failed iterations before reporting.",
           minimum=1),
    Option("patience", "int", 0,
           "Iterations without a better metric before reporting (0: off).", minimum=0),
    Option("max_cost_usd", "float", 0.0, "Agent spending budget in USD (0: no limit).",
           minimum=0),
    Option("model", "str", None, "Model name passed to the agent CLI."),
    Option("max_turns", "int", 40, "Turn limit of one agent step.", minimum=1),
    Option("allow_pip", "bool", False, "Let the agent run `pip install`."),
    Option("allow_uv", "bool", False, "Let the agent run `uv pip install`."),
    Option("dangerously_skip_permissions", "bool", False,
           "Give the agent every tool without asking (only in a sandbox you trust)."),
    Option("claude_bin", "str", "claude", "The Claude Code executable."),
    Option("codex_bin", "str", "codex", "The Codex CLI executable."),
    Option("train_env", "list", (),
           "Extra environment variable names passed to training (secrets are withheld)."),
    Option("objective", "str", None, "Metric to optimise (default: the first in result.json)."),
    Option("goal", "choice", None, "Direction of the objective.", GOALS),
    Option("tensorboard", "bool", False,
           "Write each iteration's metrics as TensorBoard files (logs/iter_NNN/tb), from the "
           "daemon, not the training loop."),
    Option("poll", "bool", False, "Poll the filesystem instead of inotify (network mounts)."),
    Option("poll_interval", "float", 1.0, "Seconds between polls with --poll.", minimum=0.05),
    Option("max_parallel", "int", 0, "Experiments training at once (0: no limit).", minimum=0),
    # The GPU pool and torchrun (one block: devices per training, ranks per training).
    Option("gpus", "str", None,
           "GPUs trainings may use: 0,1,3, or none (default: every GPU NVML sees)."),
    Option("gpus_per_run", "int", 1, "GPUs each training gets from --gpus.", minimum=1),
    Option("nproc_per_node", "int", 0,
           "torchrun: processes per node (0: one per GPU of the run, else 1).", minimum=0),
    Option("torchrun_args", "str", None,
           "torchrun: more arguments, split like a shell (--nnodes 2 --rdzv-endpoint h:29400)."),
    Option("hook_timeout", "float", 60.0, "Seconds a lifecycle hook may run.", minimum=0),
    Option("sandbox", "choice", "auto",
           "Run training in a bubblewrap sandbox (auto: where a preflight succeeds).",
           ("auto", "bwrap", "none")),
    Option("sandbox_bind", "list", (),
           "Paths training may use inside the sandbox (datasets, caches): PATH, PATH:ro."),
    Option("allow_network", "bool", False, "Let sandboxed training reach the network."),
    Option("max_memory", "str", None,
           "Memory limit of one training, e.g. 16G or 512M (exit reason memory_limit)."),
    Option("max_procs", "int", 2048,
           "Processes one training may have at once (exit reason process_limit).", minimum=1),
    Option("max_open_files", "int", 4096, "Open files per training process.", minimum=16),
    Option("params_style", "choice", "flags",
           "How [params] values reach the script: --name value flags, or NAME variables.",
           ("flags", "env")),
    Option("max_log_mb", "float", 500.0,
           "Size of a training's stdout.log or stderr.log past which only its tail is kept.",
           minimum=1),
    Option("template", "str", None,
           "Built-in agent: the named template to run (charlm, classification, regression)."),
    Option("launcher", "choice", "local", "How training runs: local, or a Slurm batch job.",
           ("local", "slurm", "torchrun")),
    Option("ui", "int", 0, "Serve the web UI on this port from the daemon (0: off).", minimum=0),
    Option("ui_host", "str", "127.0.0.1",
           "Address the web UI binds to; any but loopback requires a token."),
    Option("ui_token", "str", None,
           "Token the web UI asks for (default: none on loopback, a printed one elsewhere)."),
    Option("mlflow", "str", None,
           "Export every iteration to MLflow at this tracking URI, from the files."),
    Option("mlflow_live", "bool", False,
           "Send a running iteration's metrics to MLflow as they come, not when it ends "
           "(costs CPU beside the training)."),
    Option("wandb", "bool", False,
           "Export every iteration to W&B in offline mode (`wandb sync` later), from the files."),
    Option("notify", "str", None,
           "POST a JSON message to this URL on DONE, FAILED, a stale kill and a budget stop."),
    Option("slurm_partition", "str", None, "Slurm: the partition (sbatch --partition)."),
    Option("slurm_time", "str", None, "Slurm: the job's time limit (sbatch --time, 4:00:00)."),
    Option("slurm_gres", "str", None, "Slurm: generic resources (sbatch --gres, gpu:1)."),
    Option("slurm_account", "str", None, "Slurm: the account to charge (sbatch --account)."),
    Option("slurm_cpus_per_task", "int", None, "Slurm: CPUs per task (sbatch --cpus-per-task).",
           minimum=1),
    Option("slurm_mem", "str", None, "Slurm: memory per node (sbatch --mem, 16G)."),
    Option("slurm_nodes", "int", 1, "Slurm: nodes; above 1 the training runs through srun.",
           minimum=1),
    Option("slurm_extra", "str", None, "Slurm: more sbatch arguments (split like a shell)."),
)
OPTIONS_BY_NAME = {o.name: o for o in OPTIONS}
TRUE = {"1", "true", "yes", "on"}
FALSE = {"0", "false", "no", "off", ""}


@dataclasses.dataclass(frozen=True)
class Config:
    """The resolved settings of one experiment; built only by `resolve`."""

    agent: str = "claude"
    agent_cmd: str | None = None
    max_iterations: int = 10
    train_cmd: str | None = None
    agent_timeout: float = 3600.0
    agent_idle_timeout: float = 900.0
    agent_retries: int = 3
    retry_backoff: float = 2.0
    run_timeout: float = 0.0
    grace: float = 10.0
    max_hours: float = 24.0
    heartbeat_timeout: float = 600.0
    startup_grace: float = 900.0
    output_timeout: float = 1800.0
    max_failures: int = 3
    patience: int = 0
    max_cost_usd: float = 0.0
    model: str | None = None
    max_turns: int = 40
    allow_pip: bool = False
    allow_uv: bool = False
    dangerously_skip_permissions: bool = False
    claude_bin: str = "claude"
    codex_bin: str = "codex"
    train_env: tuple[str, ...] = ()
    objective: str | None = None
    goal: str | None = None
    tensorboard: bool = False
    poll: bool = False
    poll_interval: float = 1.0
    max_parallel: int = 0
    gpus: str | None = None
    gpus_per_run: int = 1
    nproc_per_node: int = 0
    torchrun_args: str | None = None
    hook_timeout: float = 60.0
    sandbox: str = "auto"
    sandbox_bind: tuple[str, ...] = ()
    allow_network: bool = False
    max_memory: str | None = None
    max_procs: int = 2048
    max_open_files: int = 4096
    max_log_mb: float = 500.0
    params_style: str = "flags"
    template: str | None = None
    launcher: str = "local"
    ui: int = 0
    ui_host: str = "127.0.0.1"
    ui_token: str | None = None
    mlflow: str | None = None
    mlflow_live: bool = False
    wandb: bool = False
    notify: str | None = None
    slurm_partition: str | None = None
    slurm_time: str | None = None
    slurm_gres: str | None = None
    slurm_account: str | None = None
    slurm_cpus_per_task: int | None = None
    slurm_mem: str | None = None
    slurm_nodes: int = 1
    slurm_extra: str | None = None
    params: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # mlsm.toml [params]
    sources: Mapping[str, str] = dataclasses.field(default_factory=dict, compare=False)

    def memory_bytes(self) -> int | None:
        """--max-memory in bytes (None: no limit); a clear error for a bad value."""
        text = (self.max_memory or "").strip().upper().removesuffix("B")
        if not text or text == "0":
            return None
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(text[-1:], 1)
        try:
            value = float(text[:-1] if scale > 1 else text) * scale
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise ConfigError(f"--max-memory {self.max_memory!r}: use a size such as 16G, "
                              f"512M or a number of bytes") from None
        if value < 16 << 20:
            raise ConfigError(f"--max-memory {self.max_memory!r} is below 16M: too small to "
                              f"start Python")
        return int(value)

    def train_argv(self) -> list[str]:
        """The training command as an argv list."""
        if self.train_cmd:
            try:
                argv = shlex.split(self.train_cmd)
            except ValueError as exc:
                raise ConfigError(f"--train-cmd {self.train_cmd!r} cannot be split like a shell "
                                  f"line ({exc}): fix its quotes") from None
            if not argv:
                raise ConfigError("--train-cmd is empty: give the training command")
            return argv
        return [sys.executable, TRAIN]

    def agent_argv(self) -> list[str]:
        """The `command` agent's argv; a clear error when it is missing."""
        if not self.agent_cmd or not self.agent_cmd.strip():
            raise ConfigError(
                "--agent command needs --agent-cmd (or MLSM_AGENT_CMD / agent-cmd in mlsm.toml)"
            )
        try:
            return shlex.split(self.agent_cmd)
        except ValueError as exc:
            raise ConfigError(f"--agent-cmd {self.agent_cmd!r} cannot be split like a shell "
                              f"line ({exc}): fix its quotes") from None


def parse_value(opt: Option, raw: Any, origin: str) -> Any:
    """Turn a raw flag/env/toml value into the option's type; errors name key and value."""
    try:
        value = _PARSERS[opt.kind](opt, raw)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ConfigError(f"{origin}: bad value {_short(raw)} for {opt.name!r}: {exc}") from None
    if opt.minimum is not None and value is not None and value < opt.minimum:
        raise ConfigError(f"{origin}: {opt.name!r} must be >= {opt.minimum:g}, got {_short(raw)}")
    return value


def _short(raw: Any) -> str:
    """A value as an error message quotes it: one line, at most 80 characters."""
    try:
        text = repr(raw)
    except ValueError:  # an integer too long to print
        text = "a number too large"
    return text if len(text) <= 80 else text[:77] + "..."


def _parse_bool(opt: Option, raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in TRUE:
        return True
    if text in FALSE:
        return False
    raise ValueError("expected true or false")


def _parse_int(opt: Option, raw: Any) -> int:
    if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
        raise ValueError("expected a whole number")
    return int(str(raw).strip()) if isinstance(raw, str) else int(raw)


def _parse_float(opt: Option, raw: Any) -> float:
    if isinstance(raw, bool):
        raise ValueError("expected a number")
    value = float(raw)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError("expected a finite number")
    return value


def _parse_choice(opt: Option, raw: Any) -> str:
    text = str(raw).strip()
    if text not in opt.choices:
        raise ValueError("expected one of " + ", ".join(opt.choices))
    return text


def _parse_list(opt: Option, raw: Any) -> tuple[str, ...]:
    if isinstance(raw, str):
        return tuple(p.strip() for p in raw.split(",") if p.strip())
    if isinstance(raw, list | tuple) and all(isinstance(p, str) for p in raw):
        return tuple(raw)
    raise ValueError("expected a list of names")


def _parse_str(opt: Option, raw: Any) -> str:
    if not isinstance(raw, str):
        raise ValueError("expected a string")
    return raw


_PARSERS: dict[str, Callable[[Option, Any], Any]] = {
    "bool": _parse_bool,
    "int": _parse_int,
    "float": _parse_float,
    "choice": _parse_choice,
    "list": _parse_list,
    "str": _parse_str,
}


TOML_CAP = 1 << 20
"""The largest mlsm.toml mlsm reads."""


def read_toml(exp_dir: Path) -> dict[str, Any]:
    """Read `<dir>/mlsm.toml` (absent → {}); unknown keys and bad files are errors."""
    path = exp_dir / "mlsm.toml"
    if not path.exists():
        return {}
    if not path.is_file():
        raise ConfigError(f"{path} is not a file: replace it with a TOML file or remove it")
    raw = read_capped(path.resolve(), TOML_CAP)
    if raw is None:
        raise ConfigError(f"cannot read {path} (unreadable or over {TOML_CAP >> 20} MB): "
                          f"fix its permissions or shorten it")
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not UTF-8 text: save it as UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML ({exc}): fix the syntax") from None
    except RecursionError:
        raise ConfigError(f"{path} nests too deeply to be a settings file: fix it") from None
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name == "hooks" and isinstance(value, dict):
            continue  # lifecycle hook commands, read by mlsm.handlers.lifecycle
        if name == "params" and isinstance(value, dict):
            out["params"] = value  # a search space, read by mlsm.handlers.params
            continue
        if name in TABLES and isinstance(value, dict):
            out.update(_table(path, name, value))
            continue
        if name not in OPTIONS_BY_NAME:
            raise ConfigError(f"{path}: unknown key {key!r} (known: {_known_keys()})")
        out[name] = value
    return out


TABLES = ("slurm",)
"""mlsm.toml tables whose keys are options with the table's prefix ([slurm] time → slurm_time)."""


def _table(path: Path, table: str, values: dict[str, Any]) -> dict[str, Any]:
    """The options of one `[table]`, named with its prefix; an unknown key is an error."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{table}_{key.replace('-', '_')}"
        if name not in OPTIONS_BY_NAME:
            known = ", ".join(o.name[len(table) + 1:].replace("_", "-") for o in OPTIONS
                              if o.name.startswith(f"{table}_"))
            raise ConfigError(f"{path}: unknown key {key!r} in [{table}] (known: {known})")
        out[name] = value
    return out


def _known_keys() -> str:
    return ", ".join(o.name.replace("_", "-") for o in OPTIONS)


def resolve(
    exp_dir: Path | None,
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Resolve flag > environment > mlsm.toml > default, once, into a frozen Config."""
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    environ = os.environ if environ is None else environ
    file_values = read_toml(exp_dir) if exp_dir is not None else {}
    space = file_values.pop("params", {})
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for opt in OPTIONS:
        if opt.name in flags:
            values[opt.name] = parse_value(opt, flags[opt.name], f"option {opt.flag}")
            sources[opt.name] = "flag"
        elif opt.env in environ:
            values[opt.name] = parse_value(opt, environ[opt.env], f"environment {opt.env}")
            sources[opt.name] = "env"
        elif opt.name in file_values:
            origin = f"{exp_dir}/mlsm.toml"
            values[opt.name] = parse_value(opt, file_values[opt.name], origin)
            sources[opt.name] = "file"
    config = Config(**values, params=space, sources=sources)
    config.train_argv()  # a bad command line or size is a start-up error, not a failed run
    config.memory_bytes()
    return config
