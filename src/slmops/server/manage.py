"""Management routes, named as Foundry Local's service names them, plus /health and /metrics."""

from __future__ import annotations

import asyncio
import math
import os
import time

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from slmops.errors import SlmopsError
from slmops.server import generation
from slmops.server.errors import from_slmops
from slmops.server.openai_api import ERRORS, registry
from slmops.server.protocol import CountRequest, TokenCount

router = APIRouter(responses=ERRORS)


@router.get("/health")
async def health(request: Request):
    """Liveness and readiness: 200 once the models named at start-up are loaded; 503 with status
    ``loading`` before, ``failed`` if one of them could not load, ``shutting_down`` after SIGTERM."""
    reg = registry(request)
    queued, active = reg.totals()
    status, failed = reg.readiness()
    body = {
        "status": status,
        "loaded": [e.name for e in reg.loaded.values()],
        "loading": reg.loading,
        "queued": queued,
        "active": active,
    } | ({"failed": failed} if failed else {})
    return JSONResponse(body, status_code=200 if status == "ok" else 503)


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(request: Request):
    """Counters and gauges in Prometheus' text format."""
    reg = registry(request)
    queued, active = reg.totals()
    text = request.app.state.metrics.render(queued, active, len(reg.loaded), len(reg.pending), reg.prefix_totals())
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4")


@router.get("/openai/models")
async def cached_models(request: Request) -> list[str]:
    """Names of every model this service can load."""
    return [name for name, _ in await asyncio.to_thread(registry(request).catalog)]


@router.get("/openai/loadedmodels")
async def loaded_models(request: Request) -> list[str]:
    """Names of the models loaded now."""
    return [entry.name for entry in registry(request).loaded.values()]


@router.get("/openai/load/{name:path}")
async def load(
    request: Request,
    name: str,
    ttl: float | None = Query(None, ge=0, le=10**7, description="Seconds idle before unloading."),
):
    """Load a model now (it stays loaded ``ttl`` seconds idle, default --keep-alive).

    Unlike a completion, this waits for the whole load: loading is what it was asked for."""
    entry = await registry(request).get(name, ttl, wait=math.inf)
    return {"name": entry.name, "loaded": True, "ttl": entry.ttl}


@router.get("/openai/unload/{name:path}")
async def unload(
    request: Request,
    name: str,
    force: bool = Query(False, description="Unload even while it answers requests (they are cancelled)."),
):
    """Unload a model; without ``force``, a model answering requests is a 409."""
    reg = registry(request)
    try:
        display, _ = await asyncio.to_thread(reg.locate, name)
    except SlmopsError as exc:
        raise from_slmops(exc) from exc
    return {"name": display, "unloaded": reg.unload(display, force)}


@router.get("/openai/unloadall")
async def unload_all(request: Request):
    """Unload every model, cancelling what they are answering."""
    return {"unloaded": registry(request).unload_all(force=True)}


@router.get("/openai/status")
async def status(request: Request):
    """Where the service listens, its model cache, and what it has loaded."""
    from slmops.cache import store

    reg = registry(request)
    state = request.app.state
    return {
        "endpoints": [state.base_url] if getattr(state, "base_url", None) else [],
        "modelDirPath": str(store.location()),
        "pid": os.getpid(),
        "uptime_s": round(time.time() - state.started, 1),
        "loadedModels": [entry.name for entry in reg.loaded.values()],
    }


@router.post("/v1/chat/completions/tokenizer/encode/count", response_model=TokenCount)
async def count_tokens(body: CountRequest, request: Request):
    """Tokens the prompt of a chat request (or a plain text) takes with the model's tokenizer."""
    loaded = await registry(request).get(body.model)
    try:
        if body.messages:
            ids = loaded.model.prompt_ids(generation.history(body.messages))
        else:
            ids = loaded.model.encode(body.prompt or "")
    except SlmopsError as exc:
        raise from_slmops(exc) from exc
    return TokenCount(tokenCount=len(ids))
