"""The builtin agent, role by role on hand-made experiment folders, and one whole loop by hand."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"

SPACE = {
    "lr": {"type": "loguniform", "low": 1e-4, "high": 0.3, "default": 3e-4},
    "hidden": {"type": "choice", "choices": [16, 32, 64, 128], "default": 16},
    "layers": {"type": "intrange", "low": 1, "high": 3, "default": 1, "log": False},
    "dropout": {"type": "uniform", "low": 0.0, "high": 0.5, "default": 0.1},
    "steps": {"type": "fixed", "default": 600},
}
DEFAULTS = {name: spec["default"] for name, spec in SPACE.items()}
CLASSIFY = "# Spirals\n\nClassify three spirals. Success criterion: val_acc >= 0.9.\n"


# ---------------------------------------------------------------- helpers


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without any MLSM_* variable of an outer run, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLSM_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def run_dir(exp: Path, role: str, iteration: int) -> Path:
    name = role if role in ("plan", "report") else f"iter_{iteration:03d}"
    return exp / "logs" / name


def agent(exp: Path, role: str, iteration: int = 0) -> subprocess.CompletedProcess[str]:
    """Run one role as the daemon does: a subprocess in the experiment dir, stdin closed."""
    folder = run_dir(exp, role, iteration)
    folder.mkdir(parents=True, exist_ok=True)
    env = clean_env(MLSM_ROLE=role, MLSM_DIR=str(exp), MLSM_ITERATION=str(iteration),
                    MLSM_RUN_DIR=str(folder), MLSM_PROMPT_FILE=str(folder / "prompt.md"))
    return subprocess.run([sys.executable, "-m", "mlsm.handlers.builtin"], cwd=exp, env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, f"agent failed ({proc.returncode}): {proc.stderr}"
    return proc.stdout


def train(exp: Path, iteration: int) -> float:
    """Run train.py for an iteration as the shim would, writing exit.json; its duration."""
    folder = run_dir(exp, "code", iteration)
    folder.mkdir(parents=True, exist_ok=True)
    start = time.time()
    with (folder / "stdout.log").open("w") as out, (folder / "stderr.log").open("w") as err:
        code = subprocess.run([sys.executable, "train.py"], cwd=exp, stdout=out, stderr=err,
                              stdin=subprocess.DEVNULL, timeout=120,
                              env=clean_env(MLSM_RUN_DIR=str(folder))).returncode
    end = time.time()
    write(folder / "exit.json", {"returncode": code, "signal": None, "reason": "exited",
                                 "detail": None, "started_at": start, "ended_at": end,
                                 "duration_s": end - start})
    return end - start


def write(path: Path, doc: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))


def read(path: Path) -> Any:
    return json.loads(path.read_text())


def fake_run(exp: Path, iteration: int, params: dict[str, Any] | None = None,
             metrics: dict[str, Any] | None = None, *, code: int = 0, stderr: str = "",
             losses: list[Any] | None = None, goal: str = "maximize") -> Path:
    """The files a finished training run leaves, without running one."""
    folder = run_dir(exp, "code", iteration)
    used = {**DEFAULTS, **(params or {})}
    write(folder / "space.json", SPACE)
    write(folder / "params_used.json", used)
    rows = [{"step": i + 1, "t": 1.0 + i, "loss": v} for i, v in enumerate(losses or [1.0, 0.5])]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if metrics is not None:
        write(folder / "result.json", {"metrics": metrics, "objective": next(iter(metrics)),
                                       "goal": goal, "t": 2.0})
    (folder / "stderr.log").write_text(stderr)
    write(folder / "exit.json", {"returncode": code, "signal": None, "reason": "exited",
                                 "detail": None, "started_at": 0.0, "ended_at": 2.5,
                                 "duration_s": 2.5})
    return folder


def load_study(exp: Path) -> Any:
    """The one study the builtin agent keeps in the experiment."""
    import optuna
    from optuna.storages.journal import JournalFileBackend

    storage = optuna.storages.JournalStorage(
        JournalFileBackend(str(exp / ".mlsm" / "optuna.journal")))
    (name,) = optuna.get_all_study_names(storage)
    return optuna.load_study(study_name=name, storage=storage)


def trials(exp: Path) -> list[dict[str, Any]]:
    """The trials in the study on disk, read through Optuna."""
    study = load_study(exp)
    return [{"params": t.params, "state": t.state.name, "value": t.value,
             "iteration": t.user_attrs.get("mlsm_iteration")} for t in study.trials]


@pytest.fixture
def exp(tmp_path: Path) -> Path:
    d = tmp_path / "exp"
    d.mkdir()
    (d / "IDEA.md").write_text(CLASSIFY)
    return d


# ---------------------------------------------------------------- plan


def test_plan_without_train_py_names_template_metric_baseline_and_stopping_rule(exp: Path) -> None:
    ok(agent(exp, "plan"))
    plan = (exp / "PLAN.md").read_text()
    for heading in ("## What will be tuned", "## Metric", "## Baseline", "## Search",
                    "## Stopping rule"):
        assert heading in plan
    assert "deterministic research assistant" in plan
    assert "`classification` template" in plan
    assert "`val_acc`, to **maximize**" in plan
    assert "`val_acc >= 0.9`" in plan
    assert "`lr`: log-uniform in [0.0001, 0.3] (default 0.0003)" in plan
    assert not (exp / "train.py").exists(), "plan must not write train.py"


def test_plan_with_a_persons_train_py_reads_its_search_space(tmp_path: Path) -> None:
    d = tmp_path / "own"
    shutil.copytree(EXAMPLES / "own_train", d)
    ok(agent(d, "plan"))
    plan = (d / "PLAN.md").read_text()
    assert "person's own `train.py`" in plan
    assert "`kernel_size`: one of 3, 5, 9 (default 3)" in plan
    assert "`dropout`: uniform in [0, 0.5] (default 0.4)" in plan
    assert "5 iterations have run (the budget in IDEA.md)" in plan


def test_plan_reads_criteria_budget_and_config(exp: Path) -> None:
    (exp / "IDEA.md").write_text(
        "# Curve fit\n\nA regression on generated data.\n\n"
        "Success: val_loss <= 0.05. Budget: 4 iterations, 2 minutes.\n\n"
        "## Constraints\n\n- CPU only\n- batch_size <= 256\n")
    write(exp / ".mlsm" / "config.json", {"max_iterations": 9, "patience": 2, "max_failures": 2,
                                           "max_hours": 1.5})
    ok(agent(exp, "plan"))
    plan = (exp / "PLAN.md").read_text()
    assert "`regression` template" in plan
    assert "`val_loss`, to **minimize**" in plan
    assert "`val_loss <= 0.05`" in plan
    assert "`batch_size" not in plan.split("## Metric")[1].split("## Baseline")[0]
    assert "4 iterations have run (the budget in IDEA.md)" in plan
    assert "2 iterations pass without a new best, as mlsm counts them (patience)" in plan
    assert "2 runs in a row fail" in plan
    assert "`max-hours` 1.5 h" in plan
    assert "- CPU only" in plan


@pytest.mark.parametrize("idea, problem", [
    (None, "no IDEA.md"),
    ("  \n", "IDEA.md is empty"),
])
def test_plan_fails_with_one_clear_line(exp: Path, idea: str | None, problem: str) -> None:
    if idea is None:
        (exp / "IDEA.md").unlink()
    else:
        (exp / "IDEA.md").write_text(idea)
    proc = agent(exp, "plan")
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and problem in lines[0], proc.stderr
    assert not (exp / "PLAN.md").exists()


def test_bad_role_and_bad_config_name_the_value(exp: Path) -> None:
    env = clean_env(MLSM_ROLE="dance", MLSM_DIR=str(exp))
    proc = subprocess.run([sys.executable, "-m", "mlsm.handlers.builtin"], cwd=exp, env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "'dance'" in proc.stderr
    write(exp / ".mlsm" / "config.json", {"max_failures": "many"})
    proc = agent(exp, "plan")
    assert proc.returncode != 0 and "'many'" in proc.stderr


# ---------------------------------------------------------------- code


@pytest.mark.parametrize("idea, template, objective", [
    (CLASSIFY, "classification", "val_acc"),
    ("Fit a regression model to noisy data; minimize the validation MSE.", "regression",
     "val_mse"),
    ("Train a tiny character-level language model on some text.", "charlm", "val_loss"),
])
def test_code_iteration_1_writes_the_template_the_idea_asks_for(
        exp: Path, idea: str, template: str, objective: str) -> None:
    (exp / "IDEA.md").write_text(idea)
    ok(agent(exp, "code", 1))
    source = (exp / "train.py").read_text()
    assert source.startswith(f"# mlsm builtin template: {template}\n")
    assert "from mlsm import hooks" in source and f"{objective}=" in source
    assert f'\nOBJECTIVE = "{objective}"' in source and "objective=OBJECTIVE" in source
    assert not (run_dir(exp, "code", 1) / "params.json").exists()


def test_code_iteration_1_keeps_a_persons_train_py(tmp_path: Path) -> None:
    d = tmp_path / "own"
    shutil.copytree(EXAMPLES / "own_train", d)
    before = (d / "train.py").read_bytes()
    out = ok(agent(d, "code", 1))
    assert (d / "train.py").read_bytes() == before
    assert "keeping the existing train.py" in out


def test_code_iteration_2_writes_params_inside_the_space_and_is_idempotent(exp: Path) -> None:
    ok(agent(exp, "code", 1))
    fake_run(exp, 1, metrics={"val_acc": 0.5, "val_loss": 1.0})
    ok(agent(exp, "code", 2))
    params = read(run_dir(exp, "code", 2) / "params.json")
    assert set(params) == {"lr", "hidden", "layers", "dropout"}
    assert 1e-4 <= params["lr"] <= 0.3 and params["hidden"] in (16, 32, 64, 128)
    assert isinstance(params["layers"], int) and 1 <= params["layers"] <= 3
    assert 0.0 <= params["dropout"] <= 0.5
    first = trials(exp)
    assert [t["iteration"] for t in first] == [1, 2]
    assert first[0]["params"] == {k: DEFAULTS[k] for k in params}  # the baseline, enqueued
    assert first[0]["state"] == "COMPLETE" and first[0]["value"] == 0.5
    # a crash and a rerun of the same step: same values, no second trial
    (run_dir(exp, "code", 2) / "params.json").unlink()
    ok(agent(exp, "code", 2))
    assert read(run_dir(exp, "code", 2) / "params.json") == params
    assert len(trials(exp)) == 2


def test_code_is_deterministic_across_experiments(tmp_path: Path) -> None:
    chosen = []
    for name in ("a", "b"):
        d = tmp_path / name
        d.mkdir()
        (d / "IDEA.md").write_text(CLASSIFY)
        fake_run(d, 1, metrics={"val_acc": 0.5})
        fake_run(d, 2, {"lr": 0.01}, metrics={"val_acc": 0.7})
        ok(agent(d, "code", 3))
        chosen.append(read(run_dir(d, "code", 3) / "params.json"))
    assert chosen[0] == chosen[1]


def test_code_without_tunable_parameters_writes_empty_params(exp: Path) -> None:
    folder = fake_run(exp, 1, metrics={"val_acc": 0.5})
    write(folder / "space.json", {"steps": {"type": "fixed", "default": 10}})
    ok(agent(exp, "code", 2))
    assert read(run_dir(exp, "code", 2) / "params.json") == {}


def test_code_adopts_a_trial_whose_asker_crashed(exp: Path) -> None:
    """A trial asked but not yet tagged with its iteration (a crash in between) is reused."""
    fake_run(exp, 1, metrics={"val_acc": 0.5})
    ok(agent(exp, "code", 2))
    import optuna

    study = load_study(exp)
    fake_run(exp, 2, read(run_dir(exp, "code", 2) / "params.json"), metrics={"val_acc": 0.6})
    orphan = study.ask({"lr": optuna.distributions.FloatDistribution(1e-4, 0.3, log=True),
                        "hidden": optuna.distributions.CategoricalDistribution([16, 32, 64, 128]),
                        "layers": optuna.distributions.IntDistribution(1, 3),
                        "dropout": optuna.distributions.FloatDistribution(0.0, 0.5)})
    ok(agent(exp, "code", 3))
    assert read(run_dir(exp, "code", 3) / "params.json") == orphan.params
    assert [t["iteration"] for t in trials(exp)] == [1, 2, 3]


def test_code_survives_a_torn_journal_and_a_stale_lock(exp: Path) -> None:
    """What a killed agent leaves: half a journal line, and the journal's lock still held."""
    fake_run(exp, 1, metrics={"val_acc": 0.5})
    ok(agent(exp, "analyze", 1))
    journal = exp / ".mlsm" / "optuna.journal"
    with journal.open("ab") as fh:
        fh.write(b'{"op_code": 5, "worker_id": "x", "tri')
    (exp / ".mlsm" / "optuna.journal.lock").symlink_to(journal)
    ok(agent(exp, "code", 2))
    assert [t["iteration"] for t in trials(exp)] == [1, 2]


