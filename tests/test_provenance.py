"""Provenance with real git: mlsm's own repository per experiment, and the person's left alone."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from mlsm.machine.core import provenance


@pytest.fixture(autouse=True)
def _needs_git() -> None:
    if shutil.which("git") is None:
        if os.environ.get("MLSM_REQUIRE_GIT") == "1":
            pytest.fail("git is not installed and MLSM_REQUIRE_GIT=1 demands it")
        pytest.skip("git is not installed")


def _plain_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(
        GIT_CONFIG_GLOBAL=os.devnull, GIT_CONFIG_NOSYSTEM="1",
        GIT_AUTHOR_NAME="person", GIT_AUTHOR_EMAIL="person@example.org",
        GIT_COMMITTER_NAME="person", GIT_COMMITTER_EMAIL="person@example.org",
    )
    return env


def git(cwd: Path, *args: str, env: dict[str, str] | None = None) -> str:
    """Run git as a person would, without their configuration; return stdout."""
    done = subprocess.run(
        ["git", "-c", "init.defaultBranch=main", *args], cwd=cwd, env=env or _plain_env(),
        capture_output=True, text=True, check=True,
    )
    return done.stdout


def ours(exp: Path, *args: str) -> str:
    return git(exp, f"--git-dir={exp / '.mlsm' / 'git'}", f"--work-tree={exp}", *args)


def tracked(exp: Path) -> set[str]:
    return set(ours(exp, "ls-tree", "-r", "--name-only", "HEAD").split())


def tag_target(exp: Path, name: str) -> str:
    return ours(exp, "rev-parse", f"refs/tags/{name}^{{commit}}").strip()


@pytest.fixture
def exp(tmp_path: Path) -> Path:
    d = tmp_path / "exp"
    d.mkdir()
    (d / "train.py").write_text("lr = 0.1\n")
    (d / "notes.md").write_text("notes\n")
    return d


def test_first_commit_and_tag(exp: Path) -> None:
    commit = provenance.commit_iteration(exp, 1, "iteration 1: baseline")
    assert commit is not None and len(commit) == 40
    assert tag_target(exp, "iter-001") == commit
    assert sorted(provenance.changed_files(exp, commit)) == ["notes.md", "train.py"]
    assert ours(exp, "log", "-1", "--format=%an <%ae>|%s").strip() == (
        "mlsm <mlsm@localhost>|iteration 1: baseline"
    )


def test_second_iteration_records_exactly_its_changes(exp: Path) -> None:
    first = provenance.commit_iteration(exp, 1, "one")
    (exp / "train.py").write_text("lr = 0.05\n")
    (exp / "model.py").write_text("class Net: ...\n")
    second = provenance.commit_iteration(exp, 2, "two")
    assert second is not None and second != first
    assert sorted(provenance.changed_files(exp, second)) == ["model.py", "train.py"]
    assert tag_target(exp, "iter-002") == second


def test_unchanged_iteration_still_gets_its_own_commit(exp: Path) -> None:
    first = provenance.commit_iteration(exp, 1, "one")
    second = provenance.commit_iteration(exp, 2, "two")
    assert second is not None and second != first
    assert provenance.changed_files(exp, second) == []


def test_deletions_are_recorded(exp: Path) -> None:
    provenance.commit_iteration(exp, 1, "one")
    (exp / "notes.md").unlink()
    commit = provenance.commit_iteration(exp, 2, "two")
    assert commit is not None
    assert provenance.changed_files(exp, commit) == ["notes.md"]
    assert tracked(exp) == {"train.py"}


def test_excluded_and_oversized_files_never_enter(exp: Path) -> None:
    (exp / "logs").mkdir()
    (exp / "logs" / "train.log").write_text("step 1\n")
    (exp / "status.json").write_text("{}\n")
    (exp / "results.tsv").write_text("a\tb\n")
    (exp / "model.pt").write_bytes(b"\0" * 10)
    (exp / "sub").mkdir()
    (exp / "sub" / "weights.safetensors").write_bytes(b"\0" * 10)
    (exp / "sub" / "keep.py").write_text("x = 1\n")
    (exp / "data").mkdir()
    (exp / "data" / "train.csv").write_text("1,2\n")
    (exp / "big.csv").write_bytes(b"0" * 6_000_000)
    commit = provenance.commit_iteration(exp, 1, "one")
    assert commit is not None
    assert tracked(exp) == {"notes.md", "train.py", "sub/keep.py"}
    assert not any(p.startswith(".mlsm") for p in tracked(exp))


def test_file_that_grows_past_the_cap_leaves_the_index(exp: Path) -> None:
    (exp / "table.csv").write_text("1,2\n")
    provenance.commit_iteration(exp, 1, "one")
    (exp / "table.csv").write_bytes(b"0" * 2_000)
    commit = provenance.commit_iteration(exp, 2, "two", max_bytes=1_000)
    assert commit is not None
    assert provenance.changed_files(exp, commit) == ["table.csv"]
    assert "table.csv" not in tracked(exp)


def test_replay_after_crash_moves_the_tag(exp: Path) -> None:
    provenance.commit_iteration(exp, 1, "one")
    (exp / "train.py").write_text("lr = 0.2\n")
    crashed = provenance.commit_iteration(exp, 2, "two")
    # A crash that left git's lock files behind, then the daemon replays iteration 2.
    git_dir = exp / ".mlsm" / "git"
    (git_dir / "index.lock").write_text("")
    (git_dir / "refs" / "tags" / "iter-002.lock").write_text("")
    (exp / "train.py").write_text("lr = 0.3\n")
    replayed = provenance.commit_iteration(exp, 2, "two, replayed")
    assert replayed is not None and replayed != crashed
    assert tag_target(exp, "iter-002") == replayed
    assert provenance.resolve(exp, "2") == replayed


def test_half_made_repository_is_completed(exp: Path) -> None:
    (exp / ".mlsm" / "git").mkdir(parents=True)  # a crash right after mkdir
    assert provenance.commit_iteration(exp, 1, "one") is not None
    assert tracked(exp) == {"notes.md", "train.py"}


def test_resolve(exp: Path) -> None:
    provenance.commit_iteration(exp, 1, "one")
    (exp / "train.py").write_text("lr = 0.01\n")
    second = provenance.commit_iteration(exp, 2, "two")
    assert second is not None
    assert provenance.resolve(exp, "2") == second
    assert provenance.resolve(exp, "iter-002") == second
    assert provenance.resolve(exp, second[:10]) == second
    assert provenance.resolve(exp, second) == second
    with pytest.raises(provenance.ProvenanceError) as err:
        provenance.resolve(exp, "9")
    assert str(err.value) == f"iteration 9 has no commit in {exp.resolve()}/.mlsm/git"
    with pytest.raises(provenance.ProvenanceError, match="names no commit"):
        provenance.resolve(exp, "--output=/tmp/x")


def test_diff_between_iterations(exp: Path) -> None:
    provenance.commit_iteration(exp, 1, "one")
    (exp / "train.py").write_text("lr = 0.01\n")
    (exp / "notes.md").write_text("changed notes\n")
    provenance.commit_iteration(exp, 2, "two")
    text = provenance.diff(exp, "1", "iter-002", ["train.py"])
    assert "-lr = 0.1\n+lr = 0.01\n" in text
    assert "notes.md" not in text
    assert "notes.md" in provenance.diff(exp, "1", "2")


def test_user_config_hooks_and_env_do_not_interfere(
    exp: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    hooks = home / "hooks"
    hooks.mkdir(parents=True)
    for name in ("pre-commit", "commit-msg", "post-commit"):
        (hooks / name).write_text("#!/bin/sh\necho refused by hook >&2\nexit 1\n")
        (hooks / name).chmod(0o755)
    (home / ".gitconfig").write_text(
        f"[core]\n\thooksPath = {hooks}\n[commit]\n\tgpgsign = true\n"
        "[user]\n\tuseConfigOnly = true\n"
    )
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    for name in ("GIT_CONFIG_GLOBAL", "GIT_CONFIG_NOSYSTEM"):
        monkeypatch.delenv(name, raising=False)
    # Sanity: with this configuration a person's plain commit is refused by the hook.
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    person_env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    git(scratch, "init", "-q", env=person_env)
    refused = subprocess.run(
        ["git", "commit", "-q", "--allow-empty", "-m", "x"], cwd=scratch, env=person_env,
        capture_output=True, text=True, check=False,
    )
    assert refused.returncode != 0
    # A caller's stray GIT_DIR / GIT_INDEX_FILE must not redirect mlsm's git either.
    monkeypatch.setenv("GIT_DIR", str(scratch / ".git"))
    monkeypatch.setenv("GIT_WORK_TREE", str(scratch))
    monkeypatch.setenv("GIT_INDEX_FILE", str(tmp_path / "stray-index"))
    commit = provenance.commit_iteration(exp, 1, "one")
    assert commit is not None
    monkeypatch.delenv("GIT_DIR")
    monkeypatch.delenv("GIT_WORK_TREE")
    monkeypatch.delenv("GIT_INDEX_FILE")
    assert tag_target(exp, "iter-001") == commit
    assert not (tmp_path / "stray-index").exists()


def test_git_failure_raises_one_sentence(exp: Path) -> None:
    (exp / ".mlsm").mkdir()
    (exp / ".mlsm" / "git").write_text("not a directory\n")
    with pytest.raises(provenance.ProvenanceError) as err:
        provenance.commit_iteration(exp, 1, "one")
    message = str(err.value)
    assert "\n" not in message and message.startswith("git init")
    assert "failed" in message


def test_timeout_raises(exp: Path) -> None:
    with pytest.raises(provenance.ProvenanceError, match="timed out"):
        provenance.commit_iteration(exp, 1, "one", timeout=1e-9)


def test_without_git_nothing_happens(exp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(exp / "no-bin-here"))
    assert provenance.available() is False
    assert provenance.commit_iteration(exp, 1, "one") is None
    assert provenance.outer_repo(exp) is None
    assert not (exp / ".mlsm").exists()


def _snapshot(git_dir: Path) -> dict[str, tuple[int, int]]:
    """Every file and directory under a .git with its size and mtime."""
    return {
        str(p.relative_to(git_dir)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted([git_dir, *git_dir.rglob("*")])
    }


@pytest.fixture
def person(tmp_path: Path) -> Path:
    """The person's own repository, one commit, with the experiment directory inside it."""
    root = tmp_path / "person"
    (root / "experiments" / "exp").mkdir(parents=True)
    (root / "lib.py").write_text("def f():\n    return 1\n")
    (root / "README.md").write_text("readme\n")
    git(root, "init", "-q")
    git(root, "add", "lib.py", "README.md")
    git(root, "commit", "-q", "-m", "first")
    return root


