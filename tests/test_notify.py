"""`--notify URL`: real POSTs to a tiny local server on DONE, FAILED, a stale-heartbeat kill and a
budget stop, with retries (the first POST gets a 500) and a timeout that never holds an engine."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import Experiment, wait_for

from mlsm.machine.core.errors import ConfigError
from mlsm.machine.views.notify import check_url, classify, is_budget, post

STALE_TRAIN = '''\
import threading
from mlsm import hooks
hooks.heartbeat(0)
threading.Event().wait()  # hung until killed (a SIGUSR1 stack dump does not end the wait)
'''


class Receiver:
    """An HTTP server on 127.0.0.1 that records JSON POSTs; `fail_first` answers 500 first,
    `hang` never answers."""

    def __init__(self, fail_first: int = 0, hang: bool = False) -> None:
        self.posts: list[dict[str, Any]] = []
        self.attempts = 0
        self.fail_first = fail_first
        self.hang = hang
        self.release = threading.Event()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                receiver.attempts += 1
                if receiver.hang:
                    receiver.release.wait(30)
                    return
                if receiver.attempts <= receiver.fail_first:
                    self.send_response(500)
                    self.end_headers()
                    return
                receiver.posts.append(json.loads(body))
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *_: Any) -> None:
                return

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook/secret-part"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def kinds(self) -> list[str]:
        return [p["kind"] for p in self.posts]

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(fail_first=1)
    yield r
    r.close()


def test_done_and_budget_stop_are_posted_after_a_500(exp: Experiment,
                                                     receiver: Receiver) -> None:
    exp.write("IDEA.md", "x")
    run = exp.mlsm("run", "--max-iterations", "2", "--notify", receiver.url)
    assert run.wait(90) == 0, run.output()
    assert receiver.kinds() == ["budget_stop", "done"], receiver.posts
    assert receiver.attempts == 3  # the first POST failed with 500 and was sent again
    budget, done = receiver.posts
    assert budget["text"].startswith("⏱ budget spent: exp") and "--max-iterations 2" in \
        budget["text"]
    assert done["text"].startswith("✅ DONE: exp") and "best loss=0.333333 @ 2" in done["text"]
    assert done["state"] == "done" and done["best"]["iteration"] == 2
    assert done["dir"] == str(exp.path.resolve()) and done["experiment"] == "exp"
    assert "secret-part" not in run.output()  # the webhook URL is not printed


def test_failed_run_is_posted(exp: Experiment, receiver: Receiver) -> None:
    exp.write("IDEA.md", "x")
    run = exp.mlsm("run", "--agent-retries", "0", "--notify", receiver.url,
                   FAKE_FAIL_ROLE="plan")
    assert run.wait(60) == 1, run.output()
    assert receiver.kinds() == ["failed"]
    assert receiver.posts[0]["text"].startswith("❌ FAILED: exp")
    assert "plan step failed" in receiver.posts[0]["reason"]


def test_stale_heartbeat_kill_is_posted(exp: Experiment, receiver: Receiver) -> None:
    exp.write("IDEA.md", "x")
    run = exp.mlsm("run", "--max-iterations", "1", "--heartbeat-timeout", "1",
                   "--notify", receiver.url, FAKE_TRAIN_BODY=STALE_TRAIN)
    assert run.wait(90) in (0, 7), run.output()
    assert receiver.kinds()[0] == "stale_heartbeat", receiver.posts
    assert "done" in receiver.kinds()
    assert receiver.posts[0]["iteration"] == 1


def test_a_hanging_receiver_never_holds_the_engine(exp: Experiment) -> None:
    hanging = Receiver(hang=True)
    try:
        exp.write("IDEA.md", "x")
        started = time.monotonic()
        daemon = exp.mlsm("watch", "--max-iterations", "2", "--notify", hanging.url)
        exp.wait_state("done", timeout=60)
        assert time.monotonic() - started < 30  # the run went on while the POST hung
        wait_for(lambda: hanging.attempts >= 1, 10, "a POST attempt")
        daemon.signal(15)
        assert daemon.wait(60) == 130
    finally:
        hanging.close()


def test_post_retries_then_gives_up_and_keeps_4xx_final() -> None:
    r = Receiver(fail_first=10)
    try:
        assert post(r.url, {"text": "x"}, timeout=2, retries=3, backoff=0.01) == "HTTP 500"
        assert r.attempts == 3
    finally:
        r.close()
    assert post("http://127.0.0.1:9/", {"text": "x"}, timeout=1, retries=2, backoff=0.01)


def test_classify_and_budget_sentences() -> None:
    assert classify({"event": "run_done"}) == "done"
    assert classify({"event": "run_failed"}) == "failed"
    assert classify({"event": "training_killed", "reason": "stale_heartbeat"}) == \
        "stale_heartbeat"
    assert classify({"event": "training_killed", "reason": "stopped"}) is None
    assert classify({"event": "transition", "trigger": "conclude"}) == "budget_stop?"
    assert classify({"event": "transition", "trigger": "iterate"}) is None
    assert is_budget("reached --max-iterations 3")
    assert is_budget("no improvement of the best loss for 2 iterations (--patience 2)")
    assert not is_budget("the agent decided to finish: good enough")
    with pytest.raises(ConfigError):
        check_url("file:///etc/passwd")
    assert check_url("https://hooks.slack.com/services/T/B/X")


def test_bad_notify_url_is_a_one_line_error(tmp_path: Path, exp: Experiment) -> None:
    exp.write("IDEA.md", "x")
    run = exp.mlsm("run", "--notify", "ftp://example.org/x")
    assert run.wait(30) == 3
    assert "mlsm: error: --notify needs an http:// or https:// URL" in run.output()