def test_code_starts_a_new_study_when_the_declared_space_changes(exp: Path) -> None:
    fake_run(exp, 1, metrics={"val_acc": 0.5})
    ok(agent(exp, "code", 2))
    folder = fake_run(exp, 2, read(run_dir(exp, "code", 2) / "params.json"),
                      metrics={"val_acc": 0.6})
    changed = {**SPACE, "hidden": {"type": "choice", "choices": [256, 512], "default": 256}}
    write(folder / "space.json", changed)
    ok(agent(exp, "code", 3))
    params = read(run_dir(exp, "code", 3) / "params.json")
    assert params["hidden"] in (256, 512)


# ---------------------------------------------------------------- analyze


def decision(exp: Path, iteration: int) -> dict[str, Any]:
    doc: dict[str, Any] = read(run_dir(exp, "code", iteration) / "decision.json")
    assert doc["decision"] in ("continue", "finish") and doc["reason"].strip()
    assert (run_dir(exp, "code", iteration) / "analysis.md").is_file()
    return doc


def test_analyze_a_good_run_continues_and_tells_the_study(exp: Path) -> None:
    fake_run(exp, 1, metrics={"val_acc": 0.5, "val_loss": 1.0})
    ok(agent(exp, "analyze", 1))
    doc = decision(exp, 1)
    assert doc == {"decision": "continue", "metric": 0.5,
                   "reason": "val_acc = 0.5; trying new parameters"}
    assert trials(exp)[0]["value"] == 0.5
    ok(agent(exp, "analyze", 1))  # a replay tells nothing twice
    assert len(trials(exp)) == 1


