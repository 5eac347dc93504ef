"""The states and the transition table: the only place the machine's shape is written down."""

from __future__ import annotations

import enum
from typing import Any


class State(enum.StrEnum):
    """Where an experiment is; the value is what status.json stores."""

    IDLE = "idle"
    PLANNING = "planning"
    CODING = "coding"
    TRAINING = "training"
    ANALYZING = "analyzing"
    REPORTING = "reporting"
    DONE = "done"
    STOPPED = "stopped"
    FAILED = "failed"


WORKING: tuple[State, ...] = (
    State.PLANNING, State.CODING, State.TRAINING, State.ANALYZING, State.REPORTING,
)
"""States that own a running process (an agent or a training)."""

TERMINAL: tuple[State, ...] = (State.DONE, State.FAILED)
RESUMABLE: tuple[State, ...] = (State.IDLE, *WORKING)
"""States STOP can interrupt and that removing STOP re-enters."""


def _resume_rows() -> list[dict[str, Any]]:
    return [
        {"trigger": "resume", "source": State.STOPPED, "dest": s, "conditions": f"left_{s.value}"}
        for s in RESUMABLE
    ]


def _retry_rows() -> list[dict[str, Any]]:
    return [
        {"trigger": "retry", "source": State.FAILED, "dest": s,
         "conditions": f"failed_in_{s.value}"}
        for s in WORKING
    ]


def _plain(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """State names as plain strings: transitions would otherwise name Enum states by `.name`."""
    def conv(v: Any) -> Any:
        return [str(x) for x in v] if isinstance(v, list) else str(v) if isinstance(v, State) else v
    return [{k: conv(v) for k, v in row.items()} for row in rows]


TRANSITIONS: list[dict[str, Any]] = _plain([
    {"trigger": "start", "source": State.IDLE, "dest": State.PLANNING},
    {"trigger": "planned", "source": State.PLANNING, "dest": State.CODING},
    {"trigger": "coded", "source": State.CODING, "dest": State.TRAINING},
    {"trigger": "trained", "source": State.TRAINING, "dest": State.ANALYZING},
    {"trigger": "iterate", "source": State.ANALYZING, "dest": State.CODING},
    {"trigger": "conclude", "source": [State.PLANNING, State.CODING, State.ANALYZING],
     "dest": State.REPORTING},
    {"trigger": "reported", "source": [*RESUMABLE, State.STOPPED, State.FAILED],
     "dest": State.DONE},
    {"trigger": "stop", "source": list(RESUMABLE), "dest": State.STOPPED},
    *_resume_rows(),
    {"trigger": "fail", "source": list(WORKING), "dest": State.FAILED},
    *_retry_rows(),
])
"""Trigger → source → dest. `resume` re-enters the state recorded in `previous_state`;
`retry` (RETRY file, `mlsm retry`) re-enters the one recorded in `failed_state`."""


def mermaid() -> str:
    """The state diagram as Mermaid text, drawn by transitions' own mermaid engine."""
    from transitions.extensions.diagrams import GraphMachine

    class _Model:
        def __getattr__(self, name: str) -> Any:
            if name.startswith(("left_", "failed_in_")):
                return lambda *a, **k: True
            raise AttributeError(name)

    model = _Model()
    GraphMachine(
        model=model, states=[s.value for s in State], transitions=TRANSITIONS,
        initial=State.IDLE.value, auto_transitions=False, graph_engine="mermaid",
        title="mlsm", show_conditions=False,
    )
    text: str = model.get_graph().draw(None)  # get_graph is added by GraphMachine
    return text
