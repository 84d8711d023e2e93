"""Who may use the playground's page, API and feed: its own page, opened with this run's token.

The playground drives a real bot that may hold the user's real Claude credentials and runs
tools on approval, so "it listens on 127.0.0.1" is not enough: any web page the user visits
can make requests to 127.0.0.1 (and read the feed's signed button values), and a page on a
rebinding domain is even same-origin with itself. Every request must therefore:

- name this server in ``Host`` (``127.0.0.1:PORT`` or ``localhost:PORT``): DNS rebinding;
- carry no ``Origin`` but the page's own: browsers send it on every POST, fetch and websocket,
  so a foreign page cannot hide it (a missing one means a non-browser client, which still
  needs the token); ``Sec-Fetch-Site``, when a browser sends it, must say same-origin (or
  "none": typed or opened from the terminal), which covers the GETs that carry no Origin
  (an ``<img>`` on another localhost port is same-site, so it would carry the cookie);
- present the token: opening ``/?token=T`` once turns it into an ``HttpOnly``,
  ``SameSite=Strict`` cookie (Jupyter's pattern) that the page's requests and its websocket
  carry; scripts may send ``Authorization: Bearer T`` instead;
- send JSON to the JSON endpoints as ``application/json``, which a cross-site form or a
  no-preflight fetch cannot.

Refusals are 403 with a one-line reason, decided before any body is read.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

__all__ = ["Guard", "guard_middleware"]

JSON_PATHS = frozenset({"/api/send", "/api/action"})
UPLOAD_PATHS = frozenset({"/api/upload"})
PUBLIC_PREFIX = "/static/"  # the page's script and style sheet: nothing in them is secret
ALLOWED_FETCH_SITES = frozenset({"same-origin", "none"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class Guard:
    """This run's token and the names the page is served under; `refusal` is pure."""

    token: str
    port: int
    host: str = "127.0.0.1"

    @property
    def cookie_name(self) -> str:
        # Cookies ignore ports: two playgrounds on one machine must not overwrite each other.
        return f"playground_token_{self.port}"

    @property
    def hosts(self) -> frozenset[str]:
        names = {"127.0.0.1", "localhost", self.host}
        return frozenset(f"[{n}]:{self.port}" if ":" in n else f"{n}:{self.port}" for n in names)

    @property
    def origins(self) -> frozenset[str]:
        return frozenset(f"http://{host}" for host in self.hosts)

    def token_ok(self, presented: str | None) -> bool:
        return presented is not None and hmac.compare_digest(
            presented.encode(), self.token.encode()
        )

    def refusal(
        self,
        *,
        method: str,
        path: str,
        host: str | None,
        origin: str | None,
        fetch_site: str | None,
        content_type: str,
        presented: str | None,
    ) -> str | None:
        """Why this request is refused (one line), or None when it may go ahead.

        `presented` is the token the request carries (cookie, bearer header, or ``?token=`` on
        the page itself); `content_type` is the bare MIME type.
        """
        if host is None or host.lower() not in self.hosts:
            return f"Host {host or '(none)'!s:.60} is not this playground (DNS rebinding?)"
        if origin is not None and origin not in self.origins:
            return f"requests from {origin:.60} are not accepted: only from this playground's page"
        if fetch_site is not None and fetch_site not in ALLOWED_FETCH_SITES:
            return f"a {fetch_site:.20} request is not accepted: only from this playground's page"
        if path.startswith(PUBLIC_PREFIX):
            return None
        if not self.token_ok(presented):
            if presented is None:
                return "no token: open the address the terminal printed (it ends in ?token=…)"
            return "wrong token: open the address this run printed in the terminal"
        if method == "POST" and path in JSON_PATHS and content_type != "application/json":
            return f"{content_type or 'no Content-Type'} refused: send application/json"
        if method == "POST" and path in UPLOAD_PATHS and content_type != "multipart/form-data":
            return f"{content_type or 'no Content-Type'} refused: send multipart/form-data"
        return None

    def presented(self, request: web.Request) -> str | None:
        """The token a request carries, wherever it is allowed to carry it."""
        if request.path == "/" and "token" in request.query:
            return request.query["token"]
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        return request.cookies.get(self.cookie_name)

    def login(self) -> web.StreamResponse:
        """The answer to ``/?token=`` with the right token: the cookie, and the page without
        the token in the address bar (nor in its history or a screenshot)."""
        response = web.Response(status=303, headers={"Location": "/"})
        response.set_cookie(
            self.cookie_name, self.token, path="/", httponly=True, samesite="Strict"
        )
        response.headers["Cache-Control"] = "no-store"
        return response


def _mime(request: web.Request) -> str:
    # Not `request.content_type`: it reports a missing header as application/octet-stream.
    return request.headers.get("Content-Type", "").partition(";")[0].strip().lower()


def _forbidden(reason: str) -> web.Response:
    return web.Response(status=403, text=reason + "\n", headers={"Cache-Control": "no-store"})


def guard_middleware(
    get_guard: Callable[[], Guard | None],
) -> Callable[..., Awaitable[web.StreamResponse]]:
    """An aiohttp middleware applying `Guard.refusal` to every request (the websocket too).

    `get_guard` returns None until the server knows its port; nothing is served before then.
    """

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        guard = get_guard()
        if guard is None:
            return _forbidden("the playground is starting")
        presented = guard.presented(request)
        reason = guard.refusal(
            method=request.method,
            path=request.path,
            host=request.headers.get("Host"),
            origin=request.headers.get("Origin"),
            fetch_site=request.headers.get("Sec-Fetch-Site"),
            content_type=_mime(request) if request.method == "POST" else "",
            presented=presented,
        )
        if reason is not None:
            return _forbidden(reason)
        if request.path == "/" and "token" in request.query:
            return guard.login()
        return await handler(request)

    return middleware
