"""The person's own commands: status, logs, stop/resume and the live table, on real directories.

Each test reproduces a problem a researcher met (a traceback on an unwritable directory, a
discovery root that "is not an experiment", JSON lines that are not one document, an 80-column
table folded to pieces, `--stderr` showing the runner log, a watched directory said not to be an
experiment) and runs the real `mlsm` command.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import AGENT_CMD, Experiment, wait_for

from mlsm.machine.views.status import daemon_running

# Each iteration says which it is on stdout and on stderr, and reports loss = 1 / iteration.
TRAIN = '''\
import os, sys
from mlsm import hooks
it = int(os.environ["MLSM_ITERATION"])
hooks.log(step=1, total_steps=2, loss=1.0 / it)
print(f"stdout of iteration {it}")
print(f"stderr of iteration {it}", file=sys.stderr)
hooks.result(loss=1.0 / it, goal="minimize")
'''
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLSM_", "FAKE_"))}
    return {**env, **extra}


def mlsm(*args: str | Path, prefix: list[str] | None = None,
         cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run one short `mlsm` command to its end (a deadline, never a sleep)."""
    argv = [*(prefix or []), sys.executable, "-m", "mlsm.machine.cli", *map(str, args)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, env=clean_env(),
                          cwd=cwd or tempfile.gettempdir())


def one_line_error(run: subprocess.CompletedProcess[str], *needles: str) -> str:
    """rc 3 and a single `mlsm: error:` line on stderr that contains every needle."""
    assert run.returncode == 3, (run.returncode, run.stdout, run.stderr)
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mlsm: error: "), run.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DONE experiment of two iterations, made once by a real `mlsm run` (copy to change)."""
    d = tmp_path_factory.mktemp("finished") / "fin"
    d.mkdir()
    (d / "IDEA.md").write_text("Make the loss small.\n")
    run = subprocess.run([sys.executable, "-m", "mlsm.machine.cli", "run", str(d), "--agent",
                          "command", "--agent-cmd", AGENT_CMD, "--max-iterations", "2",
                          "--retry-backoff", "0.05"], capture_output=True, text=True,
                         timeout=120, env=clean_env(FAKE_TRAIN_BODY=TRAIN), cwd=d.parent)
    assert run.returncode == 0, run.stdout + run.stderr
    return d


def copy_of(finished: Path, dest: Path) -> Path:
    shutil.copytree(finished, dest, symlinks=True)
    return dest


# ----- 1. an unwritable directory is one line and rc 3, for every command -------------------
@pytest.fixture
def world_dir() -> Iterator[Path]:
    """An experiment (IDEA.md) that any user can reach but only root can write."""
    root = Path(tempfile.mkdtemp(prefix="mlsm-views-"))
    root.chmod(0o755)
    d = root / "exp"
    d.mkdir(mode=0o755)
    (d / "IDEA.md").write_text("x\n")
    yield d
    shutil.rmtree(root, ignore_errors=True)


def _as_nobody_or_skip() -> list[str]:
    if os.geteuid() != 0:
        pytest.skip("needs root to run mlsm as the unprivileged user nobody")
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    probe = subprocess.run([*NOBODY, sys.executable, "-c", "import mlsm.machine.cli"],
                           capture_output=True, timeout=60, cwd="/")
    if probe.returncode != 0:
        pytest.skip(f"nobody cannot run this Python: {probe.stderr.decode()[-200:]}")
    return NOBODY


@pytest.mark.parametrize("command", ["run", "watch", "stop", "resume"])
def test_permission_denied_is_one_line_and_rc_3(world_dir: Path, command: str) -> None:
    nobody = _as_nobody_or_skip()
    (world_dir / "STOP").write_text("")  # resume must remove it; stop must create it anew
    if command == "stop":
        (world_dir / "STOP").unlink()
    agent = ["--agent", "builtin"] if command in ("run", "watch") else []
    run = mlsm(command, world_dir, *agent, prefix=nobody)
    target = world_dir / (".mlsm" if command in ("run", "watch") else "STOP")
    one_line_error(run, f"cannot write {target} (Permission denied)",
                   "make the directory writable by you, or run mlsm as its owner")
    assert "Traceback" not in run.stdout + run.stderr


