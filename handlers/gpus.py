"""GPUs through NVML (nvidia-ml-py, extra `mlsm[gpu]`): which exist, how busy, who holds them."""

from __future__ import annotations

import contextlib
import importlib
import os
import threading
from typing import Any

from mlsm.machine.core.errors import ConfigError

MODULE = "pynvml"  # what nvidia-ml-py installs; never parse nvidia-smi
_lock = threading.Lock()
_nvml: Any = None  # the initialised module; False once it proved unavailable


def use(module: Any) -> None:
    """Use `module` as NVML from now on (tests inject a fake); None: load pynvml again."""
    global _nvml
    with _lock:
        _nvml = module


def nvml() -> Any:
    """The initialised NVML module, or None: no nvidia-ml-py, no driver, or no GPU."""
    global _nvml
    with _lock:
        if _nvml is None:
            try:
                module = importlib.import_module(MODULE)
                module.nvmlInit()
                _nvml = module
            except Exception:  # ImportError, NVMLError_LibraryNotFound, a driver mismatch…
                _nvml = False
        return _nvml or None


def count() -> int:
    """How many GPUs NVML sees (0 without NVML)."""
    lib = nvml()
    if lib is None:
        return 0
    try:
        return int(lib.nvmlDeviceGetCount())
    except Exception:  # a foreign library may raise anything; no GPU is the safe answer
        return 0


def visible(spec: str | None) -> list[str]:
    """The GPUs trainings may use: `--gpus` (`0,1,3`; `none`), else every GPU NVML sees that
    the daemon's own CUDA_VISIBLE_DEVICES (if set to indices) leaves visible; [] without NVML."""
    text = (spec or "").strip().lower()
    if text == "none":
        return []
    if text not in ("", "all", "auto"):
        return _checked(_indices(text, "--gpus"))
    found = [str(i) for i in range(count())]
    inherited = os.environ.get("CUDA_VISIBLE_DEVICES")
    if inherited is None or not found:
        return found
    try:
        allowed = set(_indices(inherited, "CUDA_VISIBLE_DEVICES")) if inherited.strip() else set()
    except ConfigError:
        return found  # UUIDs or MIG names: not ours to translate; NVML's list stands
    return [i for i in found if i in allowed]


def _checked(wanted: list[str]) -> list[str]:
    """`--gpus` as given; where NVML answers, every index must exist."""
    seen = count()
    missing = [i for i in wanted if seen and int(i) >= seen]
    if missing:
        raise ConfigError(f"--gpus names GPU {','.join(missing)} but NVML sees {seen} "
                          f"(0 to {seen - 1})")
    return wanted


def _indices(text: str, what: str) -> list[str]:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts or not all(p.isdigit() for p in parts) or len(set(parts)) != len(parts):
        raise ConfigError(f"{what} {text!r}: give GPU indices such as 0,1,3 (or none)")
    return [str(int(p)) for p in parts]


def groups(spec: str | None, per_run: int) -> list[str]:
    """The device groups of the pool (`0,1` each for --gpus-per-run 2); [] without GPUs."""
    devices = visible(spec)
    if not devices:
        return []
    if per_run > len(devices):
        raise ConfigError(f"--gpus-per-run {per_run} but only {len(devices)} GPU(s) to use "
                          f"({','.join(devices)}): lower it or give more with --gpus")
    return [",".join(devices[k:k + per_run])
            for k in range(0, len(devices) - per_run + 1, per_run)]


def _handle(lib: Any, index: str) -> Any:
    return lib.nvmlDeviceGetHandleByIndex(int(index))


def usage(devices: str) -> list[dict[str, Any]]:
    """Utilisation (%) and memory (MB) of each GPU in `devices`; [] without NVML."""
    lib = nvml()
    out: list[dict[str, Any]] = []
    if lib is None:
        return out
    for index in devices.split(","):
        entry: dict[str, Any] = {"index": int(index), "util_pct": None, "mem_used_mb": None,
                                 "mem_total_mb": None}
        with contextlib.suppress(Exception):  # a GPU that fell off the bus reads as unknown
            handle = _handle(lib, index)
            entry["util_pct"] = int(lib.nvmlDeviceGetUtilizationRates(handle).gpu)
            memory = lib.nvmlDeviceGetMemoryInfo(handle)
            entry["mem_used_mb"] = round(memory.used / 2**20)
            entry["mem_total_mb"] = round(memory.total / 2**20)
        out.append(entry)
    return out


def holders(devices: str) -> set[int]:
    """Pids of the processes (compute and graphics) that hold a GPU in `devices`."""
    lib = nvml()
    pids: set[int] = set()
    if lib is None or not devices:
        return pids
    for index in devices.split(","):
        for query in ("nvmlDeviceGetComputeRunningProcesses",
                      "nvmlDeviceGetGraphicsRunningProcesses"):
            with contextlib.suppress(Exception):
                pids.update(int(p.pid) for p in getattr(lib, query)(_handle(lib, index)))
    return pids
