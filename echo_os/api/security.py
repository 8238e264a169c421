"""What keeps a local GPU server from becoming everyone's: bind checks, the bearer token, cross-site
browser requests, Host names (DNS rebinding), body size, and paths that must stay in the workspace.

One pure-ASGI middleware (`Guard`) runs before any route, so even an unknown path answers 401 without
the token and nothing is parsed from a body that is too large.

A browser cannot add a header when it follows a link, so the gallery and the studio have a sign-in: `GET
/api/gallery?token=T` (or /api/studio?token=T) with the right token answers 303 to the same URL without the token and sets the
session cookie (HttpOnly, SameSite=Strict, Path=/api) whose value is an HMAC of the token, never the token
itself. The Guard accepts that cookie on /api/ paths like the Bearer header; cookie or not, a POST that a
browser labels cross-site is refused, so a page on another site cannot rate or render through it.

No log line carries a secret: the sign-in URL reaches uvicorn's access log before the redirect, so a
filter (SecretRedactor) on the server's loggers and their handlers rewrites `?token=` values (right or
wrong) and the server's token itself to <redacted> in every record, the access log included.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import re
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie
from pathlib import Path
from urllib.parse import parse_qsl, urlencode

from fastapi import HTTPException
from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from echo_os.errors import UsageError

# "/" only redirects to the studio (/api/studio), which the token or the cookie guards like any /api/ path.
OPEN_PATHS = frozenset({"/health", "/"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
DEFAULT_MAX_BODY_BYTES = 5 * 1024 * 1024
# A token guessable in an afternoon guards nothing once the port is reachable from other machines.
MIN_TOKEN_CHARS = 16
DEFAULT_PORTS = {"http": 80, "https": 443}
# The browser sign-in: only this page takes the token from the query string, and the cookie it sets is
# sent back (and accepted) only under /api/.
LOGIN_PATH = "/api/gallery"
LOGIN_PATHS = frozenset({LOGIN_PATH, "/api/studio"})  # the pages a browser opens first: gallery and studio
LOGIN_PARAM = "token"
SESSION_COOKIE = "echo_os_session"
COOKIE_PATH = "/api"
_SESSION_LABEL = b"echo-os browser session v1"


# Query parameters that carry a secret, whoever sends them: written to no log line (SecretRedactor).
_SECRET_QUERY = re.compile(r"([?&](?:token|access_token|api_key|key)=)[^&#\s\"']*", re.IGNORECASE)
REDACTED = "<redacted>"
# The loggers a server writes through: uvicorn's own (the access log is "uvicorn.access") and echo-os's.
SERVER_LOGGERS = ("uvicorn", "uvicorn.access", "uvicorn.error", "echo_os")


class SecretRedactor(logging.Filter):
    """Rewrites a record's message and arguments so that no `?token=` value and no known secret is
    written; it never drops a record. One instance for the process (REDACTOR), so adding it twice is a no-op."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def redact(self, text: str) -> str:
        text = _SECRET_QUERY.sub(rf"\1{REDACTED}", text)
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = self.redact(record.msg)
        if isinstance(record.args, tuple):  # uvicorn's access record: (client, method, path, version, status)
            record.args = tuple(self.redact(arg) if isinstance(arg, str) else arg for arg in record.args)
        elif isinstance(record.args, dict):
            record.args = {key: self.redact(arg) if isinstance(arg, str) else arg for key, arg in record.args.items()}
        return True


REDACTOR = SecretRedactor()


def keep_secrets_out_of_logs(token: str | None) -> None:
    """Put REDACTOR on the server's loggers (a filter there sees every record logged to them) and on every
    handler of those and of the root logger (where echo_os.* records propagate to); remember `token`.
    Called when the app's middleware is built, after uvicorn configured its logging."""
    if token:
        REDACTOR.secrets.add(token)
    handlers = list(logging.getLogger().handlers)
    for name in SERVER_LOGGERS:
        logger = logging.getLogger(name)
        if REDACTOR not in logger.filters:
            logger.addFilter(REDACTOR)
        handlers.extend(logger.handlers)
    for handler in handlers:
        if REDACTOR not in handler.filters:
            handler.addFilter(REDACTOR)


