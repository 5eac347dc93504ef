"""A scripted fake of the streaming Anthropic Messages API that drives the real Claude Code CLI."""

from __future__ import annotations

import dataclasses
import json
import re
import threading
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

Block = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Reply:
    """One assistant message: content blocks, a stop reason and the usage to report."""

    blocks: tuple[Block, ...]
    stop_reason: str = "end_turn"
    input_tokens: int = 1000
    output_tokens: int = 200


@dataclasses.dataclass(frozen=True)
class ApiError:
    """An HTTP error the API can answer with, in the API's own error JSON."""

    status: int
    type: str
    message: str


Answer = Reply | ApiError
Script = Callable[[dict[str, Any]], Answer]


def text(body: str) -> Block:
    """A text block."""
    return {"type": "text", "text": body}


def tool(name: str, **tool_input: Any) -> Block:
    """A tool_use block calling `name` with `tool_input`."""
    return {"type": "tool_use", "name": name, "input": tool_input}


def say(body: str) -> Reply:
    """A final text answer that ends the turn."""
    return Reply((text(body),))


def call(name: str, **tool_input: Any) -> Reply:
    """An answer that calls one tool and waits for its result."""
    return Reply((text(f"Calling {name}."), tool(name, **tool_input)), stop_reason="tool_use")


def turns(*answers: Answer) -> Script:
    """A stateless script: the answer is chosen by the number of assistant messages so far."""

    def script(request: dict[str, Any]) -> Answer:
        done = sum(1 for m in request.get("messages", []) if m.get("role") == "assistant")
        return answers[done] if done < len(answers) else say("Done.")

    return script


def is_main(request: dict[str, Any]) -> bool:
    """The main agent conversation offers tools; side requests (titles, quota) offer none."""
    names = {t.get("name") for t in request.get("tools") or []}
    return bool(names & {"Write", "Read", "Bash", "StructuredOutput"})


def first_user_text(request: dict[str, Any]) -> str:
    """The text of every user message, joined (the prompt lives in the first one)."""
    parts: list[str] = []
    for message in request.get("messages", []):
        if message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content)
            continue
        parts.extend(b.get("text", "") for b in content or [] if b.get("type") == "text")
    return "\n".join(parts)


def prompt_field(request: dict[str, Any], name: str) -> str | None:
    """A `name: value` header line that mlsm's prompt templates carry (role, product)."""
    found = re.search(rf"^{name}: (\S+)\s*$", first_user_text(request), re.MULTILINE)
    return found.group(1) if found else None


def tool_results(request: dict[str, Any]) -> list[str]:
    """The text of every tool_result block sent back so far."""
    out: list[str] = []
    for message in request.get("messages", []):
        for block in message.get("content") or []:
            if isinstance(block, dict) and block.get("type") == "tool_result":
                content = block.get("content")
                out.append(content if isinstance(content, str) else json.dumps(content))
    return out


TRAIN_PY = """\
\"\"\"A tiny training script written by the fake agent.\"\"\"
try:
    from mlsm import hooks
except ImportError:  # the fake's script must also run without mlsm
    hooks = None

loss = 1.0
for i in range(5):
    loss *= 0.5
    if hooks is not None:
        hooks.log(step=i, total_steps=5, loss=loss)
if hooks is not None:
    hooks.result(val_loss=loss, goal="minimize")
print(f"RESULT val_loss={loss:.4f}")
"""


def research(finish_at: int = 99) -> Script:
    """A whole experiment: each role writes its product with the CLI's own tools.

    The role, iteration and product come from the header lines of mlsm's prompt templates;
    analyze answers `finish` from iteration `finish_at` on, else `continue`.
    """

    def script(request: dict[str, Any]) -> Answer:
        role = prompt_field(request, "role")
        product = prompt_field(request, "product") or ""
        iteration = int(prompt_field(request, "iteration") or 0)
        steps = _role_steps(role, product, iteration, finish_at)
        return turns(*steps)(request)

    return script


