"""The GPU pool against a fake NVML: device groups, queueing, devices per run, status, holders."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import psutil
import pytest
from helpers import Experiment, read_status, wait_for

from mlsm.handlers import gpus
from mlsm.handlers.launchers.base import Spec
from mlsm.handlers.launchers.local import LocalLauncher
from mlsm.machine.core.config import Config
from mlsm.machine.core.errors import ConfigError
from mlsm.machine.slots import TrainingSlots, pool_for
from mlsm.machine.views import status as status_view

FAKE = Path(__file__).resolve().parent / "fake_nvml"


def _load_fake() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fake_pynvml", FAKE / "pynvml.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def nvml(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """Four fake GPUs; the file it yields lists `index pid` holders."""
    holders = tmp_path / "holders"
    monkeypatch.setenv("FAKE_NVML_GPUS", "4")
    monkeypatch.setenv("FAKE_NVML_HOLDERS", str(holders))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    gpus.use(_load_fake())
    yield holders
    gpus.use(None)


def test_without_nvml_there_is_no_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    gpus.use(False)
    try:
        assert gpus.visible(None) == [] and gpus.groups(None, 1) == []
        given = TrainingSlots(2)
        assert pool_for(Config(), None) is None and pool_for(Config(), given) is given
        assert given.groups == []  # today's counter, unchanged
    finally:
        gpus.use(None)


def test_the_real_bindings_load_or_report_no_gpu() -> None:
    gpus.use(None)
    assert gpus.count() >= 0  # nvidia-ml-py missing, or no driver here: 0, never an error


def test_groups_follow_gpus_and_gpus_per_run(nvml: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    assert gpus.groups(None, 1) == ["0", "1", "2", "3"]
    assert gpus.groups("all", 2) == ["0,1", "2,3"]
    assert gpus.groups(None, 3) == ["0,1,2"]  # a GPU short of a group stays unused
    assert gpus.groups("0, 1,3", 1) == ["0", "1", "3"]
    assert gpus.groups("none", 1) == []
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert gpus.groups(None, 1) == ["2", "3"]  # the daemon's own restriction holds
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert gpus.groups(None, 1) == []


@pytest.mark.parametrize(("spec", "per_run", "message"), [
    ("0,x", 1, "GPU indices"), ("1,1", 1, "GPU indices"), ("0,7", 1, "NVML sees 4"),
    (None, 5, "--gpus-per-run 5"),
])
def test_bad_gpu_settings_are_config_errors(nvml: Path, spec: str | None, per_run: int,
                                            message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        gpus.groups(spec, per_run)


def test_the_pool_hands_each_training_its_own_group_and_queues_the_rest() -> None:
    pool = TrainingSlots(0, ["0,1", "2,3"])
    woken: list[str] = []
    assert pool.limit == 2  # with GPUs: one training per group, not unlimited
    assert pool.try_acquire("a", lambda: woken.append("a"))
    assert pool.try_acquire("b", lambda: woken.append("b"))
    assert not pool.try_acquire("c", lambda: woken.append("c"))
    assert (pool.devices("a"), pool.devices("b"), pool.devices("c")) == ("0,1", "2,3", None)
    assert "GPU group" in pool.waiting_sentence()
    pool.release("a")
    assert woken == ["c"]
    assert pool.try_acquire("c", lambda: None) and pool.devices("c") == "0,1"


def test_max_parallel_caps_the_pool_and_a_counter_stays_a_counter() -> None:
    pool = TrainingSlots(1, ["0", "1"])
    assert pool.limit == 1 and pool.try_acquire("a", lambda: None)
    assert not pool.try_acquire("b", lambda: None)
    counter = TrainingSlots(2)
    assert counter.try_acquire("a", lambda: None) and counter.try_acquire("b", lambda: None)
    assert counter.devices("a") is None and not counter.try_acquire("c", lambda: None)
    assert "--max-parallel 2" in counter.waiting_sentence()


def test_a_reattached_training_keeps_its_recorded_devices() -> None:
    pool = TrainingSlots(0, ["0", "1"])
    pool.force("old", "1")  # still running on GPU 1 after a daemon restart
    assert pool.try_acquire("new", lambda: None) and pool.devices("new") == "0"
    assert not pool.try_acquire("third", lambda: None)
    pool.force("old")  # the re-attach path: the recorded group stays
    assert pool.devices("old") == "1"


def test_a_group_overlapping_a_held_one_is_not_free() -> None:
    pool = TrainingSlots(0, ["0", "1"])
    pool.force("wide", "0,1")  # recorded under --gpus-per-run 2 before a restart
    assert not pool.try_acquire("a", lambda: None)


def test_the_daemons_counter_becomes_a_pool_and_engines_share_one(nvml: Path) -> None:
    counter = TrainingSlots(3)
    assert pool_for(Config(gpus_per_run=2), counter) is counter
    assert counter.groups == ["0,1", "2,3"] and counter.limit == 2
    shared = pool_for(Config(), None)
    assert shared is not None and shared is pool_for(Config(), None)
    assert shared.groups == ["0", "1", "2", "3"]


def test_status_shows_devices_utilisation_and_memory(nvml: Path, tmp_path: Path) -> None:
    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / "IDEA.md").write_text("x")
    handle = LocalLauncher().spawn(Spec(argv=[sys.executable, "-c", "import signal; "
                                              "signal.pause()"], cwd=exp, env=dict(os.environ),
                                        stdout=tmp_path / "out", devices="2,3"))
    try:
        doc = {"schema": 2, "seq": 1, "state": "training", "iteration": 1,
               "training": {**handle.handle, "run_dir": str(exp / "logs" / "iter_001")}}
        (exp / "status.json").write_text(json.dumps(doc))
        snap = status_view.snapshot(exp)
        training = snap["training"]
        assert training["devices"] == "2,3"
        assert [g["index"] for g in training["gpus"]] == [2, 3]
        assert training["gpus"][0] == {"index": 2, "util_pct": 37, "mem_used_mb": 1024,
                                       "mem_total_mb": 81920}
        assert "gpus 2,3 (37% 1024/81920 MB, 37% 1024/81920 MB)" in status_view._line(snap)
    finally:
        LocalLauncher().kill(handle.handle, 1.0)


def test_a_process_left_on_the_runs_gpu_is_killed_and_a_strangers_is_not(
        nvml: Path, tmp_path: Path) -> None:
    sleeper = [sys.executable, "-c", "import signal; signal.pause()"]  # until killed
    # A person's own job, started from their shell before the run.
    shell = subprocess.Popen(["sh", "-c", f"{sys.executable} -c 'import signal; "
                                          f"signal.pause()'; true"])
    stranger = wait_for(lambda: psutil.Process(shell.pid).children(), 10, "the job")[0]
    launcher = LocalLauncher()
    run = launcher.spawn(Spec(argv=sleeper, cwd=tmp_path, env=dict(os.environ),
                              stdout=tmp_path / "out", devices="1"))
    # An escapee: started during the run, its tags dropped (env -i), adopted by the daemon.
    escapee = subprocess.Popen(["env", "-i", *sleeper])
    other_run = subprocess.Popen(sleeper, env={**os.environ, "MLSM_RUN_ID": "another"})
    nvml.write_text(f"1 {stranger.pid}\n1 {escapee.pid}\n1 {other_run.pid}\n"
                    f"0 {escapee.pid}\n")
    try:
        assert launcher.kill(run.handle, 1.0).found >= 1
        killed = launcher.kill_gpu_holders(run.handle, 1.0)
        assert killed == [escapee.pid]
        wait_for(lambda: escapee.poll() is not None, 10, "the escapee to die")
        assert stranger.is_running() and other_run.poll() is None
        assert launcher.kill_gpu_holders({**run.handle, "devices": None}, 1.0) == []
    finally:
        stranger.kill()
        for proc in (shell, escapee, other_run):
            proc.kill()
            proc.wait()


# ----- a real daemon with the fake NVML on its path ------------------------------------------
HELD = '''\
import os, time
from pathlib import Path
from mlsm import hooks
shared = Path(os.environ["TEST_SHARED"])
name = Path(os.environ["MLSM_DIR"]).name
(shared / f"{name}.devices").write_text(os.environ.get("CUDA_VISIBLE_DEVICES", "-"))
while (shared / f"hold_{name}").exists():
    hooks.heartbeat()
    time.sleep(0.05)
hooks.result(loss=1.0)
'''


def test_a_daemon_gives_each_training_its_gpu_and_queues_the_third(exp: Experiment) -> None:
    dirs = [exp.path, exp.path.parent / "b", exp.path.parent / "c"]
    for d in dirs:
        d.mkdir(exist_ok=True)
        (d / "IDEA.md").write_text("Hold a GPU.")
        (d / "PLAN.md").write_text("# plan")
        (d / "train.py").write_text(HELD)
        (exp.shared / f"hold_{d.name}").write_text("")
    env = {"PYTHONPATH": str(FAKE), "FAKE_NVML_GPUS": "2"}
    daemon = exp.mlsm("watch", *map(str, dirs[1:]), "--max-iterations", "1",
                      "--heartbeat-timeout", "60", **env)
    seen = wait_for(lambda: _devices(exp, dirs) if len(_devices(exp, dirs)) == 2 else None,
                    60, "two trainings on two GPUs")
    assert sorted(seen.values()) == ["0", "1"]
    waiting = next(d for d in dirs if d.name not in seen)
    wait_for(lambda: "GPU group" in (read_status(waiting).get("waiting_for") or ""), 30,
             "the third to wait for a GPU group")
    busy = next(iter(seen))
    snap = json.loads(subprocess.run(
        [sys.executable, "-m", "mlsm.machine.cli", "status", str(exp.path.parent / busy),
         "--json"],
        capture_output=True, text=True, env={**exp.env, **env}, check=True).stdout)
    assert snap["training"]["devices"] == seen[busy]
    assert snap["training"]["gpus"][0]["util_pct"] == 37
    (exp.shared / f"hold_{busy}").unlink()
    wait_for(lambda: (exp.shared / f"{waiting.name}.devices").exists(), 60,
             "the third to get the freed GPU")
    assert (exp.shared / f"{waiting.name}.devices").read_text() == seen[busy]
    for d in dirs:
        (exp.shared / f"hold_{d.name}").unlink(missing_ok=True)
    wait_for(lambda: all(read_status(d).get("state") == "done" for d in dirs), 60, "all done")
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(30) == 130


def _devices(exp: Experiment, dirs: list[Path]) -> dict[str, str]:
    found = {}
    for d in dirs:
        path = exp.shared / f"{d.name}.devices"
        if path.exists() and path.read_text():
            found[d.name] = path.read_text()
    return found


def test_nvml_is_loaded_by_status_only_for_a_run_with_devices(tmp_path: Path) -> None:
    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / "IDEA.md").write_text("x")
    code = ("import sys; from pathlib import Path; from mlsm.machine.views import status; "
            f"status.snapshot(Path({str(exp)!r})); print('mlsm.handlers.gpus' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "False"
