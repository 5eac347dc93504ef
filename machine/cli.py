"""The `mlsm` command line: the only place that talks to the person (one line per error)."""

from __future__ import annotations

import errno
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from mlsm.hooks.layout import Layout
from mlsm.machine.core.config import OPTIONS, Option
from mlsm.machine.core.errors import ExitCode, LockedError, MlsmError

DIR_ARG = click.Path(file_okay=False, path_type=Path)


def _option(opt: Option) -> Callable[[Any], Any]:
    default = "" if opt.default in (None, ()) else f"; default {opt.default!r}"
    help_text = f"{opt.help} [env {opt.env}{default}]"
    if opt.kind == "bool":
        return click.option(f"{opt.flag}/--no-{opt.flag[2:]}", opt.name, default=None,
                            help=help_text)
    if opt.kind == "list":
        return click.option(opt.flag, opt.name, multiple=True, default=None, help=help_text)
    types: dict[str, Any] = {"int": int, "float": float, "str": str,
                             "choice": click.Choice(opt.choices)}
    return click.option(opt.flag, opt.name, type=types[opt.kind], default=None, help=help_text,
                        metavar=opt.kind.upper() if opt.kind != "choice" else None)


def config_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Every setting as a flag (flag > MLSM_* env > mlsm.toml > default)."""
    for opt in reversed(OPTIONS):
        fn = _option(opt)(fn)
    return fn


def _flags(kwargs: dict[str, Any]) -> dict[str, Any]:
    names = {o.name for o in OPTIONS}
    return {k: (list(v) or None) if isinstance(v, tuple) else v
            for k, v in kwargs.items() if k in names and v not in (None, ())}


def fail(exc: MlsmError) -> None:
    click.echo(f"mlsm: error: {exc}", err=True)
    sys.exit(int(exc.exit_code))


_HOW_TO_FIX = {
    errno.EACCES: "make the directory writable by you, or run mlsm as its owner",
    errno.EPERM: "the file system does not permit it (an immutable attribute? `lsattr -d` "
                 "shows it, `chattr -i` lifts it)",
    errno.EROFS: "mlsm keeps its state beside IDEA.md; copy the experiment to a writable "
                 "file system",
    errno.ENOSPC: "free some disk space or inodes, then run mlsm again",
    errno.EDQUOT: "free some of your disk quota, then run mlsm again",
    errno.ENOENT: "the directory or one of its parents is missing; create it first",
    errno.ENOTDIR: "a file stands where mlsm needs a directory; remove or rename it",
    errno.EEXIST: "a file stands where mlsm needs a directory; remove or rename it",
}


def unwritable(exc: OSError, where: Path) -> MlsmError:
    """An OSError from writing into an experiment, as one sentence naming path, cause and fix."""
    path = exc.filename if exc.filename is not None else where
    cause = exc.strerror or type(exc).__name__
    fix = _HOW_TO_FIX.get(exc.errno or 0, "check the path and its permissions")
    return MlsmError(f"cannot write {path} ({cause}): {fix}")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="mlsm", prog_name="mlsm")
def cli() -> None:
    """mlsm: experiments that run themselves.

    Drop IDEA.md into a directory; an agent plans, codes, trains, analyzes and
    iterates until REPORT.md. `touch DIR/STOP` halts everything.
    """


def _daemon(dirs: tuple[Path, ...], kwargs: dict[str, Any], until_finished: bool,
            discover: bool = False, fresh: bool = False) -> None:
    from mlsm.machine.daemon import Daemon

    if fresh:
        _restart(dirs, queue=False)
    daemon = Daemon(list(dirs), _flags(kwargs), discover=discover)
    try:
        daemon.open()
        daemon.companions = _companions(dirs, _flags(kwargs), discover)
    except MlsmError as exc:
        daemon.close()
        fail(exc)
    except OSError as exc:
        daemon.close()
        fail(unwritable(exc, dirs[0]))
    sys.exit(int(daemon.run(until_finished=until_finished)))


@cli.command()
@click.argument("dirs", nargs=-1, required=True, type=DIR_ARG)
@click.option("--discover", is_flag=True,
              help="DIRS are folders of experiments: every subdirectory that has or gains an "
                   "IDEA.md becomes an experiment with its own machine, lock and logs.")
@click.option("--fresh", is_flag=True, help="Start over first (see `mlsm restart`).")
@config_options
def watch(dirs: tuple[Path, ...], discover: bool, fresh: bool, **kwargs: Any) -> None:
    """Watch experiment DIRS: IDEA.md starts a run, STOP halts it; keeps watching after DONE."""
    _daemon(dirs, kwargs, until_finished=False, discover=discover, fresh=fresh)


@cli.command()
@click.argument("dir", type=DIR_ARG)
@click.option("--fresh", is_flag=True, help="Start over first (see `mlsm restart`).")
@config_options
def run(dir: Path, fresh: bool, **kwargs: Any) -> None:
    """Run the experiment in DIR in the foreground until it ends.

    Exit status: 0 DONE with a result, 1 FAILED, 3 bad input (an unusable IDEA.md too),
    4 locked, 7 DONE but no training produced the objective, 130 stopped by a signal.
    """
    _daemon((dir,), kwargs, until_finished=True, fresh=fresh)


@cli.command()
@click.argument("dirs", nargs=-1, required=True, type=DIR_ARG)
def restart(dirs: tuple[Path, ...]) -> None:
    """Start DIR over: move the last attempt into DIR/.mlsm/archive/<time>/.

    Moved: status.json, results.tsv, logs/, REPORT.md and its plots, and PLAN.md, train.py
    and NOTES.md where the agent wrote them. Never moved: IDEA.md, mlsm.toml, or a PLAN.md or
    train.py that you wrote. With a daemon running on DIR this writes DIR/RESTART for it.
    """
    _restart(dirs, queue=True)


def _restart(dirs: tuple[Path, ...], queue: bool) -> None:
    from mlsm.machine.engine import restart as restart_one

    for d in dirs:
        _require_dir(d)
        try:
            where = restart_one(d)
        except MlsmError as exc:
            fail(exc)
        except OSError as exc:
            fail(unwritable(exc, d))
        if where == "queued" and not queue:
            fail(LockedError(f"a daemon is running on {d}: `mlsm restart {d}` asks it to start "
                             f"over, or stop it before --fresh"))
        click.echo(f"{d}: RESTART written; the running daemon starts over now"
                   if where == "queued" else f"{d}: previous attempt archived in {where}")


@cli.command()
@click.argument("dirs", nargs=-1, required=True, type=DIR_ARG)
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON document: an object for one experiment DIR, a list of "
                   "objects for several DIRS or a discovery root.")
@click.option("--follow", "-f", is_flag=True, help="A live view that refreshes from the files.")
def status(dirs: tuple[Path, ...], as_json: bool, follow: bool) -> None:
    """Show state, iteration, pids, heartbeat age and the last error of each experiment.

    A DIR that is a discovery root (`mlsm watch --discover`) stands for each subdirectory that
    is an experiment. A directory a daemon watches before IDEA.md arrives shows IDLE, waiting
    for IDEA.md. With --json the output is one document: a single object when there is one
    DIR, else a list with an object per experiment. Problems go to stderr as one line each.

    Exit status: 0, or 3 when a DIR is not an experiment or its status.json is corrupt.
    """
    from mlsm.machine.views import status as report

    try:
        sys.exit(int(report.show(list(dirs), as_json=as_json, follow=follow)))
    except MlsmError as exc:
        fail(exc)


@cli.command()
@click.argument("dirs", nargs=-1, required=True, type=DIR_ARG)
def stop(dirs: tuple[Path, ...]) -> None:
    """Create DIR/STOP: the daemon kills the agent and training trees and waits."""
    for d in dirs:
        _require_dir(d)
        try:
            Layout(d).stop.touch()
        except OSError as exc:
            fail(unwritable(exc, d))
        click.echo(f"{d}: STOP created; remove it (mlsm resume) to continue")


@cli.command()
@click.argument("dirs", nargs=-1, required=True, type=DIR_ARG)
def resume(dirs: tuple[Path, ...]) -> None:
    """Remove DIR/STOP: the daemon re-enters the state it left."""
    for d in dirs:
        _require_dir(d)
        try:
            Layout(d).stop.unlink(missing_ok=True)
        except OSError as exc:
            fail(unwritable(exc, d))
        click.echo(f"{d}: STOP removed")


@cli.command()
@click.argument("dirs", nargs=-1, required=True, type=DIR_ARG)
def retry(dirs: tuple[Path, ...]) -> None:
    """Send a FAILED run back to the step that failed (fresh attempts, history kept).

    Fix the cause first (the error is in `mlsm status`). With a daemon running on DIR this
    writes DIR/RETRY, which the daemon consumes (`touch DIR/RETRY` does the same).
    """
    from mlsm.machine.engine import retry_failed

    for d in dirs:
        _require_dir(d)
        try:
            state = retry_failed(d)
        except MlsmError as exc:
            fail(exc)
        if state == "queued":
            click.echo(f"{d}: RETRY written; the running daemon sends the run back now")
        else:
            click.echo(f"{d}: back to {state.upper()}; continue with `mlsm run {d}` or "
                       f"`mlsm watch`")


@cli.command()
@click.argument("dir", type=DIR_ARG)
@click.argument("a")
@click.argument("b")
@click.argument("paths", nargs=-1)
def diff(dir: Path, a: str, b: str, paths: tuple[str, ...]) -> None:
    """Show what changed in DIR between iterations A and B (numbers, iter-NNN or commits).

    Every iteration's files are committed to mlsm's own repository in DIR/.mlsm/git; PATHS
    limits the diff (for example `train.py`).
    """
    from mlsm.machine.core import provenance

    _require_dir(dir)
    try:
        click.echo(provenance.diff(dir, a, b, list(paths) or None), nl=False)
    except provenance.ProvenanceError as exc:
        fail(MlsmError(str(exc)))


def _require_dir(d: Path) -> None:
    if not d.is_dir():
        fail(MlsmError(f"{d} is not a directory"))


@cli.command()
def graph() -> None:
    """Print the state diagram as Mermaid text."""
    from mlsm.machine.core.states import mermaid

    click.echo(mermaid())


@cli.command(name="watchdog")
@click.argument("dirs", nargs=-1, required=True, type=DIR_ARG)
@click.option("--kill", is_flag=True, help="Kill a stale or over-budget tree and record it.")
@click.option("--json", "as_json", is_flag=True, help="Print findings as JSON lines.")
def watchdog_cmd(dirs: tuple[Path, ...], kill: bool, as_json: bool) -> None:
    """One-shot check, safe from cron, with or without a daemon.

    Exit status: 0 healthy, 5 a problem found (not acted on), 6 acted, 3 error.
    """
    from mlsm.machine.views import health as watchdog_check

    try:
        sys.exit(int(watchdog_check.main(list(dirs), kill=kill, as_json=as_json)))
    except MlsmError as exc:
        fail(exc)


@cli.command()
@click.argument("dir", type=DIR_ARG)
@click.option("--follow", "-f", is_flag=True, help="Keep printing as the file grows.")
@click.option("--iteration", "-i", type=int, default=None,
              help="Show this iteration's training output (stdout.log) instead of the runner "
                   "log.")
@click.option("--stderr", "which", flag_value="stderr", default=None,
              help="The training's stderr.log: of --iteration, else of the current iteration.")
@click.option("--stdout", "which", flag_value="stdout",
              help="The training's stdout.log: of --iteration, else of the current iteration.")
def logs(dir: Path, follow: bool, iteration: int | None, which: str | None) -> None:
    """Print the runner log, or an iteration's training output.

    The current iteration is the one status.json names, else the highest logs/iter_NNN.
    """
    from mlsm.machine.views import status as report

    try:
        sys.exit(int(report.logs(dir, follow=follow, iteration=iteration, which=which)))
    except MlsmError as exc:
        fail(exc)


def _companions(dirs: tuple[Path, ...], flags: dict[str, Any], discover: bool) -> list[Any]:
    """The web UI, tracker exporters and notifier the settings ask for (read-only views)."""
    from mlsm.machine.views.companions import build

    return list(build(dirs, flags, discover))


def _optional_value(command: click.Command, name: str, bare: str, help_text: str) -> None:
    """Let `--NAME` stand alone (meaning `bare`) as well as take a value."""
    command.params = [
        click.Option([f"--{name}", name], is_flag=False, flag_value=bare, default=None,
                     metavar="[URI]", help=help_text) if p.name == name else p
        for p in command.params]


MLFLOW_HELP = ("Export every iteration to MLflow, from the files: a tracking URI, or alone for "
               "$MLFLOW_TRACKING_URI, else sqlite:///<parent>/mlflow.db [env MLSM_MLFLOW]")
for _command in (watch, run):
    _optional_value(_command, "mlflow", "auto", MLFLOW_HELP)


@cli.command()
@click.argument("paths", nargs=-1, type=DIR_ARG)
@click.option("--host", default=None, help="Address to bind (default 127.0.0.1; any other "
              "needs a token) [env MLSM_UI_HOST]")
@click.option("--port", type=int, default=8765, show_default=True,
              help="Port (0: any free one; the URL is printed).")
@click.option("--token", default=None, help="Token every request must carry (default: none on "
              "127.0.0.1, a printed one elsewhere) [env MLSM_UI_TOKEN]")
def ui(paths: tuple[Path, ...], host: str | None, port: int, token: str | None) -> None:
    """Serve the web UI over experiments: ROOT folders of them, or experiment DIRs.

    Reads the files only. Its actions touch the same files you would: Stop creates STOP,
    Resume removes it, Retry writes RETRY, New experiment writes ROOT/NAME/IDEA.md.
    """
    from mlsm.machine.core.config import resolve

    for p in paths:
        _require_dir(p)
    try:
        config = resolve(None, {"ui_host": host, "ui_token": token})
        from mlsm.machine.views.ui.server import serve
    except MlsmError as exc:
        fail(exc)
    except ImportError:
        fail(MlsmError("mlsm ui needs the web UI's packages: pip install 'mlsm[ui]' "
                       "(starlette and uvicorn)"))
    try:
        sys.exit(serve(list(paths) or [Path.cwd()], config.ui_host, port, config.ui_token))
    except MlsmError as exc:
        fail(exc)


@cli.command()
@click.argument("dir", type=DIR_ARG)
@click.option("--mlflow", "mlflow_uri", is_flag=False, flag_value="auto", default=None,
              metavar="[URI]", help=MLFLOW_HELP)
@click.option("--wandb", "use_wandb", is_flag=True,
              help="Export to W&B offline runs under $WANDB_DIR, else beside DIR (then `wandb "
                   "sync`).")
@click.option("--tensorboard", "use_tensorboard", is_flag=True,
              help="Write TensorBoard event files into each DIR/logs/iter_NNN/tb.")
def export(dir: Path, mlflow_uri: str | None, use_wandb: bool, use_tensorboard: bool) -> None:
    """Export an experiment to MLflow, W&B or TensorBoard from its files (again: only what
    is new).

    Each iteration becomes a run (params, metrics, result, train.py, the decision); MLflow
    nests them under one run per experiment. What went out is kept in DIR/.mlsm/export_*.json.
    """
    from mlsm.machine.views.export import export_once

    _require_dir(dir)
    targets = [("mlflow", mlflow_uri)] if mlflow_uri else []
    targets += [("wandb", "")] if use_wandb else []
    targets += [("tensorboard", "")] if use_tensorboard else []
    if not targets:
        fail(MlsmError("name a tracker: --mlflow [URI], --wandb or --tensorboard"))
    code = ExitCode.OK
    for name, setting in targets:
        try:
            ended, error = export_once(dir, name, setting or "")
        except MlsmError as exc:
            fail(exc)
        if error:
            click.echo(f"mlsm: error: export to {name} failed: {error}", err=True)
            code = ExitCode.ERROR
        else:
            click.echo(f"{dir}: exported to {name}" + ("" if ended else " (still running: "
                       "run it again, or use --" + name + " on watch, for the rest)"))
    sys.exit(int(code))


def main() -> None:
    try:
        cli(standalone_mode=True)
    except KeyboardInterrupt:
        sys.exit(int(ExitCode.INTERRUPTED))


if __name__ == "__main__":
    main()
