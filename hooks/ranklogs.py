"""Under torchrun: put this rank's output in $MLSM_RUN_DIR/rank_K/, then exec the training."""

from __future__ import annotations

import contextlib
import os
import sys

from mlsm.hooks import rundir

FLAGS = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC


def _rank() -> int:
    raw = os.environ.get("RANK", "").strip()
    return int(raw) if raw.isdigit() else 0


def redirect(run_dir: str, rank: int) -> None:
    """Rank 0 keeps writing the run's own stdout.log and stderr.log (what the daemon, the
    agent and `mlsm logs` read), linked into rank_0/; rank K writes rank_K/ only."""
    folder = os.path.join(run_dir, rundir.rank_dir_name(rank))
    os.makedirs(folder, exist_ok=True)
    for fd, name in ((1, rundir.STDOUT), (2, rundir.STDERR)):
        target = os.path.join(folder, name)
        if rank == 0:
            with contextlib.suppress(OSError):  # already linked, or another filesystem
                os.link(os.path.join(run_dir, name), target)
            continue
        out = os.open(target, FLAGS, 0o644)
        os.dup2(out, fd)
        os.close(out)


def main(args: list[str] | None = None) -> int:
    args = sys.argv[1:] if args is None else args
    if len(args) < 2 or args[0] != "--":
        print("usage: python -m mlsm.hooks.ranklogs -- COMMAND...", file=sys.stderr)
        return 2
    run_dir = os.environ.get("MLSM_RUN_DIR")
    if run_dir:
        redirect(run_dir, _rank())
    try:
        os.execvp(args[1], args[1:])
    except OSError as exc:
        print(f"mlsm: cannot start training command {args[1]!r}: {exc.strerror or exc}",
              file=sys.stderr, flush=True)
    return 127


if __name__ == "__main__":
    sys.exit(main())
