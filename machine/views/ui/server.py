"""The web UI's HTTP server (Starlette + uvicorn): pages, JSON, live events, and file actions."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Route

from mlsm.hooks.layout import IDEA, Layout
from mlsm.hooks.rundir import read_capped
from mlsm.machine.core.errors import InputError
from mlsm.machine.core.states import State
from mlsm.machine.core.status import read_status
from mlsm.machine.views.catalog import Catalog, name_problem
from mlsm.machine.views.files import inside, read_text
from mlsm.machine.views.ui import data, markdown
from mlsm.machine.views.ui.guard import Guard, Security
from mlsm.machine.views.ui.state import SWEEP_S, Board
from mlsm.machine.views.ui.viewer import Shared, Viewer
from mlsm.machine.views.ui.watch import attach

STATIC = Path(__file__).with_name("static")
TICK_S = 1.0  # the overview is looked at this often while something works (else SWEEP_S)
DEBOUNCE_S = 0.02  # events this close together make one look
VIEW_S = 0.3  # an experiment page's refresh
KEEPALIVE_S = 15.0
BACKLOG = 500  # messages a page may leave unread before its stream is closed
FILE_CAP = 32 << 20
IDEA_CAP = 64 << 10
IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
               ".gif": "image/gif", ".webp": "image/webp", ".svg": "image/svg+xml"}
FILE_CSP = "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; sandbox"


def _json(obj: Any, status: int = 200) -> Response:
    body = json.dumps(data.finite_or_none(obj), default=str, allow_nan=False)
    return Response(body, status, media_type="application/json",
                    headers={"cache-control": "no-store"})


def _sse(event: str, payload: Any) -> str:
    body = json.dumps(data.finite_or_none(payload), default=str, allow_nan=False)
    return f"event: {event}\ndata: {body}\n\n"


class Hub:
    """The overview's listeners: one queue per open event stream."""

    def __init__(self) -> None:
        self.queues: set[asyncio.Queue[str | None]] = set()

    def publish(self, message: str | None) -> None:
        for q in list(self.queues):
            if q.qsize() > BACKLOG:  # a page that stopped reading: end its stream (the
                self.queues.discard(q)  # browser reconnects and gets everything afresh)
                q.put_nowait(None)
            else:
                q.put_nowait(message)


