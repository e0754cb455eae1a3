"""The FastAPI application: routes, the API key, the body limit, metrics and the lifespan.

The middlewares are plain ASGI (not ``BaseHTTPMiddleware``) so that a client
disconnecting mid-stream reaches the streaming response at once and cancels its
sequence.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
from collections.abc import Sequence

from fastapi import FastAPI

from slmops import __version__
from slmops.server import errors, origin
from slmops.server.config import ServerConfig
from slmops.server.errors import APIError
from slmops.server.metrics import Metrics
from slmops.server.registry import Registry

log = logging.getLogger("slmops.server")
OPEN_PATHS = ("/health", "/metrics")  # probes and scrapers need no key
REAP_EVERY_S = 1.0
KNOWN_PATHS = {
    "/health",
    "/metrics",
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/models",
    "/v1/responses",
    "/openai/models",
    "/openai/loadedmodels",
    "/openai/unloadall",
    "/openai/status",
    "/openapi.json",
    "/docs",
    "/v1/chat/completions/tokenizer/encode/count",
}


def create_app(config: ServerConfig | None = None, models: Sequence[str] = ()) -> FastAPI:
    """The service as an ASGI app.

    Args:
        config: how to run models (parallel sequences, queue, keep-alive, key, ...).
        models: cached names or model folders to load at start-up.
    """
    config = config or ServerConfig()
    metrics = Metrics()
    registry = Registry(config, observer=_observer(metrics))
    app = FastAPI(
        title="slmops",
        version=__version__,
        lifespan=_lifespan(registry, list(models)),
        description="OpenAI-compatible service for small language models on onnxruntime-genai.",
    )
    app.state.registry, app.state.metrics, app.state.config = registry, metrics, config
    app.state.started = time.time()
    errors.install(app)
    from slmops.server import embeddings, manage, openai_api, responses

    app.include_router(openai_api.router)
    app.include_router(responses.router)
    app.include_router(embeddings.router)
    app.include_router(manage.router)
    if config.ui:
        from slmops.server import ui

        app.include_router(ui.router)
    app.add_middleware(Guard, config=config, metrics=metrics)
    origin.install(app, config.cors)
    return app


def _observer(metrics: Metrics):
    def observe(job, response) -> None:
        metrics.token(response, job.last_elapsed)
        job.last_elapsed = response.elapsed_s

    return observe


def _lifespan(registry: Registry, models: list[str]):
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        registry.closing = False  # an app can be started again after a shutdown (test clients do)
        for item in models:
            # An unknown name fails the start here; the loads themselves go on while the
            # service already answers, /health saying "loading" until they are done.
            registry.preload(item)
        reaper = asyncio.create_task(_reap(registry))
        try:
            yield
        finally:
            reaper.cancel()
            await asyncio.to_thread(registry.shutdown, 0.0)

    return lifespan


async def _reap(registry: Registry) -> None:
    while True:
        await asyncio.sleep(REAP_EVERY_S)
        for name in registry.reap():
            log.info("unloaded %s after its keep-alive", name)


class Guard:
    """API key, body size limit and request metrics, in front of every route."""

    def __init__(self, app, config: ServerConfig, metrics: Metrics) -> None:
        self.app, self.config, self.metrics = app, config, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        status = {"code": 500}

        async def counted_send(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            refusal = self._refuse(scope, path)
            if refusal is not None:
                await _send_error(refusal, counted_send)
                return
            await self.app(scope, self._limited(receive), counted_send)
        finally:
            self.metrics.request(_route_label(path), status["code"])

    def _refuse(self, scope, path: str) -> APIError | None:
        headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope.get("headers", [])}
        if self.config.api_key and not _open(path, self.config):
            given = headers.get("authorization", "")
            token = given[7:] if given.lower().startswith("bearer ") else headers.get("api-key", "")
            if not hmac.compare_digest(token.encode(), self.config.api_key.encode()):
                return APIError(
                    401,
                    "Missing or wrong API key: send 'Authorization: Bearer <key>'.",
                    code="invalid_api_key",
                    headers={"WWW-Authenticate": "Bearer"},
                )
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.config.max_body:
            return _too_large(self.config.max_body)
        return None

    def _limited(self, receive):
        seen = {"bytes": 0}
        limit = self.config.max_body

        async def wrapped():
            message = await receive()
            if message["type"] == "http.request":
                seen["bytes"] += len(message.get("body", b""))
                if seen["bytes"] > limit:  # a chunked body that never said its length
                    raise _too_large(limit)
            return message

        return wrapped


def _open(path: str, config: ServerConfig) -> bool:
    # The page and its files hold no data: it asks for the key itself when the API answers 401.
    return path in OPEN_PATHS or (config.ui and (path == "/" or path.startswith("/ui/static/")))


def _too_large(limit: int) -> APIError:
    return APIError(413, f"The request body is larger than {limit // 1024} KB.", code="body_too_large")


def _route_label(path: str) -> str:
    # Bounded label values: model names in paths would grow the series without limit.
    for prefix in ("/openai/load/", "/openai/unload/", "/v1/models/", "/v1/responses/"):
        if path.startswith(prefix):
            return prefix + "{name}"
    return path if path in KNOWN_PATHS else "other"


async def _send_error(error: APIError, send) -> None:
    body = json.dumps(error.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(key.lower().encode(), value.encode()) for key, value in error.headers.items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
