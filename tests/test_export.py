"""Trackers fed from the files: MLflow against real local stores (SQLite and file), W&B in
offline mode read back from the files it writes; no duplicates across daemon restarts or a
second `mlsm export`."""

from __future__ import annotations

import json
import os
import signal
import struct
from pathlib import Path
from typing import Any

import pytest
from helpers import Experiment, Mlsm, wait_for

TRAIN = '''\
import os, time
from mlsm import hooks
cfg = hooks.params(lr=0.1, hidden=64)
it = int(os.environ["MLSM_ITERATION"])
for i in range({steps}):
    hooks.log(step=i, total_steps={steps}, loss=1.0 / (i + it), acc=i / {steps})
    time.sleep({pause})
hooks.result(loss=1.0 / (it + 1), goal="minimize")
'''


def train(steps: int = 250, pause: float = 0.0) -> str:
    return TRAIN.format(steps=steps, pause=pause)


def run_to_done(exp: Experiment, *args: str, **env: str) -> None:
    exp.write("IDEA.md", "Make the loss small.\n")
    run = exp.mlsm("run", "--max-iterations", "2", *args, **{"FAKE_TRAIN_BODY": train(),
                                                               **env})
    assert run.wait(180) == 0, run.output()


# ----- MLflow ------------------------------------------------------------------------------------
def mlflow_runs(uri: str) -> tuple[Any, Any, list[Any]]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("mlsm")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1, [r.info.run_name for r in runs]
    children = sorted((r for r in runs if "mlflow.parentRunId" in r.data.tags),
                      key=lambda r: r.info.run_name)
    return client, parents[0], children


def check_mlflow(uri: str, exp_dir: Path, steps: int = 250) -> None:
    client, parent, children = mlflow_runs(uri)
    assert parent.info.run_name == "exp" and parent.info.status == "FINISHED"
    assert parent.data.tags["mlsm.state"] == "done"
    assert parent.data.tags["mlsm.best"] == "loss=0.333333"
    assert "max-iterations 2" in parent.data.tags["mlsm.stop_reason"]
    parent_files = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"REPORT.md", "PLAN.md", "results.tsv"} <= parent_files
    assert [c.info.run_name for c in children] == ["exp/iter_001", "exp/iter_002"]
    for it, child in enumerate(children, start=1):
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.info.status == "FINISHED"
        assert child.data.params == {"lr": "0.1", "hidden": "64"}
        assert child.data.tags["mlsm.decision"] == "continue"
        assert child.data.tags["mlsm.outcome"] == "ok"
        assert child.data.metrics["result.loss"] == pytest.approx(1.0 / (it + 1))
        history = client.get_metric_history(child.info.run_id, "loss")
        assert sorted(m.step for m in history) == list(range(steps))  # each step once
        assert history[0].value == pytest.approx(1.0 / it)
        files = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert {"train.py", "result.json", "decision.json"} <= files
        snapshot = client.download_artifacts(child.info.run_id, "train.py",
                                             str(exp_dir.parent / f"dl{it}"))
        assert Path(snapshot).read_text() == (exp_dir / "logs" / f"iter_{it:03d}" /
                                              "train.py").read_text()


def test_mlflow_sqlite_from_the_daemon_and_again_with_export(exp: Experiment) -> None:
    pytest.importorskip("mlflow")
    uri = f"sqlite:///{exp.path.parent / 'mlflow.db'}"
    run_to_done(exp, "--mlflow", uri)
    check_mlflow(uri, exp.path)
    ledger = json.loads((exp.path / ".mlsm" / "export_mlflow.json").read_text())
    assert ledger[uri]["iterations"]["2"]["closed"] is True
    again = Mlsm(["export", str(exp.path), "--mlflow", uri], exp.path.parent, exp.env)
    assert again.wait(120) == 0, again.output()
    check_mlflow(uri, exp.path)  # nothing new, nothing twice


