"""`mlsm status --follow`: a live terminal view that refreshes from the files, read-only."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from mlsm.machine.core.errors import ExitCode, InputError
from mlsm.machine.views.status import snapshot

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


def _row(doc: dict[str, Any]) -> list[Any]:
    from rich.text import Text

    state = str(doc["state"])
    best = doc.get("best")
    metrics = doc.get("latest_metrics") or {}
    latest = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                       for k, v in metrics.items() if k != "step")
    pids = ", ".join(f"{k} {p['pid']}" for k in ("agent", "training")
                     if (p := doc.get(k)) and p.get("alive"))
    note = doc.get("error") or doc.get("stop_reason") or ""
    return [
        Text(Path(doc["dir"]).name), Text(state.upper(), style=STATE_STYLE.get(state, "")),
        f"{doc['iteration']}/{doc['max_iterations']}", _age(doc.get("time_in_state_s")),
        _progress(doc), latest or "-",
        f"{best['metric']}={best['value']:.4g} @{best['iteration']}" if best else "-",
        _age(doc.get("heartbeat_age_s")), f"${doc.get('cost_usd') or 0:.2f}", pids or "-",
        Text(note, style="red" if doc.get("error") else "dim"),
    ]


def render(dirs: list[Path]) -> Any:
    """One table with a row per experiment (a bad directory gets a row saying why)."""
    from rich.table import Table

    table = Table(title=f"mlsm  {time.strftime('%H:%M:%S')}", expand=True)
    for name in ("experiment", "state", "iter", "in state", "progress", "latest", "best",
                 "beat", "cost", "pids", "note"):
        table.add_column(name, overflow="fold")
    for d in dirs:
        try:
            table.add_row(*_row(snapshot(d)))
        except InputError as exc:
            table.add_row(d.name, "ERROR", *["-"] * 8, str(exc))
    return table


def follow(dirs: list[Path]) -> ExitCode:
    """Refresh until Ctrl-C; never writes anything."""
    from rich.live import Live

    with Live(render(dirs), refresh_per_second=2, screen=False) as live:
        try:
            while True:
                time.sleep(REFRESH_S)  # a view that refreshes on a clock, by design
                live.update(render(dirs))
        except KeyboardInterrupt:
            return ExitCode.OK