@pytest.fixture
def immutable_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory with the immutable attribute: even root cannot create a file in it."""
    d = tmp_path / "frozen"
    d.mkdir()
    (d / "IDEA.md").write_text("x\n")
    if shutil.which("chattr") is None:
        pytest.skip("chattr is not installed")
    made = subprocess.run(["chattr", "+i", str(d)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"chattr +i is refused here: {made.stderr.strip()}")
    yield d
    subprocess.run(["chattr", "-i", str(d)], check=True)


@pytest.mark.parametrize("command", ["run", "stop"])
def test_immutable_directory_is_one_line_and_rc_3(immutable_dir: Path, command: str) -> None:
    agent = ["--agent", "builtin"] if command == "run" else []
    run = mlsm(command, immutable_dir, *agent)
    one_line_error(run, "cannot write", str(immutable_dir), "(Operation not permitted)",
                   "chattr -i")


MOUNTS = {
    # a read-only file system: the IDEA.md is there, nothing can be written beside it
    "read-only": ("mount -t tmpfs tmpfs {d} && echo x > {d}/IDEA.md && "
                  "mount -o remount,ro {d}", "(Read-only file system)", "writable file system"),
    # no inode left for .mlsm: the disk is full
    "full": ("mount -t tmpfs -o nr_inodes=2 tmpfs {d} && echo x > {d}/IDEA.md",
             "(No space left on device)", "free some disk space"),
}


@pytest.mark.parametrize("kind", sorted(MOUNTS))
def test_read_only_or_full_file_system_is_one_line(tmp_path: Path, kind: str) -> None:
    """In a private mount namespace (nothing leaks to the host), under a tmpfs of that kind."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) for a private tmpfs mount")
    d = tmp_path / "mnt"
    d.mkdir()
    setup, cause, fix = MOUNTS[kind]
    cli = f"{sys.executable} -m mlsm.machine.cli run {d} --agent builtin"
    script = f"{setup.format(d=d)} || exit 99; exec {cli}"
    run = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                         capture_output=True, text=True, timeout=60, env=clean_env())
    if run.returncode == 99 or "unshare failed" in run.stderr:
        pytest.skip(f"a private tmpfs mount is refused here: {run.stderr.strip()[-200:]}")
    one_line_error(run, f"cannot write {d}/.mlsm {cause}", fix)


def test_a_file_where_mlsm_needs_a_directory_is_one_line(exp: Experiment) -> None:
    exp.write("IDEA.md", "x\n")
    exp.write(".mlsm", "a file, not the directory mlsm keeps its lock in\n")
    run = mlsm("run", exp.path, "--agent", "builtin")
    one_line_error(run, f"cannot write {exp.path}/.mlsm", "remove or rename it")
    afile = exp.write("afile", "")
    for bad in (afile / "sub", exp.path / "missing" / "sub"):  # through a file; no parent
        for command in ("run", "stop", "resume"):
            one_line_error(mlsm(command, bad), f"{bad} is not a directory")


@pytest.mark.parametrize(("code", "fix"), [
    (errno.EACCES, "writable by you"), (errno.EPERM, "chattr -i"),
    (errno.EROFS, "writable file system"), (errno.ENOSPC, "free some disk space"),
    (errno.EDQUOT, "quota"), (errno.ENOENT, "create it first"),
    (errno.ENOTDIR, "remove or rename it"), (errno.EIO, "check the path and its permissions"),
])
def test_every_write_error_names_path_cause_and_fix(code: int, fix: str) -> None:
    from mlsm.machine.cli import unwritable

    exc = OSError(code, os.strerror(code), "/x/.mlsm")
    message = str(unwritable(exc, Path("/x")))
    assert message.startswith(f"cannot write /x/.mlsm ({os.strerror(code)}): ")
    assert fix in message and "\n" not in message
    assert str(unwritable(OSError(code, os.strerror(code)), Path("/y"))).startswith(
        "cannot write /y (")


# ----- 2, 3. a discovery root, and one JSON document ------------------------------------------
@pytest.fixture
def root(tmp_path: Path, finished: Path) -> Path:
    """A discovery root: a DONE experiment, one with only IDEA.md, a plain folder, a hidden."""
    r = tmp_path / "root"
    r.mkdir()
    copy_of(finished, r / "alpha")
    (r / "beta").mkdir()
    (r / "beta" / "IDEA.md").write_text("x\n")
    (r / "notes").mkdir()
    (r / ".cache").mkdir()
    (r / ".cache" / "IDEA.md").write_text("x\n")
    return r


def test_status_of_a_discovery_root_lists_its_experiments(root: Path) -> None:
    run = mlsm("status", root)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    heads = [line for line in lines if not line.startswith("  ")]
    assert heads[0].startswith(f"{root / 'alpha'}: DONE, iteration 2/2")
    assert heads[1].startswith(f"{root / 'beta'}: IDLE")
    assert len(heads) == 2 and "notes" not in run.stdout and ".cache" not in run.stdout
    empty = root / "notes"
    one_line_error(mlsm("status", empty), "is not an mlsm experiment")


def test_status_json_is_one_document(root: Path, finished: Path) -> None:
    single = mlsm("status", "--json", finished)
    doc = json.loads(single.stdout)
    assert isinstance(doc, dict) and doc["state"] == "done"  # one DIR: one object, as before
    several = mlsm("status", "--json", finished, root / "beta")
    docs = json.loads(several.stdout)  # JSON lines would fail here: "Extra data"
    assert [d["state"] for d in docs] == ["done", "idle"] and several.returncode == 0
    of_root = json.loads(mlsm("status", "--json", root).stdout)
    assert [Path(d["dir"]).name for d in of_root] == ["alpha", "beta"]
    bad = mlsm("status", "--json", finished, root / "notes")
    assert [d["state"] for d in json.loads(bad.stdout)] == ["done"]  # stdout stays JSON
    one_line_error(bad, "is not an mlsm experiment")
    help_text = mlsm("status", "--help").stdout
    assert "a single object when there is one" in help_text and "a list" in help_text


