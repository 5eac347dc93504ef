"""Record each iteration of an experiment as a commit in mlsm's own git repository."""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mlsm.hooks import layout
from mlsm.hooks.layout import Layout

SIZE_CAP = 5 * 1024 * 1024
DIFF_CAP = 200_000
EXCLUDES = (
    f"{layout.PRIVATE}/", f"{layout.LOGS}/", layout.STATUS, layout.LEDGER, layout.STOP,
    layout.RETRY,
    "*.pt", "*.pth", "*.ckpt", "*.safetensors", "*.bin", "__pycache__/", "*.pyc",
    ".git/", "runs/", "wandb/", "mlruns/", "data/", "checkpoints/",
)
EXCLUDE_TEXT = "# Written by mlsm: what its provenance repository never tracks.\n" + "".join(
    f"{pattern}\n" for pattern in EXCLUDES
)
# Settings that keep a person's configuration, hooks and helpers out of every git we run.
NEUTRAL = (
    "core.hooksPath=/dev/null", "commit.gpgsign=false", "tag.gpgsign=false",
    "core.fsmonitor=false", "core.excludesFile=/dev/null", "core.attributesFile=/dev/null",
    "gc.auto=0", "maintenance.auto=false", "init.defaultBranch=main",
)
LOCK_LEFTOVERS = ("index.lock", "HEAD.lock", "config.lock", "packed-refs.lock")
ITER_RE = re.compile(r"(?:iter-)?(\d+)")


class ProvenanceError(Exception):
    """A git command behind provenance failed; the message is one sentence."""


def available() -> bool:
    """Whether a git executable is on PATH."""
    return shutil.which("git") is not None


def _env(cwd: Path) -> dict[str, str]:
    """The caller's environment minus GIT_*, plus mlsm's identity; no search above cwd."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    if cwd.parent != cwd:
        env["GIT_CEILING_DIRECTORIES"] = str(cwd.parent)
    env.update(
        GIT_CONFIG_GLOBAL=os.devnull, GIT_CONFIG_NOSYSTEM="1", GIT_TERMINAL_PROMPT="0",
        GIT_AUTHOR_NAME="mlsm", GIT_AUTHOR_EMAIL="mlsm@localhost",
        GIT_COMMITTER_NAME="mlsm", GIT_COMMITTER_EMAIL="mlsm@localhost", LC_ALL="C",
    )
    return env


def _argv(prefix: list[str], args: list[str]) -> list[str]:
    """The full git command line: location options, neutralising -c options, then args."""
    neutral = [item for setting in NEUTRAL for item in ("-c", setting)]
    return ["git", *prefix, *neutral, "--literal-pathspecs", *args]


def _ours(exp_dir: Path) -> list[str]:
    """Options that point git at mlsm's repository and the experiment as its work tree."""
    return [f"--git-dir={git_dir_of(exp_dir)}", f"--work-tree={exp_dir}"]


def _last_line(stderr: bytes) -> str:
    """Git's last fatal:/error: line, else its last line (advice trails the real error)."""
    lines = [ln.strip() for ln in stderr.decode(errors="replace").splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith(("fatal:", "error:"))]
    return (errors or lines or ["no message from git"])[-1].rstrip(".")


def _git(
    prefix: list[str], args: list[str], cwd: Path, deadline: float, stdin: bytes = b"",
    ok: tuple[int, ...] = (0,),
) -> tuple[int, bytes]:
    """Run git; return (exit code, stdout) or raise ProvenanceError on failure or timeout."""
    what = f"git {args[0]} in {cwd}"
    try:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise subprocess.TimeoutExpired(args[0], 0)
        done = subprocess.run(
            _argv(prefix, args), cwd=cwd, input=stdin, capture_output=True, env=_env(cwd),
            timeout=remaining, check=False,
        )
    except subprocess.TimeoutExpired:
        raise ProvenanceError(f"{what} timed out") from None
    except OSError as exc:
        raise ProvenanceError(f"{what} could not run: {exc.strerror or exc}") from None
    if done.returncode not in ok:
        raise ProvenanceError(f"{what} failed: {_last_line(done.stderr)}")
    return done.returncode, done.stdout


def _git_capped(prefix: list[str], args: list[str], cwd: Path, timeout: float) -> str:
    """Run git and return at most DIFF_CAP bytes of its stdout, with a marker line if cut."""
    what = f"git {args[0]} in {cwd}"
    try:
        return _read_capped(what, _argv(prefix, args), cwd, timeout)
    except OSError as exc:
        raise ProvenanceError(f"{what} could not run: {exc.strerror or exc}") from None