def session_value(token: str) -> str:
    """The cookie value for `token`: HMAC-SHA256 keyed by the token, so the cookie never holds the token,
    cannot be turned back into it, stays valid across restarts with the same token, and dies with it."""
    return hmac.new(token.encode("utf-8"), _SESSION_LABEL, hashlib.sha256).hexdigest()


def is_loopback(host: str) -> bool:
    host = host.strip().strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse to listen beyond this machine without a token, or with one shorter than MIN_TOKEN_CHARS."""
    if is_loopback(host):
        return
    if not token or not token.strip():
        raise UsageError(f"refusing to listen on {host} without a token: anyone who can reach it could use "
                         "this GPU and read every image; pass --token or set ECHO_OS_TOKEN (or bind 127.0.0.1)")
    if len(token.strip()) < MIN_TOKEN_CHARS:
        raise UsageError(f"refusing to listen on {host} with a {len(token.strip())}-character token: use at least "
                         f"{MIN_TOKEN_CHARS} characters, e.g. --token \"$(openssl rand -hex 16)\"")


def check_origin(origin: str) -> str:
    """An --allow-origin value as browsers send it in `Origin` (scheme://host[:port], lower case, no default
    port), or UsageError. `*`, `null` and anything with a path, query or user name are refused: each would
    let pages the user never chose read the catalog or queue renders."""
    from urllib.parse import urlsplit

    def refuse(why: str) -> UsageError:
        return UsageError(f"--allow-origin {origin!r}: {why}; give an absolute http(s) origin such as "
                          "http://localhost:5173")

    text = origin.strip()
    if not text:
        raise refuse("it is empty")
    if text in ("*", "null"):
        raise refuse("a wildcard or null origin would let any web page (or any sandboxed frame) use this server")
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as error:
        raise refuse(f"not an origin ({error})") from None
    if parts.scheme.lower() not in DEFAULT_PORTS:
        raise refuse("only http and https origins are accepted")
    if not parts.hostname or "*" in parts.netloc:
        raise refuse("it names no host")
    if parts.username is not None or parts.password is not None:
        raise refuse("an origin has no user name or password")
    if parts.path not in ("", "/") or parts.query or parts.fragment or text.endswith("?") or text.endswith("#"):
        raise refuse("an origin is scheme://host[:port], with no path, query or fragment")
    scheme = parts.scheme.lower()
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    if port is not None and port != DEFAULT_PORTS[scheme]:
        return f"{scheme}://{host}:{port}"
    return f"{scheme}://{host}"


def check_origins(origins: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(check_origin(origin) for origin in origins))


def resolve_inside(root: Path, *parts: str) -> Path:
    """root/parts resolved (symlinks followed); NotFound-style 404 if it lands outside root."""
    base = root.resolve()
    for part in parts:
        if "\x00" in part:
            raise HTTPException(status_code=404, detail="not found")
    path = base.joinpath(*parts).resolve()
    if not path.is_relative_to(base):
        raise HTTPException(status_code=404, detail="not found")
    return path


def _host_name(host_header: str) -> str:
    """'[::1]:8000' -> '::1', 'localhost:8000' -> 'localhost'."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


@dataclass(frozen=True)
class GuardSettings:
    token: str | None = None
    allowed_origins: tuple[str, ...] = ()  # browser origins allowed to POST besides the server's own
    allowed_hosts: tuple[str, ...] | None = None  # Host header names accepted; None: any
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int):
        super().__init__(status_code=413, detail=f"the request body is larger than {limit:,} bytes")


