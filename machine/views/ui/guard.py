"""Who may talk to the UI: the Host check, the token, and the CSRF check on every action."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import ipaddress
import secrets
from typing import Any
from urllib.parse import unquote, urlsplit

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
SAFE_METHODS = ("GET", "HEAD")
HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy",
     b"default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
     b"script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
     b"form-action 'self'"),
]


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or localhost."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclasses.dataclass(frozen=True)
class Security:
    """The token (None: reading is open, loopback only), the per-process CSRF secret, and the
    Host names a browser may use to reach this server."""

    host: str
    port: int
    token: str | None
    csrf: str = dataclasses.field(default_factory=lambda: secrets.token_urlsafe(24))

    @classmethod
    def make(cls, host: str, port: int, token: str | None) -> Security:
        """A token is required off loopback: the given one, else a fresh one (printed)."""
        if not token and not is_loopback(host):
            token = secrets.token_urlsafe(24)
        return cls(host, port, token or None)

    @property
    def cookie(self) -> str:
        return f"mlsm_ui_{self.port}"

    def host_ok(self, host_header: str) -> bool:
        """Without a token only loopback names may reach us (no DNS rebinding); with one,
        the token itself is the proof."""
        if self.token:
            return True
        name = urlsplit(f"//{host_header}").hostname or ""
        return name in LOOPBACK_NAMES or is_loopback(name)

    @property
    def cookie_value(self) -> str:
        """What the session cookie holds: a digest of the token, never the token."""
        return hashlib.sha256(f"mlsm-ui:{self.token}".encode()).hexdigest()

    def token_ok(self, headers: dict[str, str], cookies: dict[str, str],
                 query_token: str | None) -> bool:
        if not self.token:
            return True
        auth = headers.get("authorization", "")
        given = (auth[7:] if auth.lower().startswith("bearer ") else None) or query_token
        if given is not None:
            return hmac.compare_digest(given.encode(), self.token.encode())
        cookie = cookies.get(self.cookie, "")
        return hmac.compare_digest(cookie.encode(), self.cookie_value.encode())

    def action_ok(self, headers: dict[str, str]) -> str | None:
        """Why an action (a POST) is refused: a foreign Origin, a cross-site fetch, or a missing
        or wrong CSRF token. None when it may go on."""
        origin = headers.get("origin")
        host = headers.get("host", "")
        if origin is not None and urlsplit(origin).netloc != host:
            return "the request comes from another origin"
        if headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
            return "the request comes from another site"
        given = headers.get("x-csrf-token", "")
        if not hmac.compare_digest(given.encode(), self.csrf.encode()):
            return "the CSRF token is missing or wrong: reload the page"
        return None


class Guard:
    """ASGI middleware: every HTTP request passes the Host and token checks, every non-GET the
    action check; every response carries the security headers."""

    def __init__(self, app: Any, security: Security) -> None:
        self.app = app
        self.security = security

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        refusal = self._refusal(scope, headers)
        if refusal is not None:
            await _plain(send, *refusal)
            return

        async def send_with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                own = list(message.get("headers", []))
                names = {k.lower() for k, _ in own}
                message["headers"] = own + [(k, v) for k, v in HEADERS if k not in names]
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def _refusal(self, scope: dict[str, Any], headers: dict[str, str]) -> tuple[int, str] | None:
        sec = self.security
        if not sec.host_ok(headers.get("host", "")):
            return 403, "this UI answers only to localhost names (start it with --token to " \
                        "reach it under another name)"
        query = _query_token(scope)
        if not sec.token_ok(headers, _cookies(headers), query):
            return 401, "this mlsm UI needs its token: open the URL printed when it started " \
                        "(…/?token=…), or send Authorization: Bearer TOKEN"
        if scope["method"] not in SAFE_METHODS:
            why = sec.action_ok(headers)
            if why is not None:
                return 403, why
        return None


def _query_token(scope: dict[str, Any]) -> str | None:
    raw = scope.get("query_string", b"").decode("latin-1")
    for part in raw.split("&"):
        if part.startswith("token="):
            return unquote(part[6:])
    return None


def _cookies(headers: dict[str, str]) -> dict[str, str]:
    out = {}
    for part in headers.get("cookie", "").split(";"):
        name, _, value = part.strip().partition("=")
        if name:
            out[name] = value
    return out


async def _plain(send: Any, status: int, text: str) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"), *HEADERS]})
    await send({"type": "http.response.body", "body": (text + "\n").encode()})