def _read_capped(what: str, argv: list[str], cwd: Path, timeout: float) -> str:
    """The body of _git_capped: stream stdout, stop at the cap, kill git at the timeout."""
    with tempfile.TemporaryFile() as err, subprocess.Popen(
        argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=err, env=_env(cwd),
    ) as proc:
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            assert proc.stdout is not None
            data = proc.stdout.read(DIFF_CAP + 1)
            cut = len(data) > DIFF_CAP
            if cut:
                proc.kill()
            rc = proc.wait()
        finally:
            timer.cancel()
        err.seek(0)
        if not cut and rc != 0:
            reason = "timed out" if rc < 0 else f"failed: {_last_line(err.read())}"
            raise ProvenanceError(f"{what} {reason}")
    if cut:
        data = data[: data.rfind(b"\n", 0, DIFF_CAP) + 1]
        data += f"[mlsm: diff truncated at {DIFF_CAP} bytes]\n".encode()
    return data.decode(errors="replace")


def git_dir_of(exp_dir: Path) -> Path:
    """`.mlsm/git`: mlsm's own repository of the experiment (never the person's)."""
    return Layout(exp_dir).private / "git"


@contextmanager
def _locked(exp_dir: Path) -> Iterator[None]:
    """Hold mlsm's provenance lock so that git lock files left behind are known stale."""
    private = Layout(exp_dir).private
    private.mkdir(parents=True, exist_ok=True)
    with (private / "provenance.lock").open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _prepare(exp_dir: Path, iteration: int, deadline: float) -> None:
    """Create the repository if it is not whole, write its excludes, clear stale locks."""
    git_dir = git_dir_of(exp_dir)
    if not all((git_dir / name).exists() for name in ("HEAD", "objects", "refs")):
        _git([], ["init", "-q", "--bare", "--template=", str(git_dir)], exp_dir, deadline)
    info = git_dir / "info" / "exclude"
    if not info.is_file() or info.read_text(encoding="utf-8") != EXCLUDE_TEXT:
        info.parent.mkdir(exist_ok=True)
        info.write_text(EXCLUDE_TEXT, encoding="utf-8")
    stale = [*LOCK_LEFTOVERS, "refs/heads/main.lock", f"refs/tags/{tag(iteration)}.lock"]
    for name in stale:
        (git_dir / name).unlink(missing_ok=True)


def _stage(exp_dir: Path, max_bytes: int, deadline: float) -> None:
    """Bring the index in line with the work tree, leaving out excluded and oversized files."""
    ours = _ours(exp_dir)
    _, out = _git(ours, ["ls-files", "-z", "-t", "-c", "-o", "--exclude-standard"], exp_dir,
                  deadline)
    update: list[str] = []
    drop: list[str] = []
    for entry in filter(None, out.decode("utf-8", "surrogateescape").split("\0")):
        status, path = entry[0], entry[2:]
        if path.endswith("/"):  # a nested repository: not ours to track
            continue
        try:
            st = (exp_dir / path).lstat()
            keep = st.st_size <= max_bytes and not stat.S_ISDIR(st.st_mode)
        except (FileNotFoundError, NotADirectoryError):
            keep = True  # deleted: update-index --remove drops it
        if keep:
            update.append(path)
        elif status != "?":
            drop.append(path)
    for flags, paths in ((["--add", "--remove"], update), (["--force-remove"], drop)):
        if paths:
            data = b"".join(os.fsencode(p) + b"\0" for p in paths)
            _git(ours, ["update-index", *flags, "-z", "--stdin"], exp_dir, deadline, data)


def tag(iteration: int) -> str:
    """The tag name of an iteration: iter-NNN."""
    return f"iter-{iteration:03d}"


def commit_iteration(
    exp_dir: Path, iteration: int, message: str, *, timeout: float = 30.0,
    max_bytes: int = SIZE_CAP,
) -> str | None:
    """Commit the experiment's files as this iteration, tag it, return the id (None sans git)."""
    if not available():
        return None
    exp_dir = Path(exp_dir).resolve()
    deadline = time.monotonic() + timeout
    ours = _ours(exp_dir)
    try:
        with _locked(exp_dir):
            _prepare(exp_dir, iteration, deadline)
            _stage(exp_dir, max_bytes, deadline)
            commit = ["commit", "-q", "--no-verify", "--allow-empty", "--allow-empty-message"]
            _git(ours, [*commit, "-F", "-"], exp_dir, deadline, message.encode())
            _, out = _git(ours, ["rev-parse", "--verify", "HEAD"], exp_dir, deadline)
            commit_id = out.decode().strip()
            _git(ours, ["tag", "-f", tag(iteration), commit_id], exp_dir, deadline)
    except OSError as exc:
        raise ProvenanceError(f"provenance for {exp_dir} failed: {exc.strerror or exc}") from None
    return commit_id


