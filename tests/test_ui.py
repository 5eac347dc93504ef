"""The web UI: pure data functions, the security rules over HTTP, and a real browser (Chromium
through Playwright) against a real daemon running three live experiments."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from helpers import AGENT_CMD, Mlsm, gone, read_status, wait_for

from mlsm.machine.views.catalog import Catalog, name_problem
from mlsm.machine.views.files import inside, metric_rows
from mlsm.machine.views.ui import data, markdown
from mlsm.machine.views.ui.guard import Security, is_loopback

CHROMIUM = os.environ.get("MLSM_CHROMIUM", "/usr/bin/chromium")
SHOTS = Path("/tmp")
# A training that runs until stopped: a child process (so there is a tree to kill) and a
# metric every 20 ms.
LIVE_TRAIN = '''\
import math, subprocess, sys, time
from mlsm import hooks
subprocess.Popen([sys.executable, "-c", "import signal; signal.pause()"])
for step in range(100000):
    hooks.log(step=step, total_steps=100000, loss=2.0 * math.exp(-step / 80) + 0.1,
              acc=1 - math.exp(-step / 60))
    time.sleep(0.02)
'''


# ----- pure functions ------------------------------------------------------------------------
def test_downsample_keeps_ends_and_spikes() -> None:
    xs = list(range(100_000))
    ys = [0.0] * 100_000
    ys[54_321] = 9.0
    dx, dy = data.downsample(xs, ys, 1500)
    assert len(dx) <= 1501 and dx[0] == 0 and dx[-1] == 99_999
    assert 9.0 in dy and dx == sorted(dx)
    assert data.downsample([1, 2], [3, 4], 1500) == ([1, 2], [3, 4])


def test_metric_rows_skip_torn_and_non_finite_lines() -> None:
    text = (b'{"step": 1, "t": 5.0, "loss": 0.5}\n{"step": 2, "loss": "nan", "acc": 0.1}\n'
            b'not json\n{"loss": 0.25}\n')
    assert metric_rows(text) == [(1, 5.0, {"loss": 0.5}), (2, None, {"acc": 0.1}),
                                 (3, None, {"loss": 0.25})]


def test_timeline_from_transitions() -> None:
    lines = b"\n".join(json.dumps(e).encode() for e in [
        {"event": "transition", "src": "idle", "dest": "planning", "trigger": "start",
         "iteration": 0, "timestamp": "2026-01-01T00:00:00.000Z"},
        {"event": "agent_started", "timestamp": "2026-01-01T00:00:01.000Z"},
        {"event": "transition", "src": "planning", "dest": "done", "trigger": "reported",
         "iteration": 0, "timestamp": "2026-01-01T00:00:10.000Z"}])
    segs = data.timeline(data.transitions(lines), now=0)
    assert [s["state"] for s in segs] == ["planning", "done"]
    assert segs[0]["end"] - segs[0]["start"] == pytest.approx(10)
    assert segs[1]["end"] == segs[1]["start"]


def test_markdown_escapes_everything_and_serves_images_from_inside() -> None:
    html = markdown.render(
        "# T <script>alert(1)</script>\n\n![p](plot.png) [x](javascript:alert(1)) "
        "[ok](https://example.org) <img src=x onerror=alert(1)>\n\n| a |\n|---|\n| **b** |\n",
        lambda target: f"/f?path={target}" if target == "plot.png" else None)
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "<img src=x" not in html and "&lt;img src=x onerror" in html
    assert '<img src="/f?path=plot.png"' in html
    assert "javascript:" not in html.replace("&lt;", "")
    assert 'href="https://example.org"' in html and "<strong>b</strong>" in html


def test_files_stay_inside_the_experiment(tmp_path: Path) -> None:
    d = tmp_path / "e"
    (d / "logs" / "iter_001").mkdir(parents=True)
    (d / "logs" / "iter_001" / "stdout.log").write_text("hi")
    (d / ".mlsm").mkdir()
    (d / ".mlsm" / "config.json").write_text("{}")
    (tmp_path / "secret.txt").write_text("secret")
    (d / "leak.txt").symlink_to(tmp_path / "secret.txt")
    (d / "linkdir").symlink_to(tmp_path)
    assert inside(d, "logs/iter_001/stdout.log") == d / "logs" / "iter_001" / "stdout.log"
    for bad in ("../secret.txt", "/etc/passwd", "logs/../../secret.txt", "leak.txt",
                "linkdir/secret.txt", ".mlsm/config.json", "logs", "", "a\x00b",
                "logs/iter_001/../../../secret.txt"):
        assert inside(d, bad) is None, bad


def test_names_of_new_experiments() -> None:
    assert name_problem("charlm-small") is None
    assert name_problem("run 2.1_b") is None
    for bad in ("", ".", "..", "../x", "a/b", ".hidden", "a..b", "x\x00", "a\\b", "-x"):
        assert name_problem(bad), bad


def test_catalog_tells_experiments_from_roots(tmp_path: Path) -> None:
    (tmp_path / "root" / "a").mkdir(parents=True)
    (tmp_path / "root" / "a" / "IDEA.md").write_text("x")
    (tmp_path / "root" / "notyet").mkdir()
    (tmp_path / "root" / ".hidden").mkdir()
    (tmp_path / "root" / ".hidden" / "IDEA.md").write_text("x")
    (tmp_path / "other" / "a").mkdir(parents=True)
    (tmp_path / "other" / "a" / "status.json").write_text("{}")
    cat = Catalog.of([tmp_path / "root", tmp_path / "other" / "a"])
    assert cat.roots == ((tmp_path / "root").resolve(),)
    keyed = cat.keyed()
    assert len(keyed) == 2 and all(k.startswith("a-") for k in keyed)


def test_security_rules() -> None:
    local = Security.make("127.0.0.1", 8765, None)
    assert local.token is None and local.host_ok("127.0.0.1:8765")
    assert local.host_ok("localhost:8765") and not local.host_ok("evil.example:8765")
    wide = Security.make("0.0.0.0", 8765, None)
    assert wide.token and len(wide.token) > 20  # off loopback a token is always required
    assert not wide.token_ok({}, {}, None) and wide.token_ok({}, {}, wide.token)
    assert wide.token_ok({"authorization": f"Bearer {wide.token}"}, {}, None)
    assert wide.token_ok({}, {wide.cookie: wide.cookie_value}, None)
    assert not wide.token_ok({}, {wide.cookie: wide.token}, None)  # the cookie is a digest
    ok = {"host": "127.0.0.1:8765", "origin": "http://127.0.0.1:8765",
          "x-csrf-token": local.csrf}
    assert local.action_ok(ok) is None
    assert local.action_ok({**ok, "origin": "http://evil.example"})
    assert local.action_ok({**ok, "x-csrf-token": "nope"})
    assert local.action_ok({**ok, "sec-fetch-site": "cross-site"})
    assert is_loopback("::1") and is_loopback("127.0.0.2") and not is_loopback("10.0.0.1")


def test_board_sees_a_change_through_file_events(tmp_path: Path) -> None:
    from mlsm.machine.views.ui.state import Board

    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "IDEA.md").write_text("x")
    board = Board(Catalog.of([tmp_path]))
    assert board.start()  # Linux: inotify
    try:
        changed, _ = board.poll()
        assert sorted(changed) == ["a", "b"] and board.rows["a"]["state"] == "idle"
        assert board.poll() == ([], [])  # nothing changed: nothing read again
        assert board.busy  # no daemon holds them yet: looked at every tick for one coming
        (tmp_path / "a" / "STOP").touch()
        assert board.watcher.read()  # the event is there at once
        assert board.poll()[0] == ["a"] and board.rows["a"]["stop_file"] is True
        (tmp_path / "c").mkdir()
        assert board.poll() == ([], [])  # a folder without IDEA.md is no experiment yet
        (tmp_path / "c" / "IDEA.md").write_text("x")
        assert board.watcher.read()  # the would-be experiment is watched too
        assert board.poll()[0] == ["c"]
        assert json.loads(board.full_json())[2]["key"] == "c"
    finally:
        board.stop()


def test_curve_updates_send_new_points_then_thin_when_long(tmp_path: Path) -> None:
    from mlsm.machine.views.ui.state import CURVE_BUDGET, Sent, Track, points_update

    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(f'{{"step": {i}, "loss": {1 / (i + 1)}}}\n' for i in range(10)))
    track, sent = Track(), Sent()
    track.update(path)
    first = points_update(track, sent)
    assert first is not None and first["reset"] and len(first["series"]["loss"][0]) == 10
    assert points_update(track, sent) is None
    with path.open("a") as fh:
        fh.write('{"step": 10, "loss": 0.05}\n{"step": 11, "lo')  # a torn last line waits
    track.update(path)
    more = points_update(track, sent)
    assert more is not None and not more["reset"] and more["series"]["loss"][0] == [10]
    with path.open("a") as fh:
        fh.write("".join(f'ss": 1}}\n{{"step": {i}, "loss": 0.1}}\n'
                         if i == 12 else f'{{"step": {i}, "loss": 0.1}}\n'
                         for i in range(12, 12 + 2 * CURVE_BUDGET)))
    track.update(path)
    big = points_update(track, sent)
    assert big is not None and big["reset"]  # too much at once: the thinned whole instead
    assert len(big["series"]["loss"][0]) <= CURVE_BUDGET + 1


# ----- a real daemon with the UI ---------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLSM_", "FAKE_"))}
    return {**env, **extra}


class Site:
    """A daemon over a root of experiments, serving the UI; plain HTTP helpers."""

    def __init__(self, root: Path, port: int, daemon: Mlsm) -> None:
        self.root, self.port, self.daemon = root, port, daemon
        self.url = f"http://127.0.0.1:{port}"

    def request(self, method: str, path: str, body: Any = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            payload = None if body is None else json.dumps(body).encode()
            conn.request(method, path, payload, headers or {})
            res = conn.getresponse()
            return res.status, {k.lower(): v for k, v in res.getheaders()}, res.read()
        finally:
            conn.close()

    def csrf(self, headers: dict[str, str] | None = None) -> str:
        _, _, page = self.request("GET", "/", headers=headers)
        found = re.search(rb'name="mlsm-csrf" content="([^"]+)"', page)
        assert found, page[:300]
        return found.group(1).decode()

    def state(self, name: str) -> str | None:
        state: str | None = read_status(self.root / name).get("state")
        return state


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    pytest.importorskip("starlette")
    pytest.importorskip("uvicorn")
    root = tmp_path / "root"
    for name in ("alpha", "beta"):
        (root / name).mkdir(parents=True)
        (root / name / "IDEA.md").write_text(f"Make the loss of {name} small.\n")
    port = free_port()
    daemon = Mlsm(["watch", "--discover", str(root), "--agent", "command", "--agent-cmd",
                   AGENT_CMD, "--grace", "2", "--retry-backoff", "0.05", "--max-iterations", "3",
                   "--ui", str(port)], tmp_path, clean_env(FAKE_TRAIN_BODY=LIVE_TRAIN))
    s = Site(root, port, daemon)
    try:
        wait_for(lambda: f"127.0.0.1:{port}" in daemon.output(), 30, "the UI's URL")
        yield s
    finally:
        with contextlib.suppress(Exception):
            daemon.signal(signal.SIGTERM)
            daemon.proc.wait(20)
        daemon.kill()
        _kill_under(tmp_path)


def _kill_under(d: Path) -> None:
    me = os.getpid()
    for proc in psutil.process_iter(["pid", "cwd"]):
        with contextlib.suppress(psutil.Error):
            if proc.pid != me and proc.info["cwd"] and proc.info["cwd"].startswith(str(d)):
                proc.kill()


def tree(pid: int) -> list[int]:
    try:
        p = psutil.Process(pid)
        return [pid, *(c.pid for c in p.children(recursive=True))]
    except psutil.Error:
        return []


def test_http_security_over_a_live_daemon(site: Site) -> None:
    wait_for(lambda: site.state("alpha") == "training", 60, "alpha training")
    assert site.request("GET", "/api/overview")[0] == 200
    # DNS rebinding: a foreign Host name is refused on a token-less loopback server
    assert site.request("GET", "/api/overview", headers={"Host": "evil.example"})[0] == 403
    # actions need the CSRF token, from this origin
    assert site.request("POST", "/api/exp/alpha/stop")[0] == 403
    csrf = site.csrf()
    bad_origin = {"x-csrf-token": csrf, "origin": "http://evil.example"}
    assert site.request("POST", "/api/exp/alpha/stop", {}, bad_origin)[0] == 403
    assert site.request("POST", "/api/exp/alpha/stop", {}, {"x-csrf-token": "x" + csrf})[0] == 403
    assert not (site.root / "alpha" / "STOP").exists()
    # files come only from inside the experiment
    (site.root / "alpha" / "leak.txt").symlink_to(site.root.parent / "secret")
    (site.root.parent / "secret").write_text("secret")
    for bad in ("../../secret", "/etc/passwd", "leak.txt", ".mlsm/config.json",
                "%2e%2e/%2e%2e/secret", "logs/../../beta/IDEA.md"):
        code, _, body = site.request("GET", f"/api/exp/alpha/file?path={bad}")
        assert code == 404 and b"secret" not in body, bad
    code, headers, body = site.request("GET", "/api/exp/alpha/file?path=IDEA.md")
    assert code == 200 and body.startswith(b"Make the loss of alpha")
    assert headers["content-type"].startswith("text/plain")
    assert "sandbox" in headers["content-security-policy"]
    assert site.request("GET", "/api/exp/..%2F..%2Fetc/file?path=passwd")[0] == 404
    assert site.request("GET", "/static/..%2F..%2F..%2Fserver.py")[0] == 404
    # New experiment: one safe path component, never an existing one
    for name in ("../escape", ".hidden", "a/b", "alpha"):
        code, _, _ = site.request("POST", "/api/new", {"name": name, "idea": "x"},
                                  {"x-csrf-token": csrf})
        assert code in (400, 409), name
    assert not (site.root.parent / "escape").exists()
    # Retry is refused unless FAILED; no request runs anything
    code, _, body = site.request("POST", "/api/exp/alpha/retry", {}, {"x-csrf-token": csrf})
    assert code == 409 and not (site.root / "alpha" / "RETRY").exists()
    code, _, body = site.request("POST", "/api/exp/alpha/run", {}, {"x-csrf-token": csrf})
    assert code == 404


def test_token_is_required_off_loopback_and_when_given(tmp_path: Path) -> None:
    pytest.importorskip("uvicorn")
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "IDEA.md").write_text("x")
    env = clean_env()
    given = Mlsm(["ui", str(tmp_path), "--port", "0", "--token", "s3cret-token"], tmp_path, env)
    wide = Mlsm(["ui", str(tmp_path), "--host", "0.0.0.0", "--port", "0"], tmp_path, env)
    try:
        for server, token in ((given, "s3cret-token"), (wide, None)):
            url = wait_for(lambda s=server: re.search(r"http://\S+:(\d+)/\?token=(\S+)",
                                                      s.output()), 20, "the printed URL")
            port, printed = int(url.group(1)), url.group(2)
            assert token is None or printed == token
            s = Site(tmp_path, port, server)
            assert s.request("GET", "/api/overview")[0] == 401
            assert s.request("GET", "/api/overview?token=wrong")[0] == 401
            assert s.request("GET", "/api/overview", headers={
                "Authorization": f"Bearer {printed}"})[0] == 200
            code, headers, _ = s.request("GET", f"/?token={printed}")
            assert code == 303 and "httponly" in headers["set-cookie"].lower()
            cookie = headers["set-cookie"].split(";")[0]
            assert printed not in cookie  # the cookie holds a digest, never the token
            assert s.request("GET", "/api/overview", headers={"Cookie": cookie})[0] == 200
            csrf = s.csrf({"Cookie": cookie})
            assert s.request("POST", "/api/exp/e/stop", {}, {"x-csrf-token": csrf})[0] == 401
            assert s.request("POST", "/api/exp/e/stop", {}, {"Cookie": cookie})[0] == 403
            assert s.request("POST", "/api/exp/e/stop", {}, {
                "Cookie": cookie, "x-csrf-token": csrf})[0] == 200
            assert (tmp_path / "e" / "STOP").exists()
            (tmp_path / "e" / "STOP").unlink()
    finally:
        for server in (given, wide):
            server.signal(signal.SIGTERM)
            assert server.wait(15) == 0, server.output()


def test_a_taken_port_is_one_line_error(tmp_path: Path) -> None:
    pytest.importorskip("uvicorn")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        (tmp_path / "e").mkdir()
        (tmp_path / "e" / "IDEA.md").write_text("x")
        run = Mlsm(["run", str(tmp_path / "e"), "--agent", "builtin", "--ui", str(port)],
                   tmp_path, clean_env())
        assert run.wait(30) == 3
        assert f"mlsm: error: cannot serve the UI on 127.0.0.1:{port}" in run.output()
        assert not (tmp_path / "e" / "status.json").exists() or \
            read_status(tmp_path / "e").get("state") == "idle"


# ----- the browser -----------------------------------------------------------------------------
@pytest.fixture
def browser() -> Iterator[Any]:
    required = os.environ.get("MLSM_REQUIRE_BROWSER") == "1"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if required:
            pytest.fail("MLSM_REQUIRE_BROWSER=1 but playwright is not installed")
        pytest.skip("playwright is not installed (pip install playwright)")
    if not Path(CHROMIUM).exists():
        if required:
            pytest.fail(f"MLSM_REQUIRE_BROWSER=1 but {CHROMIUM} is missing")
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


def row_state(page: Any, key: str) -> str:
    text: str = page.eval_on_selector(f'tr[data-key="{key}"] .pill',
                                      "el => el.textContent.trim()")
    return text


def series_pixels(page: Any) -> int:
    """Pixels of the first iteration's line color (#4c6ef5) on the first chart's canvas."""
    count: int = page.evaluate("""() => {
        const c = document.querySelector('.chart canvas');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0;
        for (let i = 0; i < d.length; i += 4)
            if (Math.abs(d[i] - 76) < 40 && Math.abs(d[i+1] - 110) < 40
                && Math.abs(d[i+2] - 245) < 40 && d[i+3] > 100) n++;
        return n;
    }""")
    return count


@pytest.mark.timeout(300)
def test_browser_overview_live_stop_and_curves(site: Site, browser: Any,
                                               tmp_path: Path) -> None:
    shots = tmp_path / "screenshots"
    shots.mkdir()
    print(f"screenshots: {shots}")
    for name in ("alpha", "beta"):
        wait_for(lambda n=name: site.state(n) == "training", 60, f"{name} training")
    page = browser.new_page(viewport={"width": 1440, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(site.url + "/")
    page.wait_for_selector('tr[data-key="alpha"] .pill')
    page.wait_for_function("() => window.mlsmPainted > 0")
    page.evaluate("() => { window.sameDocument = 42; }")
    assert row_state(page, "alpha") == "training"

    # New experiment from the page: its row appears and walks to TRAINING, no reload
    page.click("#new")
    page.fill('dialog input[name="name"]', "gamma")
    page.fill('dialog textarea[name="idea"]', "Make gamma's loss small.")
    page.click('dialog button[value="ok"]')
    idea = site.root / "gamma" / "IDEA.md"
    wait_for(idea.exists, 10, "gamma/IDEA.md written by the page")
    assert idea.read_text() == "Make gamma's loss small."
    page.wait_for_selector('tr[data-key="gamma"]', timeout=20_000)
    page.wait_for_function(
        """() => document.querySelector('tr[data-key="gamma"] .pill')
                 ?.textContent.trim() === 'training'""", timeout=60_000)

    # A state change made outside the page arrives without a reload
    (site.root / "beta" / "STOP").touch()
    page.wait_for_function(
        """() => document.querySelector('tr[data-key="beta"] .pill')
                 ?.textContent.trim() === 'stopped'""", timeout=20_000)

    # Stop from the page: the training tree is gone and the page says stopped
    pid = read_status(site.root / "alpha")["training"]["pid"]
    procs = tree(pid)
    assert len(procs) >= 2, procs
    page.click('tr[data-key="alpha"] button[data-act="stop"]')
    wait_for(lambda: all(gone(p) for p in procs), 20, "alpha's training tree gone")
    assert (site.root / "alpha" / "STOP").exists()
    page.wait_for_function(
        """() => document.querySelector('tr[data-key="alpha"] .pill')
                 ?.textContent.trim() === 'stopped'""", timeout=20_000)
    page.click('tr[data-key="beta"] button[data-act="resume"]')
    page.wait_for_function(
        """() => document.querySelector('tr[data-key="beta"] .pill')
                 ?.textContent.trim() === 'training'""", timeout=30_000)
    assert page.evaluate("() => window.sameDocument") == 42  # never reloaded
    page.click('.chip[data-state="stopped"]')
    assert page.locator("tbody tr:not(.hidden)").count() == 1
    page.click('.chip[data-state="all"]')
    page.screenshot(path=str(shots / "overview.png"), full_page=True)

    # The experiment page: curves drawn (the live iteration), timeline, logs
    page.goto(site.url + "/exp/gamma")
    page.wait_for_selector(".chart canvas", timeout=20_000)
    wait_for(lambda: series_pixels(page) > 100, 20, "the loss curve drawn on the canvas")
    charts = page.eval_on_selector_all(".chart", "els => els.map(e => e.dataset.metric)")
    assert sorted(charts) == ["acc", "loss"]
    assert "(live)" in page.inner_text(".chart .u-legend")
    assert page.locator(".timeline .seg.training").count() >= 1
    page.wait_for_function("() => document.getElementById('log').textContent"
                           ".includes('training_started')", timeout=20_000)
    page.screenshot(path=str(shots / "experiment.png"), full_page=True)
    assert not errors, errors
    for name in ("overview", "experiment"):
        with contextlib.suppress(OSError):
            shutil.copy(shots / f"{name}.png", SHOTS / f"mlsm_ui_{name}.png")


@pytest.mark.timeout(300)
def test_browser_token_page_and_finished_experiment(tmp_path: Path, browser: Any) -> None:
    """A finished experiment under a token: the link with ?token= opens it, the report renders
    with its image, the iteration table and the train.py diff show."""
    pytest.importorskip("uvicorn")
    d = tmp_path / "done-exp"
    d.mkdir()
    (d / "IDEA.md").write_text("x")
    run = Mlsm(["run", str(d), "--agent", "command", "--agent-cmd", AGENT_CMD,
                "--max-iterations", "2", "--grace", "2"], tmp_path, clean_env())
    assert run.wait(120) == 0, run.output()
    png = bytes.fromhex("89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c4"
                        "890000000d49444154789c63f8cfc0f01f0005ff02fea7a5d0a30000000049454e44ae426082")
    (d / "plot.png").write_bytes(png)
    (d / "REPORT.md").write_text("# Report\n\n![the plot](plot.png)\n\n<script>bad()</script>\n")
    server = Mlsm(["ui", str(tmp_path), "--port", "0", "--token", "tok-123"], tmp_path,
                  clean_env())
    try:
        url = wait_for(lambda: re.search(r"(http://\S+/)\?token=\S+", server.output()), 20,
                       "the URL").group(0)
        page = browser.new_page()
        page.goto(url)
        page.wait_for_selector('tr[data-key="done-exp"] .pill')
        assert row_state(page, "done-exp") == "done"
        page.click('tr[data-key="done-exp"] a')
        page.wait_for_selector(".md h1")
        assert page.evaluate("() => document.querySelector('.md img').naturalWidth") == 1
        assert "<script>bad()</script>" in page.inner_text(".md")  # shown, not run
        assert page.locator("#iters tbody tr").count() == 2
        page.click('#tabs button[data-tab="diff"]')
        page.wait_for_selector("#diff .add")
        assert "+hooks.result(loss=1.0 / (2 + 1)" in page.inner_text("#diff")
        anonymous = browser.new_page()
        anonymous.goto(url.split("?")[0])
        assert "needs its token" in anonymous.inner_text("body")
    finally:
        server.signal(signal.SIGTERM)
        server.wait(15)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-v"]))
