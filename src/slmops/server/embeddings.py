"""``POST /v1/embeddings``: vectors from models converted with ``slmops convert --task embedding``.

Embedding models run on their own onnxruntime session (:class:`~slmops.runtime.embed.Embedder`),
not on the text models' scheduler: a request is one forward pass over its batch of inputs,
run in a worker thread, one request per model at a time. A loaded embedding model is
unloaded after ``--keep-alive`` seconds without requests.
"""

from __future__ import annotations

import asyncio
import base64
import time
from dataclasses import dataclass, field

import numpy as np
from fastapi import APIRouter, Request

from slmops.cache.resolver import resolve
from slmops.errors import SlmopsError
from slmops.runtime.embed import Embedder
from slmops.server.embedding_protocol import EmbeddingItem, EmbeddingList, EmbeddingRequest, EmbeddingUsage
from slmops.server.errors import APIError, from_slmops
from slmops.server.protocol import ErrorResponse
from slmops.server.registry import Registry

router = APIRouter(responses={status: {"model": ErrorResponse} for status in (400, 401, 404, 413, 422, 503)})


@dataclass(eq=False)
class LoadedEmbedder:
    embedder: Embedder
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    last_used: float = field(default_factory=time.monotonic)


class Embedders:
    """The embedding models a service has loaded, by case-folded name; each loads once however many ask."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.loaded: dict[str, LoadedEmbedder] = {}
        self.pending: dict[str, asyncio.Task] = {}

    async def get(self, name: str) -> LoadedEmbedder:
        """The loaded embedding model ``name`` (404 unknown, 400 a text model)."""
        if self.registry.closing:
            raise APIError(503, "The service is shutting down; retry on another instance.", code="shutting_down")
        self._reap()
        display, folder = await asyncio.to_thread(self.registry.locate, name)
        key = display.casefold()
        if key not in self.loaded:
            if key not in self.pending:
                self.pending[key] = asyncio.create_task(self._load(display, folder))
            try:
                self.loaded[key] = await asyncio.shield(self.pending[key])
            finally:
                self.pending.pop(key, None)
        entry = self.loaded[key]
        entry.last_used = time.monotonic()
        return entry

    async def _load(self, name: str, folder) -> LoadedEmbedder:
        model_folder = await asyncio.to_thread(resolve, folder)
        if not model_folder.is_embedding:
            raise APIError(
                400,
                f"{name} is a text model, not an embedding model; /v1/embeddings needs a model converted "
                "with `slmops convert --task embedding`.",
                "model",
                "model_not_embedding",
            )
        embedder = await asyncio.to_thread(Embedder.from_folder, model_folder, self.registry.config.threads)
        return LoadedEmbedder(embedder)

    def _reap(self) -> None:
        """Unload the embedding models idle longer than --keep-alive."""
        limit = self.registry.config.keep_alive
        now = time.monotonic()
        for key, entry in list(self.loaded.items()):
            if now - entry.last_used > limit and not entry.lock.locked():
                del self.loaded[key]


def embedders(request: Request) -> Embedders:
    state = request.app.state
    if getattr(state, "embedders", None) is None:
        state.embedders = Embedders(state.registry)
    return state.embedders


@router.post("/v1/embeddings", response_model=EmbeddingList)
async def create_embeddings(body: EmbeddingRequest, request: Request) -> EmbeddingList:
    """Embed one input or a batch of them with an embedding model."""
    entry = await embedders(request).get(body.model)
    embedder = entry.embedder
    if body.dimensions is not None and body.dimensions > embedder.dimensions:
        raise APIError(
            400,
            f"dimensions must be at most {embedder.dimensions} for {embedder.name}, got {body.dimensions}.",
            "dimensions",
            "invalid_parameter",
        )
    async with entry.lock:
        try:
            vectors, tokens = await asyncio.to_thread(_embed, embedder, body.inputs(), body.dimensions)
        except SlmopsError as exc:
            error = from_slmops(exc)
            error.param = "input" if error.status == 400 else error.param
            raise error from exc
        entry.last_used = time.monotonic()
    data = [
        EmbeddingItem(index=index, embedding=_encode(vector, body.encoding_format))
        for index, vector in enumerate(vectors)
    ]
    usage = EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens)
    return EmbeddingList(data=data, model=embedder.name, usage=usage)


def _embed(embedder: Embedder, inputs: list, dimensions: int | None) -> tuple[np.ndarray, int]:
    """The vectors of ``inputs`` (texts or token-id lists) and how many tokens they had, off the event loop."""
    ids = embedder.encode(inputs) if isinstance(inputs[0], str) else inputs
    return embedder.embed_ids(ids, dimensions), sum(len(item) for item in ids)


def _encode(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector.astype(np.float32).tolist()