class App:
    """The routes, over one Board (overview rows) and the viewers' shared caches."""

    def __init__(self, catalog: Catalog, security: Security) -> None:
        self.catalog = catalog
        self.security = security
        self.board = Board(catalog)
        self.shared = Shared()
        self.static = Static()
        self.hub = Hub()
        self.stopping = asyncio.Event()
        self._polled = asyncio.Event()
        self._poll_lock = asyncio.Lock()

    # ----- the overview's polling loop ---------------------------------------------------
    async def poll_once(self) -> None:
        async with self._poll_lock:
            changed, removed = await asyncio.to_thread(self.board.poll)
        self._polled.set()
        if changed or removed:
            blobs = self.board.blobs
            rows = "[" + ",".join(blobs[k] for k in changed if k in blobs) + "]"
            self.hub.publish(self._rows_event(rows, removed, full=False))

    def _rows_event(self, rows_json: str, removed: list[str], full: bool) -> str:
        """The `rows` event, from rows already serialised once per change."""
        head = json.dumps({"removed": removed, "full": full, "now": time.time(),
                           "version": self.board.version})
        return f"event: rows\ndata: {head[:-1]}, \"rows\": {rows_json}}}\n\n"

    async def poll_forever(self) -> None:
        """Poll when a file event says so, and every TICK_S (working experiments beat)."""
        event = asyncio.Event()
        if self.board.start():
            attach(self.board.watcher, asyncio.get_running_loop(), event.set)
        try:
            while not self.stopping.is_set():
                event.clear()
                with contextlib.suppress(Exception):  # one bad directory must not stop the UI
                    await self.poll_once()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), TICK_S if self.board.busy else SWEEP_S)
                await asyncio.sleep(DEBOUNCE_S)  # a burst of events makes one poll
        finally:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self.board.watcher.fileno())
            self.board.stop()
            self.hub.publish(None)

    async def rows(self) -> list[dict[str, Any]]:
        await self.ready()
        return sorted(self.board.rows.values(), key=lambda r: r["name"])

    async def ready(self) -> None:
        """The board has been filled once."""
        if not self._polled.is_set():
            await self.poll_once()

    # ----- pages -------------------------------------------------------------------------
    async def page(self, request: Request) -> Response:
        if self.security.token and "token" in request.query_params:
            response: Response = RedirectResponse(request.url.path, 303)
            response.set_cookie(self.security.cookie, self.security.cookie_value,
                                httponly=True, samesite="strict")
            return response
        nonce = secrets.token_urlsafe(16)
        initial = "null"
        if request.url.path == "/":  # the overview's rows come with the page: no round trip
            await self.ready()
            initial = (f'{{"version": {self.board.version}, "now": {time.time()}, '
                       f'"rows": {self.board.full_json()}}}')
        text = self.static.page(nonce, self.security.csrf, bool(self.catalog.roots), initial)
        return HTMLResponse(text, headers={"cache-control": "no-store",
                                           "content-security-policy": page_csp(nonce)})

    # ----- JSON --------------------------------------------------------------------------
    async def overview(self, request: Request) -> Response:
        return _json({"rows": await self.rows(), "roots": [str(r) for r in self.catalog.roots]})

    def _dir(self, request: Request) -> Path:
        path = self.board.path(request.path_params["key"])
        if path is None:
            raise KeyError(request.path_params["key"])
        return path

    async def experiment(self, request: Request) -> Response:
        d, key = self._dir(request), request.path_params["key"]
        viewer = Viewer(key, d, self.shared)
        messages = await asyncio.to_thread(viewer.tick)
        return _json({name: payload for name, payload in messages if name == "doc"})

    async def file(self, request: Request) -> Response:
        d = self._dir(request)
        path = inside(d, request.query_params.get("path", ""))
        body = None if path is None else await asyncio.to_thread(read_capped, path, FILE_CAP)
        if path is None or body is None:  # read_capped: no symlink, no FIFO, not too large
            return PlainTextResponse("no such file in this experiment", 404)
        kind = IMAGE_TYPES.get(path.suffix.lower(), "text/plain; charset=utf-8")
        return Response(body, media_type=kind, headers={
            "content-security-policy": FILE_CSP, "cache-control": "no-cache",
            "content-disposition": "inline"})

    async def render(self, request: Request) -> Response:
        d, key = self._dir(request), request.path_params["key"]
        rel = request.query_params.get("path", "")
        path = inside(d, rel) if rel.lower().endswith(".md") else None
        text = read_text(path) if path is not None else None
        if text is None:
            return PlainTextResponse("no such Markdown file in this experiment", 404)
        base = str(Path(rel).parent)

        def link(target: str) -> str | None:
            joined = os.path.normpath(os.path.join(base, target))
            if inside(d, joined) is None:
                return None
            return f"/api/exp/{quote(key)}/file?path={quote(joined)}"

        return HTMLResponse(markdown.render(text, link), headers={"cache-control": "no-store"})

    async def diff(self, request: Request) -> Response:
        d = self._dir(request)
        try:
            a, b = int(request.query_params["a"]), int(request.query_params["b"])
            return PlainTextResponse(await asyncio.to_thread(data.train_diff, d, a, b))
        except (KeyError, ValueError):
            return PlainTextResponse("give two iterations: ?a=1&b=2", 400)
        except InputError as exc:
            return PlainTextResponse(str(exc), 404)

    # ----- live events -------------------------------------------------------------------
    async def stream(self, request: Request) -> Response:
        queue: asyncio.Queue[str | None] = asyncio.Queue()
        self.hub.queues.add(queue)  # first: a change from now on is queued for this page
        await self.ready()
        since = request.query_params.get("since", "")
        first = None if since == str(self.board.version) else \
            self._rows_event(self.board.full_json(), [], full=True)

        async def events() -> AsyncIterator[str]:
            try:
                yield first or ": up to date\n\n"
                while True:
                    try:
                        message = await asyncio.wait_for(queue.get(), KEEPALIVE_S)
                    except TimeoutError:
                        yield ": keepalive\n\n"
                        continue
                    if message is None:
                        return
                    yield message
            finally:
                self.hub.queues.discard(queue)

        return _event_stream(events())

    async def exp_stream(self, request: Request) -> Response:
        d, key = self._dir(request), request.path_params["key"]
        return self._follow(Viewer(key, d, self.shared).tick)

    async def log_stream(self, request: Request) -> Response:
        d, key = self._dir(request), request.path_params["key"]
        it = request.query_params.get("iteration", "")
        viewer = Viewer(key, d, self.shared, request.query_params.get("log", "runner"),
                        int(it) if it.isdigit() else None)
        return self._follow(viewer.tick_log)

    def _follow(self, tick: Callable[[], list[tuple[str, dict[str, Any]]]]) -> Response:
        async def events() -> AsyncIterator[str]:
            quiet = 0.0
            while not self.stopping.is_set():
                messages = await asyncio.to_thread(tick)
                for name, payload in messages:
                    yield _sse(name, payload)
                quiet = 0.0 if messages else quiet + VIEW_S
                if quiet >= KEEPALIVE_S:
                    quiet = 0.0
                    yield ": keepalive\n\n"
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), VIEW_S)

        return _event_stream(events())

    # ----- actions: the same files a person at a shell would touch ------------------------
    async def action(self, request: Request) -> Response:
        d = self._dir(request)
        act = request.path_params["action"]
        try:
            return self._act(d, act)
        except OSError as exc:
            return _json({"ok": False, "message": f"{act} failed in {d}: "
                                                  f"{exc.strerror or exc}"}, 409)

    def _act(self, d: Path, act: str) -> Response:
        layout = Layout(d)
        if act == "stop":
            layout.stop.touch()
            return _json({"ok": True, "message": "STOP created: the run halts now"})
        if act == "resume":
            layout.stop.unlink(missing_ok=True)
            return _json({"ok": True, "message": "STOP removed: the run goes on"})
        if act == "retry":
            return self._retry(d)
        return _json({"ok": False, "message": f"unknown action {act!r}"}, 404)

    def _retry(self, d: Path) -> Response:
        try:
            status = read_status(d)
        except InputError as exc:
            return _json({"ok": False, "message": str(exc)}, 409)
        if status is None or status.state != State.FAILED:
            state = "not started" if status is None else status.state
            return _json({"ok": False, "message": f"only a FAILED run can be retried ({state})"},
                         409)
        Layout(d).retry.touch()
        return _json({"ok": True, "message": "RETRY written: the daemon sends the run back to "
                                             f"{status.failed_state or 'planning'}"})

    async def new(self, request: Request) -> Response:
        try:
            body = json.loads((await request.body())[:IDEA_CAP + 4096])
            name, idea = str(body["name"]).strip(), str(body["idea"])
            root_index = int(body.get("root", 0))
        except (ValueError, KeyError, TypeError):
            return _json({"ok": False, "message": "send JSON: {name, idea}"}, 400)
        problem = name_problem(name) or ("" if idea.strip() else "IDEA.md may not be empty")
        if problem or not 0 <= root_index < len(self.catalog.roots):
            return _json({"ok": False, "message": problem or "no folder of experiments to "
                          "create it in (start the UI on a ROOT folder)"}, 400)
        return await asyncio.to_thread(self._create, self.catalog.roots[root_index], name,
                                       idea[:IDEA_CAP])

    def _create(self, root: Path, name: str, idea: str) -> Response:
        """The directory appears whole, IDEA.md inside, so a watcher sees both at once."""
        target = root / name
        if target.exists() or target.is_symlink():
            return _json({"ok": False, "message": f"{name} exists already"}, 409)
        tmp = root / f".new-{secrets.token_hex(4)}"
        try:
            tmp.mkdir()
            (tmp / IDEA).write_text(idea, encoding="utf-8")
            os.rename(tmp, target)
        except OSError as exc:
            with contextlib.suppress(OSError):
                (tmp / IDEA).unlink()
                tmp.rmdir()
            return _json({"ok": False, "message": f"cannot create {name}: {exc.strerror}"}, 409)
        self.board.paths = self.catalog.keyed()
        return _json({"ok": True, "message": f"{name}/IDEA.md written", "key": name})