def test_outer_repository_is_reported_and_untouched(person: Path, tmp_path: Path) -> None:
    exp = person / "experiments" / "exp"
    (exp / "train.py").write_text("lr = 0.1\n")
    (person / "lib.py").write_text("def f():\n    return 2\n")
    readme = person / "README.md"  # touched, not changed: must not count as dirty
    os.utime(readme, ns=(readme.stat().st_atime_ns, readme.stat().st_mtime_ns + 10**9))
    head = git(person, "rev-parse", "HEAD").strip()
    index_bytes = (person / ".git" / "index").read_bytes()
    before = _snapshot(person / ".git")

    assert provenance.commit_iteration(exp, 1, "one") is not None
    info = provenance.outer_repo(exp)
    run_dir = tmp_path / "run-1"
    summary = provenance.record_outer(run_dir, exp)

    assert _snapshot(person / ".git") == before
    assert (person / ".git" / "index").read_bytes() == index_bytes
    assert info is not None
    assert info["root"] == str(person.resolve())
    assert info["head"] == head
    assert info["dirty"] is True
    diff_text = str(info["diff"])
    assert "-    return 1\n+    return 2\n" in diff_text and "README.md" not in diff_text
    assert summary == {"root": str(person.resolve()), "head": head, "dirty": True}
    assert json.loads((run_dir / "outer_repo.json").read_text()) == summary
    assert (run_dir / "outer_repo.diff").read_text() == diff_text
    assert tracked(exp) == {"train.py"}