def test_analyze_finishes_when_the_success_criterion_is_met(exp: Path) -> None:
    fake_run(exp, 1, metrics={"val_acc": 0.5})
    fake_run(exp, 2, {"lr": 0.01}, metrics={"val_acc": 0.93})
    ok(agent(exp, "analyze", 2))
    doc = decision(exp, 2)
    assert doc["decision"] == "finish" and doc["metric"] == 0.93
    assert "success criterion val_acc >= 0.9 met" in doc["reason"]
    assert "baseline 0.5" in doc["reason"]


def test_analyze_a_failed_run_quotes_the_last_error_line(exp: Path) -> None:
    fake_run(exp, 1, metrics={"val_acc": 0.5})
    trace = ("Traceback (most recent call last):\n  File \"train.py\", line 3, in <module>\n"
             "RuntimeError: mat1 and mat2 shapes cannot be multiplied (64x2 and 3x16)\n")
    fake_run(exp, 2, {"lr": 0.01}, code=1, stderr=trace)
    ok(agent(exp, "analyze", 2))
    doc = decision(exp, 2)
    assert doc["decision"] == "continue" and "metric" not in doc
    assert "exited with code 1" in doc["reason"]
    assert "RuntimeError: mat1 and mat2 shapes cannot be multiplied" in doc["reason"]
    analysis = (run_dir(exp, "code", 2) / "analysis.md").read_text()
    assert "`RuntimeError: mat1 and mat2" in analysis
    assert [t["state"] for t in trials(exp)] == ["COMPLETE", "FAIL"]