def _role_steps(role: str | None, product: str, iteration: int, finish_at: int) -> list[Answer]:
    if role == "plan":
        plan = "# Plan\n\n## Goal\nHalve the loss.\n\n## Metric\nval_loss, minimize.\n"
        return [call("Write", file_path=product, content=plan), say("Planned.")]
    if role == "code":
        return [call("Write", file_path=product, content=TRAIN_PY),
                call("Bash", command=f"python -m py_compile {product}", description="check"),
                say("Wrote train.py.")]
    if role == "analyze":
        analysis = str(Path(product).with_name("analysis.md"))
        decision = "finish" if iteration >= finish_at else "continue"
        return [call("Write", file_path=analysis, content=f"Iteration {iteration}: fine.\n"),
                call("StructuredOutput", decision=decision, reason=f"iteration {iteration} ran",
                     metric=0.03125)]
    if role == "report":
        report = "".join(f"## {s}\n\nText.\n\n" for s in (
            "Summary", "Approach", "Results", "Challenges", "Recommendations"))
        return [call("Write", file_path=product, content=report), say("Reported.")]
    return [say(f"No mlsm role in this prompt ({role!r}).")]


class FakeAnthropic:
    """A ThreadingHTTPServer on 127.0.0.1 that answers /v1/messages from a script."""

    def __init__(self, script: Script | None = None) -> None:
        self.script: Script = script or turns()
        self.requests: list[dict[str, Any]] = []
        self.paths: list[str] = []
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def main_requests(self) -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.requests if is_main(r)]

    def start(self) -> FakeAnthropic:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)

    def answer(self, request: dict[str, Any]) -> Answer:
        with self.lock:
            self.requests.append(request)
        if not is_main(request):
            return say("ok")
        return self.script(request)


def _handler_for(fake: FakeAnthropic) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            return None  # keep pytest output quiet

        def parse_request(self) -> bool:
            ok = super().parse_request()
            if ok:
                with fake.lock:
                    fake.paths.append(self.path)
            return ok

        def do_HEAD(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self) -> None:
            self._json(404, {"type": "error", "error": {"type": "not_found_error",
                                                        "message": f"no route {self.path}"}})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b"{}"
            if not self.path.startswith("/v1/messages") or "count_tokens" in self.path:
                self._json(200, {"input_tokens": 10})
                return
            request: dict[str, Any] = json.loads(body or b"{}")
            answer = fake.answer(request)
            if isinstance(answer, ApiError):
                self._json(answer.status, {"type": "error", "error": {
                    "type": answer.type, "message": answer.message}})
            elif request.get("stream"):
                self._stream(request, answer)
            else:
                self._json(200, _message(request, answer, finished=True))

        def _json(self, status: int, obj: dict[str, Any]) -> None:
            data = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("request-id", "req_fake")
            self.end_headers()
            self.wfile.write(data)

        def _stream(self, request: dict[str, Any], reply: Reply) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            try:
                for event in _events(request, reply):
                    data = f"event: {event['type']}\ndata: {json.dumps(event)}\n\n"
                    self.wfile.write(data.encode())
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                return  # the CLI gave up on this request (killed, timed out)

    return Handler


def _message(request: dict[str, Any], reply: Reply, finished: bool) -> dict[str, Any]:
    # The CLI merges assistant events that share a message id: each reply needs its own.
    message_id = f"msg_{uuid.uuid4().hex[:24]}"
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": request.get("model", "claude-sonnet-4-5"),
        "content": [_with_id(b, i) for i, b in enumerate(reply.blocks)] if finished else [],
        "stop_reason": reply.stop_reason if finished else None,
        "stop_sequence": None,
        "usage": {
            "input_tokens": reply.input_tokens,
            "output_tokens": reply.output_tokens if finished else 1,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        },
    }


def _with_id(block: Block, index: int) -> Block:
    if block["type"] != "tool_use":
        return block
    return {"id": f"toolu_{uuid.uuid4().hex[:24]}", **block}


def _events(request: dict[str, Any], reply: Reply) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = [
        {"type": "message_start", "message": _message(request, reply, finished=False)}]
    for index, raw in enumerate(reply.blocks):
        block = _with_id(raw, index)
        if block["type"] == "text":
            start: Block = {"type": "text", "text": ""}
            delta: Block = {"type": "text_delta", "text": block["text"]}
        else:
            start = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
            delta = {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}
        events += [
            {"type": "content_block_start", "index": index, "content_block": start},
            {"type": "content_block_delta", "index": index, "delta": delta},
            {"type": "content_block_stop", "index": index},
        ]
    events += [
        {"type": "message_delta", "delta": {"stop_reason": reply.stop_reason,
                                            "stop_sequence": None},
         "usage": {"output_tokens": reply.output_tokens}},
        {"type": "message_stop"},
    ]
    return events
