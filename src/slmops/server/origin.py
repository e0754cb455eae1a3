"""Which web pages may call the service: its own by default, others named with ``--cors``.

A browser sends ``Origin`` with every cross-site fetch; a request whose origin is neither
the service itself nor one allowed by ``--cors`` is refused before it reaches a route, so a
page on another site cannot make a user's browser load, unload or query models. Clients
that are not browsers send no ``Origin`` and are not affected.
"""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from slmops.server.errors import APIError


def install(app: FastAPI, cors: Sequence[str]) -> None:
    """Refuse foreign origins; with ``cors``, answer those origins' preflights and allow them."""
    app.add_middleware(SameOrigin, allowed=tuple(cors))
    if cors:  # added last, so it runs first: preflights never need the API key
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(cors),
            allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=["Retry-After"],
        )


class SameOrigin:
    """403 for a browser request from an origin other than the service's own or an allowed one."""

    def __init__(self, app, allowed: tuple[str, ...]) -> None:
        self.app, self.allowed = app, allowed

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            headers = dict(scope.get("headers", []))
            origin = headers.get(b"origin", b"").decode("latin-1")
            if origin and not self._allowed(origin, scope, headers):
                error = APIError(
                    403,
                    f"Requests from {origin} are not allowed; start the service with --cors {origin} to allow them.",
                    code="origin_not_allowed",
                )
                return await error.response()(scope, receive, send)
        return await self.app(scope, receive, send)

    def _allowed(self, origin: str, scope, headers: dict) -> bool:
        if "*" in self.allowed or origin in self.allowed:
            return True
        # The page's own origin names the Host it was loaded from; the scheme is left out, as
        # behind a TLS proxy the service sees http for a page the browser loaded over https.
        host = headers.get(b"host", b"").decode("latin-1")
        return bool(host) and origin.partition("://")[2] == host
