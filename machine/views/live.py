"""`mlsm status --follow`: a live terminal view that refreshes from the files, read-only."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from mlsm.machine.core.errors import ExitCode, InputError
from mlsm.machine.views.status import expand, snapshot

REFRESH_S = 1.0
STATE_STYLE = {"training": "bold green", "failed": "bold red", "done": "bold blue",
               "stopped": "bold yellow"}


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def _progress(doc: dict[str, Any]) -> Any:
    from rich.progress_bar import ProgressBar
    from rich.table import Table

    step, total = doc.get("step"), doc.get("total_steps")
    if not (isinstance(step, int) and isinstance(total, int) and total > 0):
        return "-" if step is None else f"step {step}"
    grid = Table.grid(padding=(0, 1))
    grid.add_row(ProgressBar(total=total, completed=min(step, total), width=20),
                 f"{step}/{total}", f"ETA {_age(doc.get('eta_s'))}")
    return grid


def _progress_short(doc: dict[str, Any]) -> str:
    """`120/600 20% 35s` (ETA last): the progress column of the narrow table."""
    step, total = doc.get("step"), doc.get("total_steps")
    if not (isinstance(step, int) and isinstance(total, int) and total > 0):
        return "-" if step is None else f"step {step}"
    eta = f" {_age(doc['eta_s'])}" if doc.get("eta_s") is not None else ""
    return f"{step}/{total} {min(1.0, max(0.0, step / total)):.0%}{eta}"


def _best(doc: dict[str, Any]) -> str:
    best = doc.get("best")
    return f"{best['metric']}={best['value']:.4g} @{best['iteration']}" if best else "-"


def _note(doc: dict[str, Any]) -> Any:
    from rich.text import Text

    waiting = doc.get("waiting_for")
    note = doc.get("error") or doc.get("stop_reason") or (f"waiting for {waiting}"
                                                          if waiting else "")
    return Text(note, style="red" if doc.get("error") else "dim")


def _row(doc: dict[str, Any], narrow: bool = False) -> list[Any]:
    from rich.text import Text

    state = str(doc["state"])
    head = [Text(Path(doc["dir"]).name), Text(state.upper(), style=STATE_STYLE.get(state, "")),
            f"{doc['iteration']}/{doc['max_iterations'] or '-'}"]
    if narrow:
        return [*head, _progress_short(doc), _best(doc), _note(doc)]
    metrics = doc.get("latest_metrics") or {}
    latest = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                       for k, v in metrics.items() if k != "step")
    pids = ", ".join(f"{k} {p.get('name') or p['pid']}" for k in ("agent", "training")
                     if (p := doc.get(k)) and p.get("alive"))
    return [*head, _age(doc.get("time_in_state_s")), _progress(doc), latest or "-", _best(doc),
            _age(doc.get("heartbeat_age_s")), f"${doc.get('cost_usd') or 0:.2f}", pids or "-",
            _note(doc)]


# Per column: its name, and whether it is kept whole (never wraps); the others fold.
WIDE = [("experiment", True), ("state", True), ("iter", True), ("in state", True),
        ("progress", False), ("latest", False), ("best", True), ("beat", True), ("cost", True),
        ("pids", False), ("note", False)]
NARROW = [("experiment", True), ("state", True), ("iter", True), ("progress", True),
          ("best", True), ("note", False)]
NARROW_BELOW = 120  # a terminal narrower than this gets the six-column table
NOTE_MIN = 24  # narrower than this, the notes go below the table, one line each


def _rows(dirs: list[Path], narrow: bool) -> list[list[Any]]:
    from rich.text import Text

    rows = []
    width = len(NARROW if narrow else WIDE)
    for d in expand(dirs):
        try:
            rows.append(_row(snapshot(d), narrow))
        except InputError as exc:
            rows.append([Text(d.name), Text("ERROR", style="bold red"), *["-"] * (width - 3),
                         Text(str(exc), style="red")])
    return rows


def _plain(cell: Any) -> str:
    return str(getattr(cell, "plain", cell))


def _note_room(rows: list[list[Any]], width: int) -> int:
    """What the narrow table leaves its note column (two spaces between columns)."""
    used = sum(max([len(name)] + [len(_plain(r[i])) for r in rows]) + 2
               for i, (name, _) in enumerate(NARROW[:-1]))
    return width - used


def _table(rows: list[list[Any]], columns: list[tuple[str, bool]], narrow: bool) -> Any:
    from rich import box
    from rich.table import Table

    grid = Table(title=f"mlsm  {time.strftime('%H:%M:%S')}", expand=True,
                 box=box.SIMPLE_HEAD if narrow else box.HEAVY_HEAD, show_edge=not narrow,
                 pad_edge=not narrow, collapse_padding=narrow)
    for name, whole in columns:
        grid.add_column(name, no_wrap=whole, overflow="fold",
                        ratio=1 if narrow and name == "note" else None)
    for row in rows:
        grid.add_row(*row[:len(columns)])
    return grid


def layout(dirs: list[Path], width: int) -> Any:
    """The table for `width` columns: all eleven when wide; six (or five + notes) when narrow."""
    from rich.console import Group
    from rich.text import Text

    narrow = width < NARROW_BELOW
    rows = _rows(dirs, narrow)
    if not narrow:
        return _table(rows, WIDE, narrow)
    if _note_room(rows, width) >= NOTE_MIN:
        return _table(rows, NARROW, narrow)
    notes = [Text.assemble(f"{_plain(r[0])}: ", r[-1]) for r in rows if _plain(r[-1])]
    return Group(_table(rows, NARROW[:-1], narrow), *notes)


class Board:
    """The live view, laid out for the width it is drawn at (see `layout`)."""

    def __init__(self, dirs: list[Path]) -> None:
        self.dirs = dirs

    def __rich_console__(self, console: Any, options: Any) -> Any:
        yield layout(self.dirs, options.max_width)


def render(dirs: list[Path]) -> Any:
    """What `--follow` draws: a table that fits the console it is printed on."""
    return Board(dirs)


def follow(dirs: list[Path]) -> ExitCode:
    """Refresh until Ctrl-C; never writes anything."""
    from rich.live import Live

    # The board reads the files each time it is drawn, at the terminal's current width.
    with Live(render(dirs), refresh_per_second=1 / REFRESH_S, screen=False):
        try:
            while True:
                time.sleep(REFRESH_S)  # a view that refreshes on a clock, by design
        except KeyboardInterrupt:
            return ExitCode.OK