class Guard:
    """Host check -> token -> cross-site check -> body size; `nosniff` on every response."""

    def __init__(self, app: ASGIApp, settings: GuardSettings):
        self.app = app
        self.settings = settings
        self._token = settings.token.encode("utf-8") if settings.token else None
        self._session = session_value(settings.token).encode("ascii") if settings.token else None
        keep_secrets_out_of_logs(settings.token)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        refusal = self._refusal(scope, headers)
        if refusal is not None:
            await refusal(scope, receive, _with_nosniff(send))
            return
        limit = self.settings.max_body_bytes
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            await _error(413, BodyTooLarge(limit).detail)(scope, receive, _with_nosniff(send))
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        started = False
        send_nosniff = _with_nosniff(send)

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send_nosniff(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge as error:
            if started:
                raise
            await _error(413, error.detail)(scope, receive, send_nosniff)

    def _refusal(self, scope: Scope, headers: Headers) -> Response | None:
        allowed_hosts = self.settings.allowed_hosts
        if allowed_hosts is not None and _host_name(headers.get("host", "")) not in allowed_hosts:
            return _error(400, "unexpected Host header; use the address the server listens on")
        path = scope.get("path", "")
        if self._token is not None and path in LOGIN_PATHS and scope.get("method") in ("GET", "HEAD"):
            login = self._login(scope, path)
            if login is not None:
                return login
        if self._token is not None and path not in OPEN_PATHS and not self._authorized(path, headers):
            response = _error(401, "missing or wrong token: send `Authorization: Bearer <token>` (in a browser, "
                                   f"open {LOGIN_PATH}?{LOGIN_PARAM}=<token>)")
            response.headers["WWW-Authenticate"] = "Bearer"
            return response
        if scope.get("method", "GET") not in SAFE_METHODS and self._cross_site(scope, headers):
            return _error(403, "cross-site requests are refused; call the API from a script or from an "
                               "origin given with --allow-origin")
        return None

    def _login(self, scope: Scope, path: str) -> Response | None:
        """`?token=` on the gallery or the studio: the right one gets the session cookie and a redirect to the same URL
        without it (so the token stays out of history and Referer); a wrong one 401 and no cookie. None when
        the query has no token (the cookie or header decides, as on any route)."""
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        given = [value for name, value in query if name == LOGIN_PARAM]
        if not given:
            return None
        if len(given) != 1 or not hmac.compare_digest(given[0].strip().encode("utf-8"), self._token or b""):
            response: Response = _error(401, f"wrong token in ?{LOGIN_PARAM}=: give the one the server was "
                                                 "started with")
            response.headers["WWW-Authenticate"] = "Bearer"
            return response
        rest = urlencode([(name, value) for name, value in query if name != LOGIN_PARAM])
        response = Response(status_code=303, headers={"Location": path + (f"?{rest}" if rest else ""),
                                                      "Cache-Control": "no-store", "Referrer-Policy": "no-referrer"})
        response.set_cookie(SESSION_COOKIE, (self._session or b"").decode("ascii"), path=COOKIE_PATH, httponly=True,
                            samesite="strict", secure=scope.get("scheme") == "https")
        return response

    def _authorized(self, path: str, headers: Headers) -> bool:
        scheme, _, credentials = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and credentials:
            return hmac.compare_digest(credentials.strip().encode("utf-8"), self._token or b"")
        if path.startswith(COOKIE_PATH + "/") or path == COOKIE_PATH:
            session = _cookie(headers, SESSION_COOKIE)
            return session is not None and hmac.compare_digest(session.encode("utf-8"), self._session or b"")
        return False

    def _cross_site(self, scope: Scope, headers: Headers) -> bool:
        """Browsers label every request; scripts and the openai client send neither header."""
        origin = headers.get("origin")
        if origin is not None and origin in self.settings.allowed_origins:
            return False
        fetch_site = headers.get("sec-fetch-site")
        if fetch_site is not None and fetch_site not in ("same-origin", "none"):
            return True
        if origin is not None:
            own = f"{scope.get('scheme', 'http')}://{headers.get('host', '')}"
            return origin.lower() != own.lower()
        return False


def _cookie(headers: Headers, name: str) -> str | None:
    cookies = SimpleCookie()
    try:
        cookies.load(headers.get("cookie", ""))
    except CookieError:
        return None
    morsel = cookies.get(name)
    return morsel.value if morsel is not None else None


def _error(status: int, detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status)


def _with_nosniff(send: Send) -> Send:
    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            MutableHeaders(scope=message).setdefault("X-Content-Type-Options", "nosniff")
        await send(message)
    return wrapped