def test_status_creates_nothing(finished: Path, tmp_path: Path) -> None:
    d = copy_of(finished, tmp_path / "copy")
    (d / ".mlsm" / "lock").unlink(missing_ok=True)
    before = sorted(p.relative_to(d) for p in d.rglob("*"))
    assert mlsm("status", d).returncode == 0 and mlsm("status", "--json", d).returncode == 0
    assert sorted(p.relative_to(d) for p in d.rglob("*")) == before  # no lock file appears


# ----- 4. the live table at 80 and 160 columns ------------------------------------------------
@pytest.mark.parametrize("width", [80, 100, 160])
def test_follow_table_is_readable_at_its_width(finished: Path, tmp_path: Path,
                                                width: int) -> None:
    from rich.console import Console

    from mlsm.machine.views.live import render

    names = ["fin", "quickstart-20261128-231709", "charlm-baseline"]
    dirs = [copy_of(finished, tmp_path / n) for n in names]
    (tmp_path / "waiting").mkdir()
    (tmp_path / "waiting" / "IDEA.md").write_text("x\n")
    dirs += [tmp_path / "waiting", tmp_path / "missing"]
    console = Console(width=width, record=True, color_system=None)
    console.print(render(dirs))
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= width, text
    cells = [line.replace("│", " ").split() for line in text.splitlines()]
    rows = {words[0]: " ".join(words) for words in cells if words}
    for name in names:
        assert name in rows, text
        assert "DONE" in rows[name] and "loss=0.5 @2" in rows[name], text
    assert "IDLE" in rows["waiting"] and "ERROR" in rows["missing"], text
    assert "reached" in text, text  # the notes are shown (folded where they must be)


# ----- 5. logs --stderr / --stdout of the current iteration -----------------------------------
def test_logs_stderr_without_iteration_is_the_current_iterations(finished: Path,
                                                                  tmp_path: Path) -> None:
    run = mlsm("logs", finished, "--stderr")
    assert run.returncode == 0 and run.stdout == "stderr of iteration 2\n", run.stdout
    assert mlsm("logs", finished, "--stdout").stdout.startswith("stdout of iteration 2")
    assert mlsm("logs", finished, "--stderr", "-i", "1").stdout == "stderr of iteration 1\n"
    assert "stdout of iteration 1" in mlsm("logs", finished, "-i", "1").stdout
    assert "transition" in mlsm("logs", finished).stdout  # no flag: the runner log
    d = copy_of(finished, tmp_path / "no-status")
    (d / "status.json").unlink()  # then the highest logs/iter_NNN is the current one
    assert mlsm("logs", d, "--stderr").stdout == "stderr of iteration 2\n"
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "IDEA.md").write_text("x\n")
    one_line_error(mlsm("logs", fresh, "--stderr"), f"{fresh} has no iteration yet")


# ----- 6. a watched directory waiting for IDEA.md ---------------------------------------------
def test_watched_directory_waits_for_idea(exp: Experiment) -> None:
    daemon = exp.mlsm("watch")
    wait_for(lambda: daemon_running(exp.path), what="the daemon's lock")
    run = mlsm("status", exp.path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.startswith(f"{exp.path}: IDLE, waiting for IDEA.md (daemon pid "
                                 f"{daemon.proc.pid})"), run.stdout
    doc = json.loads(mlsm("status", "--json", exp.path).stdout)
    assert (doc["state"], doc["waiting_for"], doc["daemon_running"]) == ("idle", "IDEA.md", True)
    exp.write("IDEA.md", "   \n")  # refused by the engine: the reason shows in status
    wait_for(lambda: (exp.status().get("error") or "").startswith("IDEA.md is empty"),
             what="the refusal in status.json")
    out = mlsm("status", exp.path).stdout
    assert "IDLE, waiting for IDEA.md" in out and "\n  error: IDEA.md is empty" in out, out
    daemon.signal(signal.SIGTERM)
    daemon.wait()
    one_line_error(mlsm("status", exp.path / "logs"), "is not an mlsm experiment")


# ----- 7. a quick status: only what the command needs is imported ----------------------------
def test_status_of_a_finished_run_imports_no_daemon_machinery(finished: Path,
                                                              tmp_path: Path) -> None:
    seen = tmp_path / "modules.txt"
    code = ("import sys\nfrom mlsm.machine import cli\nsys.argv = ['mlsm', 'status', "
            f"{str(finished)!r}]\ntry:\n    cli.main()\nexcept SystemExit:\n    pass\n"
            f"open({str(seen)!r}, 'w').write('\\n'.join(sorted(sys.modules)))\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, env=clean_env())
    assert "DONE" in run.stdout, run.stderr
    modules = set(seen.read_text().split())
    heavy = {"psutil", "structlog", "transitions", "watchdog", "rich", "torch", "numpy",
             "mlsm.handlers.launchers", "mlsm.machine.engine", "mlsm.machine.daemon"}
    assert not heavy & modules, sorted(heavy & modules)