def test_analyze_detects_nan_divergence(exp: Path) -> None:
    fake_run(exp, 1, metrics={"val_acc": 0.5})
    fake_run(exp, 2, {"lr": 0.3}, metrics={"val_acc": "nan", "val_loss": "nan"},
             losses=[1.1, 3.0, "nan"])
    ok(agent(exp, "analyze", 2))
    doc = decision(exp, 2)
    assert doc["decision"] == "continue" and "no val_acc (no_result, diverged)" in doc["reason"]
    assert "Outcome:** no_result, diverged: the final val_acc, val_loss is not a finite number" in (
        run_dir(exp, "code", 2) / "analysis.md").read_text()
    # told as the worst value seen, so the sampler moves away from it
    assert trials(exp)[1]["value"] == 0.5


def test_analyze_detects_an_exploding_loss(exp: Path) -> None:
    fake_run(exp, 1, metrics={"val_loss": 0.9}, losses=[1.0, 2.0, 40.0], goal="minimize")
    (exp / "IDEA.md").write_text("Fit a regression.")
    ok(agent(exp, "analyze", 1))
    assert "loss exploded from 1 to 40" in (run_dir(exp, "code", 1) / "analysis.md").read_text()


def test_analyze_finishes_after_max_failures_in_a_row(exp: Path) -> None:
    write(exp / ".mlsm" / "config.json", {"max_failures": 2})
    fake_run(exp, 1, metrics={"val_acc": 0.5})
    fake_run(exp, 2, code=1, stderr="ValueError: bad\n")
    fake_run(exp, 3, code=137, stderr="Killed\n")
    ok(agent(exp, "analyze", 3))
    doc = decision(exp, 3)
    assert doc["decision"] == "finish" and "2 runs in a row failed" in doc["reason"]
    assert "Killed" in doc["reason"]