def page_csp(nonce: str) -> str:
    """The page's policy: its own inline script and style (by nonce), files from here only."""
    return (f"default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
            f"script-src 'self' 'nonce-{nonce}'; connect-src 'self'; frame-ancestors 'none'; "
            f"base-uri 'none'; form-action 'self'")


STATIC_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
                ".html": "text/html; charset=utf-8"}


class Static:
    """The package's few static files, served from memory (read again when one changes on
    disk); a URL carries the file's version, so the browser keeps it for a day."""

    def __init__(self) -> None:
        self.files: dict[str, tuple[int, bytes]] = {}

    def _body(self, name: str) -> bytes | None:
        path = STATIC / name
        if Path(name).name != name or path.suffix not in STATIC_TYPES:
            return None
        try:
            mtime = path.stat().st_mtime_ns
        except OSError:
            return None
        cached = self.files.get(name)
        if cached is None or cached[0] != mtime:
            cached = self.files[name] = (mtime, path.read_bytes())
        return cached[1]

    def page(self, nonce: str, csrf: str, roots: bool, initial: str) -> str:
        """index.html with app.css and app.js inlined (one request to the first paint)."""
        text = (self._body("index.html") or b"").decode()
        css = (self._body("app.css") or b"").decode()
        js = (self._body("app.js") or b"").decode()
        text = text.replace('<link rel="stylesheet" href="/static/app.css">',
                            f"<style>{css}</style>")
        text = text.replace('<script src="/static/app.js"></script>',
                            f'<script nonce="{nonce}">{js}</script>')
        text = text.replace("{{csrf}}", csrf).replace("{{roots}}", "1" if roots else "0")
        return text.replace("{{initial}}", initial)  # last: rows may hold any text

    async def serve(self, request: Request) -> Response:
        name = request.path_params["name"]
        body = None if name.endswith(".html") else self._body(name)
        if body is None:
            return PlainTextResponse("not found", 404)
        return Response(body, media_type=STATIC_TYPES[Path(name).suffix],
                        headers={"cache-control": "public, max-age=86400"})


