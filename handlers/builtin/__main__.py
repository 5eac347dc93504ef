"""Entry point of the builtin agent: `python -m mlsm.handlers.builtin` runs the MLSM_ROLE step."""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlsm.handlers.builtin.context import Step


def _roles() -> dict[str, Callable[[Step], None]]:
    """Each role's function, imported only when asked for (plan never loads Optuna or torch)."""
    from mlsm.handlers.builtin import analyze, code, plan, report

    return {"plan": plan.run_plan, "code": code.run_code, "analyze": analyze.run_analyze,
            "report": report.run_report}


def main() -> int:
    """Run one step; on a problem print one line to stderr and return non-zero."""
    environ = dict(os.environ)  # mlsm.hooks stays off: MLSM_ROLE marks an agent step
    from mlsm.handlers.builtin.context import step_from_env
    from mlsm.machine.core.errors import MlsmError

    role = environ.get("MLSM_ROLE", "?")
    try:
        step = step_from_env(environ)
        _roles()[step.role](step)
    except MlsmError as exc:
        print(f"mlsm builtin agent: {exc}", file=sys.stderr)
        return int(exc.exit_code)
    except Exception as exc:  # a bug: the traceback goes to the transcript, one line to stderr
        traceback.print_exc(file=sys.stdout)
        print(f"mlsm builtin agent: the {role} step failed unexpectedly "
              f"({type(exc).__name__}: {exc})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