def test_analyze_finishes_when_the_baseline_fails_before_declaring_parameters(exp: Path) -> None:
    folder = run_dir(exp, "code", 1)
    folder.mkdir(parents=True)
    (folder / "stderr.log").write_text("SyntaxError: invalid syntax\n")
    write(folder / "exit.json", {"returncode": 1, "signal": None, "reason": "exited",
                                 "detail": None, "started_at": 0, "ended_at": 1,
                                 "duration_s": 1})
    ok(agent(exp, "analyze", 1))
    doc = decision(exp, 1)
    assert doc["decision"] == "finish" and "cannot fix train.py" in doc["reason"]
    assert "SyntaxError: invalid syntax" in doc["reason"]


def test_analyze_finishes_on_budget_and_on_patience(exp: Path) -> None:
    write(exp / ".mlsm" / "config.json", {"max_iterations": 3, "patience": 2})
    fake_run(exp, 1, metrics={"val_acc": 0.5})
    fake_run(exp, 2, {"lr": 0.01}, metrics={"val_acc": 0.6})
    fake_run(exp, 3, {"lr": 0.02}, metrics={"val_acc": 0.55})
    ok(agent(exp, "analyze", 3))
    assert "iteration budget spent (3 iterations" in decision(exp, 3)["reason"]
    write(exp / ".mlsm" / "config.json", {"max_iterations": 10, "patience": 1})
    ok(agent(exp, "analyze", 3))
    assert "no new best val_acc for 1 iterations (patience 1)" in decision(exp, 3)["reason"]


def test_analyze_reports_abnormal_exits(exp: Path) -> None:
    fake_run(exp, 1, metrics={"val_acc": 0.5})
    folder = fake_run(exp, 2, {"lr": 0.01})
    write(folder / "exit.json", {"returncode": None, "signal": "SIGKILL",
                                 "reason": "stale_heartbeat", "detail": "no heartbeat for 600 s",
                                 "started_at": 0, "ended_at": 1, "duration_s": 1})
    ok(agent(exp, "analyze", 2))
    assert "stopped sending heartbeats and was stopped (no heartbeat for 600 s)" in (
        decision(exp, 2)["reason"])


