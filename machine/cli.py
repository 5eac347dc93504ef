"""The `mlsm` command line: the only place that talks to the person (one line per error)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from mlsm.hooks.layout import Layout
from mlsm.machine.core.config import OPTIONS, Option
from mlsm.machine.core.errors import ExitCode, MlsmError

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


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="mlsm", prog_name="mlsm")
def cli() -> None:
    """mlsm: experiments that run themselves.

    Drop IDEA.md into a directory; an agent plans, codes, trains, analyzes and
    iterates until REPORT.md. `touch DIR/STOP` halts everything.
    """


def _daemon(dirs: tuple[Path, ...], kwargs: dict[str, Any], until_finished: bool,
            discover: bool = False) -> None:
    from mlsm.machine.daemon import Daemon

    daemon = Daemon(list(dirs), _flags(kwargs), discover=discover)
    try:
        daemon.open()
    except MlsmError as exc:
        daemon.close()
        fail(exc)
    sys.exit(int(daemon.run(until_finished=until_finished)))


@cli.command()
@click.argument("dirs", nargs=-1, required=True, type=DIR_ARG)
@click.option("--discover", is_flag=True,
              help="DIRS are folders of experiments: every subdirectory that has or gains an "
                   "IDEA.md becomes an experiment with its own machine, lock and logs.")
@config_options
def watch(dirs: tuple[Path, ...], discover: bool, **kwargs: Any) -> None:
    """Watch experiment DIRS: IDEA.md starts a run, STOP halts it; keeps watching after DONE."""
    _daemon(dirs, kwargs, until_finished=False, discover=discover)


@cli.command()
@click.argument("dir", type=DIR_ARG)
@config_options
def run(dir: Path, **kwargs: Any) -> None:
    """Run the experiment in DIR in the foreground until it ends.

    Exit status: 0 DONE, 1 FAILED, 130 stopped by a signal, 3 bad input, 4 locked.
    """
    _daemon((dir,), kwargs, until_finished=True)


@cli.command()
@click.argument("dirs", nargs=-1, required=True, type=DIR_ARG)
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable document.")
@click.option("--follow", "-f", is_flag=True, help="A live view that refreshes from the files.")
def status(dirs: tuple[Path, ...], as_json: bool, follow: bool) -> None:
    """Show state, iteration, pids, heartbeat age and the last error of each experiment."""
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
        Layout(d).stop.touch()
        click.echo(f"{d}: STOP created; remove it (mlsm resume) to continue")


@cli.command()
@click.argument("dirs", nargs=-1, required=True, type=DIR_ARG)
def resume(dirs: tuple[Path, ...]) -> None:
    """Remove DIR/STOP: the daemon re-enters the state it left."""
    for d in dirs:
        _require_dir(d)
        Layout(d).stop.unlink(missing_ok=True)
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
              help="Show this iteration's training output instead of the runner log.")
@click.option("--stderr", "which", flag_value="stderr", default="stdout",
              help="With --iteration: the stderr log.")
def logs(dir: Path, follow: bool, iteration: int | None, which: str) -> None:
    """Print the runner log, or one iteration's training output."""
    from mlsm.machine.views import status as report

    try:
        sys.exit(int(report.logs(dir, follow=follow, iteration=iteration, which=which)))
    except MlsmError as exc:
        fail(exc)


def main() -> None:
    try:
        cli(standalone_mode=True)
    except KeyboardInterrupt:
        sys.exit(int(ExitCode.INTERRUPTED))


if __name__ == "__main__":
    main()