def _require_git() -> None:
    """Raise ProvenanceError when git is not installed."""
    if not available():
        raise ProvenanceError("git is not installed, so there is no provenance to read")


def changed_files(exp_dir: Path, commit: str) -> list[str]:
    """Paths that commit changed against its parent (every file for the first commit)."""
    _require_git()
    exp_dir = Path(exp_dir).resolve()
    args = ["diff-tree", "-r", "-z", "--root", "--no-commit-id", "--name-only", "--no-renames"]
    _, out = _git(_ours(exp_dir), [*args, resolve(exp_dir, commit)], exp_dir,
                  time.monotonic() + 30)
    return [p for p in out.decode("utf-8", "surrogateescape").split("\0") if p]


def resolve(exp_dir: Path, ref: str) -> str:
    """Full commit id for "3", "iter-003", or a commit id or prefix."""
    _require_git()
    exp_dir, ref = Path(exp_dir).resolve(), ref.strip()
    match = ITER_RE.fullmatch(ref)
    candidates = [f"refs/tags/{tag(int(match.group(1)))}"] if match else []
    if not ref.startswith("iter-"):  # all digits may still be a commit prefix
        candidates.append(ref)
    for name in candidates:
        rc, out = _git(_ours(exp_dir), ["rev-parse", "-q", "--verify", "--end-of-options",
                                        f"{name}^{{commit}}"], exp_dir, time.monotonic() + 30,
                       ok=(0, 1, 128))
        if rc == 0:
            return out.decode().strip()
    where = git_dir_of(exp_dir)
    if match:
        raise ProvenanceError(f"iteration {int(match.group(1))} has no commit in {where}")
    raise ProvenanceError(f"{ref!r} names no commit in {where}")


def diff(exp_dir: Path, a: str, b: str, paths: list[str] | None = None) -> str:
    """Unified diff between two iterations or commits, optionally limited to some paths."""
    exp_dir = Path(exp_dir).resolve()
    old, new = resolve(exp_dir, a), resolve(exp_dir, b)
    args = ["diff", "--no-color", "--no-ext-diff", "--no-textconv", old, new, "--", *(paths or [])]
    return _git(_ours(exp_dir), args, exp_dir, time.monotonic() + 30)[1].decode(errors="replace")


def _find_outer(exp_dir: Path) -> Path | None:
    """The nearest directory at or above exp_dir with a .git repository (or gitfile) in it."""
    start = Path(exp_dir).resolve()
    found = (p for p in (start, *start.parents)
             if (p / ".git" / "HEAD").is_file() or (p / ".git").is_file())
    return next(found, None)


def outer_repo(exp_dir: Path, *, timeout: float = 30.0) -> dict[str, object] | None:
    """HEAD, dirtiness and diff of the person's repository around exp_dir, read-only; else None."""
    root = _find_outer(exp_dir)
    if root is None or not available():
        return None
    deadline = time.monotonic() + timeout
    prefix = ["--no-optional-locks", "-C", str(root)]
    rc, out = _git(prefix, ["rev-parse", "-q", "--verify", "HEAD^{commit}"], root, deadline,
                   ok=(0, 1))
    head = out.decode().strip() if rc == 0 else None
    base = head or _git(prefix, ["hash-object", "-t", "tree", os.devnull], root,
                        deadline)[1].decode().strip()
    # Plumbing on purpose: porcelain `git diff` rewrites the index even under
    # --no-optional-locks, and an empty patch (not the exit code) ignores touched-only files.
    args = ["diff-index", "-p", "--no-color", "--no-ext-diff", "--no-textconv", base]
    text = _git_capped(prefix, args, root, max(deadline - time.monotonic(), 0.001))
    return {"root": str(root), "head": head, "dirty": bool(text), "diff": text}


def record_outer(run_dir: Path, exp_dir: Path) -> dict[str, object] | None:
    """Write outer_repo.json (and outer_repo.diff when dirty) into run_dir; return the summary."""
    info = outer_repo(exp_dir)
    if info is None:
        return None
    summary = {k: v for k, v in info.items() if k != "diff"}
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "outer_repo.json").write_text(json.dumps(summary, indent=2) + "\n", "utf-8")
        if info["dirty"]:
            (run_dir / "outer_repo.diff").write_text(str(info["diff"]), encoding="utf-8")
    except OSError as exc:
        raise ProvenanceError(f"writing outer_repo files in {run_dir} failed: {exc}") from None
    return summary