# ---------------------------------------------------------------- report


def test_report_has_every_section_and_its_plots(exp: Path) -> None:
    fake_run(exp, 1, metrics={"val_acc": 0.5}, losses=[1.1, 1.0, 0.9])
    fake_run(exp, 2, {"lr": 0.3, "hidden": 128}, metrics={"val_acc": 0.8},
             losses=[1.1, 0.5, 0.2])
    fake_run(exp, 3, {"lr": 0.01}, code=1, stderr="RuntimeError: out of memory\n")
    fake_run(exp, 4, {"lr": 0.05}, metrics={"val_acc": 0.92}, losses=[1.1, 0.3, 0.1])
    ok(agent(exp, "analyze", 4))
    ok(agent(exp, "report", 4))
    report = (exp / "REPORT.md").read_text()
    for heading in ("## Summary", "## Approach", "## Results", "## Challenges",
                    "## Recommendations"):
        assert heading in report
    assert "deterministic research assistant" in report
    assert "**Status:** finished after iteration 4: success criterion" in report
    assert "best `val_acc` = 0.92 (iteration 4) vs baseline 0.5: +0.42 (+84.0%)" in report
    assert "| 1 | lr=0.0003, hidden=16, layers=1, dropout=0.1 | 0.5 | 2.5 s | ok, baseline |" in (
        report)
    assert "| 4 | lr=0.05, hidden=16, layers=1, dropout=0.1 | 0.92 | 2.5 s | ok, **best** |" in (
        report)
    assert "Iteration 3 failed: train.py exited with code 1: `RuntimeError: out of memory`" in (
        report)
    for png in ("report_objective.png", "report_curves.png"):
        assert f"]({png})" in report
        assert (exp / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_with_no_iterations_still_writes_everything(exp: Path) -> None:
    ok(agent(exp, "report", 0))
    report = (exp / "REPORT.md").read_text()
    assert "no iteration ran" in report
    assert (exp / "report_objective.png").is_file() and (exp / "report_curves.png").is_file()


# ---------------------------------------------------------------- templates and a whole loop


@pytest.mark.parametrize("idea, objective", [
    ("Fit a regression model.", "val_loss"),
    ("Fit a regression on generated data; minimize val_rmse.", "val_rmse"),
    ("Train a character-level language model.", "val_loss"),
])
def test_template_train_py_runs_and_reports(exp: Path, idea: str, objective: str) -> None:
    (exp / "IDEA.md").write_text(idea)
    ok(agent(exp, "code", 1))
    seconds = train(exp, 1)
    folder = run_dir(exp, "code", 1)
    assert read(folder / "exit.json")["returncode"] == 0, (folder / "stderr.log").read_text()
    result = read(folder / "result.json")
    assert result["objective"] == objective and result["goal"] == "minimize"
    assert read(folder / "space.json")["lr"]["type"] == "loguniform"
    assert "step 100 | loss " in (folder / "stdout.log").read_text()
    assert (folder / "metrics.jsonl").read_text().count("\n") > 100
    assert seconds < 30


def test_quickstart_loop_by_hand_beats_its_baseline(tmp_path: Path) -> None:
    """plan, then code → train → analyze until the agent finishes, then report."""
    d = tmp_path / "quickstart"
    shutil.copytree(EXAMPLES / "quickstart", d)
    ok(agent(d, "plan"))
    iteration = 0
    for iteration in range(1, 7):  # max-iterations in its mlsm.toml
        ok(agent(d, "code", iteration))
        train(d, iteration)
        ok(agent(d, "analyze", iteration))
        if decision(d, iteration)["decision"] == "finish":
            break
    ok(agent(d, "report", iteration))
    values = [read(run_dir(d, "code", i) / "result.json")["metrics"]["val_acc"]
              for i in range(1, iteration + 1)]
    assert max(values[1:]) > values[0] + 0.1, values
    report = (d / "REPORT.md").read_text()
    assert "| 1 | " in report and "baseline" in report
    assert (d / "report_curves.png").is_file()
