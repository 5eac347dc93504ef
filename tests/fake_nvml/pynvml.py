"""A fake `pynvml` (nvidia-ml-py) for tests: FAKE_NVML_GPUS devices, holders from a file.

Put this folder on PYTHONPATH (or inject the module with `mlsm.handlers.gpus.use`). Each device
reports 37 % utilisation and 1024 of 81920 MiB used; the processes holding device K are the pids
on the lines `K PID` of the file named by FAKE_NVML_HOLDERS (read at each query).
"""

from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Any

MIB = 1 << 20


class NVMLError(Exception):
    """What the real bindings raise."""


def nvmlInit() -> None:
    if os.environ.get("FAKE_NVML_GPUS") is None:
        raise NVMLError("NVML Shared Library Not Found")


def nvmlDeviceGetCount() -> int:
    return int(os.environ.get("FAKE_NVML_GPUS", "0"))


def nvmlDeviceGetHandleByIndex(index: int) -> int:
    if not 0 <= index < nvmlDeviceGetCount():
        raise NVMLError("Invalid Argument")
    return index


def nvmlDeviceGetUtilizationRates(handle: int) -> Any:
    return SimpleNamespace(gpu=37, memory=12)


def nvmlDeviceGetMemoryInfo(handle: int) -> Any:
    return SimpleNamespace(used=1024 * MIB, total=81920 * MIB, free=80896 * MIB)


def nvmlDeviceGetComputeRunningProcesses(handle: int) -> list[Any]:
    path = os.environ.get("FAKE_NVML_HOLDERS")
    if not path or not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as fh:
        rows = [line.split() for line in fh if line.strip()]
    return [SimpleNamespace(pid=int(pid), usedGpuMemory=MIB) for index, pid in rows
            if int(index) == handle]


def nvmlDeviceGetGraphicsRunningProcesses(handle: int) -> list[Any]:
    return []