def _event_stream(events: AsyncIterator[str]) -> Response:
    return StreamingResponse(events, media_type="text/event-stream", headers={
        "cache-control": "no-store", "x-accel-buffering": "no"})


def _guarded(handler: Callable[[Request], Awaitable[Response]]
             ) -> Callable[[Request], Awaitable[Response]]:
    """An unknown experiment key is a 404, not a crash."""
    async def run(request: Request) -> Response:
        try:
            return await handler(request)
        except KeyError:
            return PlainTextResponse("no such experiment", 404)
    return run


def make_app(catalog: Catalog, security: Security) -> tuple[Any, App]:
    """The ASGI application (wrapped in the Guard) and its state."""
    app = App(catalog, security)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        task = asyncio.create_task(app.poll_forever())
        try:
            yield
        finally:
            app.stopping.set()
            app.hub.publish(None)
            task.cancel()

    g = _guarded
    routes = [
        Route("/", app.page), Route("/exp/{key}", app.page),
        Route("/api/overview", g(app.overview)), Route("/api/stream", g(app.stream)),
        Route("/api/exp/{key}", g(app.experiment)),
        Route("/api/exp/{key}/stream", g(app.exp_stream)),
        Route("/api/exp/{key}/logstream", g(app.log_stream)),
        Route("/api/exp/{key}/file", g(app.file)),
        Route("/api/exp/{key}/markdown", g(app.render)),
        Route("/api/exp/{key}/diff", g(app.diff)),
        Route("/api/exp/{key}/{action}", g(app.action), methods=["POST"]),
        Route("/api/new", g(app.new), methods=["POST"]),
        Route("/static/{name}", app.static.serve),
    ]
    return Guard(Starlette(routes=routes, lifespan=lifespan), security), app


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (port 0: any free one); OSError when the address is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(False)
    return sock


class UiServer:
    """The UI on a background thread (in the daemon's process, or `mlsm ui`'s)."""

    def __init__(self, catalog: Catalog, host: str = "127.0.0.1", port: int = 8765,
                 token: str | None = None, console: IO[str] | None = sys.stderr) -> None:
        self.catalog = catalog
        self.host, self.port = host, port
        self.token = token
        self.console = console
        self.url = ""
        self._sock: socket.socket | None = None
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def bind(self) -> None:
        """Take the address now, so a busy port is an error before anything starts."""
        try:
            self._sock = bind(self.host, self.port)
        except OSError as exc:
            raise InputError(f"cannot serve the UI on {self.host}:{self.port} "
                             f"({exc.strerror or exc}): choose another port") from None
        self.port = self._sock.getsockname()[1]

    def start(self) -> None:
        """Serve on a thread; prints the URL (with the token, when there is one)."""
        import uvicorn

        if self._sock is None:
            self.bind()
        security = Security.make(self.host, self.port, self.token)
        asgi, _ = make_app(self.catalog, security)
        config = uvicorn.Config(asgi, log_config=None, log_level="warning", access_log=False,
                                lifespan="on", timeout_graceful_shutdown=1,
                                timeout_keep_alive=5, proxy_headers=False,
                                server_header=False)
        self._server = uvicorn.Server(config)
        setattr(self._server, "main_loop", self._server_loop)  # noqa: B010
        shown = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"http://{shown}:{self.port}/" + (
            f"?token={security.token}" if security.token else "")
        self._thread = threading.Thread(target=self._server.run,
                                        kwargs={"sockets": [self._sock]}, name="mlsm-ui",
                                        daemon=True)
        self._thread.start()
        if self.console is not None:
            print(f"mlsm ui: {self.url}", file=self.console, flush=True)

    async def _server_loop(self) -> None:
        """uvicorn's own loop looks at its exit flag ten times a second; twice is enough."""
        counter = 0
        while not await self._server.on_tick(counter):
            counter = (counter + 5) % 864000  # its date header still changes every second
            await asyncio.sleep(0.5)

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._sock is not None:
            self._sock.close()

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()


def serve(paths: list[Path], host: str, port: int, token: str | None) -> int:
    """`mlsm ui`: serve until Ctrl-C or SIGTERM."""
    import signal

    catalog = Catalog.of(paths)
    server = UiServer(catalog, host, port, token, console=sys.stdout)
    server.start()
    done = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: done.set())
    try:
        while not done.is_set() and server.alive():
            done.wait(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.stop()
    return 0

