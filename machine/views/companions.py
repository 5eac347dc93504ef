"""What the daemon runs beside its engines, from the settings: the web UI, exporters, notifier.

Each companion only reads the experiments' files (and writes the ones a person would), on
its own threads; the command line builds them and the daemon starts and stops them.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Protocol

from mlsm.machine.core.config import Config, resolve
from mlsm.machine.core.errors import ConfigError
from mlsm.machine.views.catalog import Catalog


class Companion(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...


def build(dirs: Sequence[Path], flags: Mapping[str, Any], discover: bool,
          console: IO[str] | None = sys.stderr) -> list[Companion]:
    """The companions the settings ask for (none: an empty list, and nothing imported)."""
    paths = tuple(d.resolve() for d in dirs)
    catalog = Catalog(roots=paths) if discover else Catalog(dirs=paths)
    configs = [resolve(None, flags)] if discover else [resolve(d, flags) for d in paths]
    main = configs[0]
    out: list[Companion] = []
    if main.notify:
        from mlsm.machine.views.notify import Notifier

        out.append(Notifier(catalog, main.notify, console))
    if any(c.mlflow or c.wandb or c.tensorboard for c in configs):  # --discover: flag or MLSM_*
        from mlsm.machine.views.export import Follower

        out.append(Follower(catalog, flags, console))
    if main.ui:
        out.append(ui_server(catalog, main, console))
    return out


def ui_server(catalog: Catalog, config: Config, console: IO[str] | None) -> Companion:
    """The UI server with its port bound (a busy port is an error now)."""
    try:
        from mlsm.machine.views.ui.server import UiServer
    except ImportError:
        raise ConfigError("--ui needs the web UI's packages: pip install 'mlsm[ui]' "
                          "(starlette and uvicorn)") from None
    server = UiServer(catalog, config.ui_host, config.ui, config.ui_token, console)
    server.bind()
    return server