def test_clean_outer_repository_writes_no_diff(person: Path, tmp_path: Path) -> None:
    summary = provenance.record_outer(tmp_path / "run", person / "experiments" / "exp")
    assert summary is not None and summary["dirty"] is False
    assert not (tmp_path / "run" / "outer_repo.diff").exists()


def test_unborn_outer_repository(tmp_path: Path) -> None:
    root = tmp_path / "fresh"
    (root / "exp").mkdir(parents=True)
    git(root, "init", "-q")
    (root / "staged.py").write_text("x = 1\n")
    git(root, "add", "staged.py")
    info = provenance.outer_repo(root / "exp")
    assert info is not None and info["head"] is None and info["dirty"] is True
    assert "+x = 1" in str(info["diff"])


def test_outer_diff_is_capped(person: Path) -> None:
    (person / "lib.py").write_text("".join(f"line {i}\n" for i in range(60_000)))
    info = provenance.outer_repo(person / "experiments" / "exp")
    assert info is not None
    text = str(info["diff"])
    assert text.endswith(f"[mlsm: diff truncated at {provenance.DIFF_CAP} bytes]\n")
    assert len(text.encode()) <= provenance.DIFF_CAP + 100


def test_no_outer_repository(exp: Path) -> None:
    if any((p / ".git").exists() for p in (exp.resolve(), *exp.resolve().parents)):
        pytest.skip("the temporary directory itself sits inside a git repository")
    provenance.commit_iteration(exp, 1, "one")  # our own .mlsm/git is not an outer repo
    assert provenance.outer_repo(exp) is None
    assert provenance.record_outer(exp / "run", exp) is None
    assert not (exp / "run").exists()


def test_stray_dot_git_is_skipped_like_git_does(person: Path) -> None:
    exp = person / "experiments" / "exp"
    (exp / ".git").mkdir()  # empty: not a repository
    info = provenance.outer_repo(exp)
    assert info is not None and info["root"] == str(person.resolve())


def test_outer_repository_in_a_linked_worktree(person: Path, tmp_path: Path) -> None:
    linked = tmp_path / "linked"
    git(person, "worktree", "add", "-q", str(linked))
    (linked / "lib.py").write_text("changed\n")
    info = provenance.outer_repo(linked)
    assert info is not None and info["root"] == str(linked.resolve())
    assert info["head"] == git(person, "rev-parse", "HEAD").strip() and info["dirty"] is True
