"""The transition table, driven by synthetic events: no threads, no files."""

from __future__ import annotations

from typing import Any

import pytest
from transitions import Machine, MachineError

from mlsm.machine.core.states import RESUMABLE, TRANSITIONS, WORKING, State, mermaid


class Model:
    state: str

    def __init__(self) -> None:
        self.previous: str | None = None

    def __getattr__(self, name: str) -> Any:
        if name.startswith("left_"):
            return lambda *_: self.previous == name[5:]
        raise AttributeError(name)


def machine(initial: State = State.IDLE) -> Model:
    model = Model()
    Machine(model=model, states=[s.value for s in State], transitions=TRANSITIONS,
            initial=initial.value, auto_transitions=False)
    return model


def fire(model: Model, *triggers: str) -> str:
    for trigger in triggers:
        if trigger == "stop":
            model.previous = model.state
        getattr(model, trigger)()
    return model.state


def test_happy_path_with_iterations() -> None:
    m = machine()
    assert fire(m, "start", "planned", "coded", "trained") == "analyzing"
    assert fire(m, "iterate", "coded", "trained", "conclude", "reported") == "done"


@pytest.mark.parametrize("state", RESUMABLE)
def test_stop_and_resume_return_to_the_state_left(state: State) -> None:
    m = machine(state)
    assert fire(m, "stop") == "stopped"
    assert fire(m, "resume") == state.value


@pytest.mark.parametrize("state", [*RESUMABLE, State.STOPPED, State.FAILED])
def test_report_ends_the_run_from_any_state(state: State) -> None:
    m = machine(state)
    assert fire(m, "reported") == "done"


@pytest.mark.parametrize("state", WORKING)
def test_fail_from_working_states(state: State) -> None:
    assert fire(machine(state), "fail") == "failed"


@pytest.mark.parametrize("state,trigger", [
    (State.IDLE, "trained"), (State.PLANNING, "coded"), (State.TRAINING, "iterate"),
    (State.DONE, "start"), (State.DONE, "stop"), (State.FAILED, "resume"),
    (State.TRAINING, "conclude"), (State.IDLE, "fail"), (State.STOPPED, "stop"),
])
def test_forbidden_transitions_raise(state: State, trigger: str) -> None:
    with pytest.raises(MachineError):
        fire(machine(state), trigger)


def test_budget_concludes_from_agent_states() -> None:
    for state in (State.PLANNING, State.CODING, State.ANALYZING):
        assert fire(machine(state), "conclude") == "reporting"


def test_mermaid_names_every_state_and_trigger() -> None:
    text = mermaid()
    assert text.splitlines()[3] == "stateDiagram-v2"
    for s in State:
        assert f'state "{s.value}"' in text
    for row in TRANSITIONS:
        assert f": {row['trigger']}" in text