def test_mlflow_file_store_after_the_fact(exp: Experiment,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """An old experiment, exported later: `mlsm export DIR --mlflow file:...`."""
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 wants the opt-in
    run_to_done(exp)
    uri = (exp.path.parent / "mlruns").as_uri()
    env = {**exp.env, "MLFLOW_ALLOW_FILE_STORE": "true"}
    first = Mlsm(["export", str(exp.path), "--mlflow", uri], exp.path.parent, env)
    assert first.wait(120) == 0, first.output()
    assert "exported to mlflow" in first.output()
    check_mlflow(uri, exp.path)
    second = Mlsm(["export", str(exp.path), "--mlflow", uri], exp.path.parent, env)
    assert second.wait(120) == 0
    check_mlflow(uri, exp.path)


def test_mlflow_survives_a_daemon_killed_mid_iteration(exp: Experiment) -> None:
    """kill -9 while an iteration is being exported live; the next daemon continues from
    the ledger: every metric step once, one run per iteration."""
    pytest.importorskip("mlflow")
    uri = f"sqlite:///{exp.path.parent / 'mlflow.db'}"
    exp.write("IDEA.md", "x")
    body = train(steps=600, pause=0.03)
    first = exp.mlsm("watch", "--max-iterations", "2", "--mlflow", uri, "--mlflow-live",
                     FAKE_TRAIN_BODY=body)
    ledger = exp.path / ".mlsm" / "export_mlflow.json"

    def mid_iteration() -> bool:
        try:
            doc = json.loads(ledger.read_text())[uri]["iterations"]["1"]
        except (OSError, ValueError, KeyError):
            return False
        return bool(0 < doc.get("lines", 0) < 500)

    wait_for(mid_iteration, 60, "iteration 1 half exported")
    first.signal(signal.SIGKILL)
    first.wait(10)
    second = exp.mlsm("run", "--max-iterations", "2", "--mlflow", uri, FAKE_TRAIN_BODY=body)
    assert second.wait(180) == 0, second.output()
    check_mlflow(uri, exp.path, steps=600)


# ----- W&B offline ------------------------------------------------------------------------------
BLOCK = 32768


def wandb_records(path: Path) -> list[Any]:
    """The records of a .wandb file (a LevelDB-style log of protobuf records)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, pending, out = 7, b"", []
    while pos + 7 <= len(data):
        if BLOCK - pos % BLOCK < 7:
            pos += BLOCK - pos % BLOCK
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 2):
            pending = chunk
        elif kind in (3, 4):
            pending += chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            out.append(record)
    return out


def wandb_runs(folder: Path) -> dict[str, dict[str, Any]]:
    """Per offline run: its run record, history rows, config, summary keys and files."""
    runs: dict[str, dict[str, Any]] = {}
    for wb in sorted(folder.glob("wandb/offline-run-*/run-*.wandb")):
        doc: dict[str, Any] = {"history": [], "config": {}, "summary": {}, "files": set(),
                               "dir": wb.parent}
        for r in wandb_records(wb):
            kind = r.WhichOneof("record_type")
            if kind == "run":
                doc["run"] = r.run
                doc["config"].update({i.key: json.loads(i.value_json) for i in r.run.config.update})
            elif kind == "history":
                doc["history"].append({i.key or "/".join(i.nested_key): json.loads(i.value_json)
                                       for i in r.history.item})
            elif kind == "config":
                doc["config"].update({i.key: json.loads(i.value_json) for i in r.config.update})
            elif kind == "summary":
                doc["summary"].update({i.key or "/".join(i.nested_key): json.loads(i.value_json)
                                       for i in r.summary.update})
            elif kind == "files":
                doc["files"] |= {f.path for f in r.files.files}
        runs.setdefault(doc["run"].run_id, {"parts": []})["parts"].append(doc)
    return runs


def test_wandb_offline_files_read_back(exp: Experiment) -> None:
    pytest.importorskip("wandb")
    folder = exp.path.parent / "wb"
    run_to_done(exp, "--wandb", WANDB_DIR=str(folder))
    runs = wandb_runs(folder)
    iterations = {rid: r for rid, r in runs.items()
                  if r["parts"][0]["run"].job_type == "iteration"}
    experiments = [r for r in runs.values() if r["parts"][0]["run"].job_type == "experiment"]
    assert len(iterations) == 2 and len(experiments) == 1
    for rid, r in iterations.items():
        (doc,) = r["parts"]
        assert doc["run"].run_group == "exp"
        it = int(doc["run"].display_name.rsplit("_", 1)[1])
        steps = [h["_step"] for h in doc["history"]]
        assert steps == list(range(250)), rid
        assert doc["history"][0]["loss"] == pytest.approx(1.0 / it)
        assert doc["config"]["lr"] == 0.1 and doc["config"]["hidden"] == 64
        assert doc["summary"]["result/loss"] == pytest.approx(1.0 / (it + 1))
        assert doc["summary"]["mlsm.decision"] == "continue"
        assert {"train.py", "result.json"} <= doc["files"]
        assert "outcome:ok" in doc["run"].tags or "outcome:ok" in _tags(doc)
    (top,) = experiments
    assert {"REPORT.md", "PLAN.md", "results.tsv"} <= top["parts"][0]["files"]
    assert top["parts"][0]["summary"]["best/loss"] == pytest.approx(1 / 3)
    before = sorted(p.name for p in (folder / "wandb").glob("offline-run-*"))
    again = Mlsm(["export", str(exp.path), "--wandb"], exp.path.parent,
                 {**exp.env, "WANDB_DIR": str(folder)})
    assert again.wait(120) == 0, again.output()
    assert sorted(p.name for p in (folder / "wandb").glob("offline-run-*")) == before


def _tags(doc: dict[str, Any]) -> list[str]:
    return [t for part in [doc] for t in getattr(part["run"], "tags", [])]


# ----- TensorBoard ---------------------------------------------------------------------------
def tb_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    events = accumulator.EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)]
            for tag in events.Tags()["scalars"]}


def test_tensorboard_from_the_files_and_again_with_export(exp: Experiment) -> None:
    """--tensorboard writes each iteration's curves from metrics.jsonl, outside the training:
    every step once, the result at the last step; `mlsm export` again adds nothing."""
    pytest.importorskip("tensorboard")
    run_to_done(exp, "--tensorboard")
    for it in (1, 2):
        tb = exp.path / "logs" / f"iter_{it:03d}" / "tb"
        got = tb_scalars(tb)
        assert [s for s, _ in got["loss"]] == list(range(250))
        assert got["loss"][0][1] == pytest.approx(1.0 / it)
        assert [s for s, _ in got["acc"]] == list(range(250))
        assert got["result/loss"] == [(249, pytest.approx(1.0 / (it + 1)))]
    files = sorted(p.name for p in exp.path.glob("logs/iter_*/tb/*"))
    again = Mlsm(["export", str(exp.path), "--tensorboard"], exp.path.parent, exp.env)
    assert again.wait(120) == 0, again.output()
    assert sorted(p.name for p in exp.path.glob("logs/iter_*/tb/*")) == files
    assert [s for s, _ in tb_scalars(exp.path / "logs" / "iter_001" / "tb")["loss"]] == \
        list(range(250))


def test_export_needs_a_tracker_and_an_experiment(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLSM_", "FAKE_"))}
    (tmp_path / "e").mkdir()
    none = Mlsm(["export", str(tmp_path / "e")], tmp_path, env)
    assert none.wait(30) == 3 and "--mlflow [URI], --wandb or --tensorboard" in none.output()
    early = Mlsm(["export", str(tmp_path / "e"), "--wandb"], tmp_path, env)
    assert early.wait(30) == 3 and "no status.json" in early.output()
