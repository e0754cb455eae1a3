"""Which models the service has loaded: lazy loading, idle unloading, a memory budget.

A request naming a cached model that is not loaded starts loading it, once, however
many requests ask for it; each waits at most ``--load-wait`` seconds for the load,
then gets a 503 ``model_loading`` with ``Retry-After`` while the load goes on. A
model idle for its keep-alive time is unloaded. Loading a model that would overrun
``--max-memory`` first unloads the least recently used idle models.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from slmops.cache.resolver import looks_like_path, resolve
from slmops.errors import ModelNotFound
from slmops.runtime.batched import BatchedDecoder
from slmops.runtime.model import Model, check_text_model
from slmops.server.config import ServerConfig
from slmops.server.errors import APIError
from slmops.server.scheduler import Scheduler

log = logging.getLogger("slmops.server")
MIN_BATCHED_LENGTH = 256  # below this, most requests would not fit a row: not worth the memory
RETRY_AFTER_S = 2  # a retried request waits up to --load-wait again, so a short pause is enough


@dataclass(eq=False)
class Loaded:
    """A loaded model, the scheduler that runs its requests, and when it was last used."""

    name: str
    model: Model
    scheduler: Scheduler
    size_bytes: int
    ttl: float
    loaded_at: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.monotonic)

    def touch(self) -> None:
        self.last_used = time.monotonic()

    def idle_for(self) -> float:
        return 0.0 if self.scheduler.busy else time.monotonic() - self.last_used


class Registry:
    """The loaded models, by case-folded name."""

    def __init__(self, config: ServerConfig, observer=None) -> None:
        self.config = config
        self.observer = observer
        self.loaded: dict[str, Loaded] = {}
        self.folders: dict[str, tuple[str, Path]] = {}  # models served from a folder path
        self.pending: dict[str, tuple[str, asyncio.Task]] = {}  # loads under way: key -> (name, task)
        self.startup: set[str] = set()  # models named at start-up and not loaded yet: not ready
        self.failed: dict[str, str] = {}  # the last load error of each model that failed to load
        self.closing = False

    # ---- finding ----------------------------------------------------------

    def add_folder(self, folder: Path) -> str:
        """Serve a model folder outside the cache under its own name; returns the name."""
        model = resolve(Path(folder))
        self.folders[model.name.casefold()] = (model.name, model.path)
        return model.name

    def catalog(self) -> list[tuple[str, Path]]:
        """Every model the service can serve: the valid cached ones and the given folders."""
        from slmops.cache import store

        found = {model.name.casefold(): (model.name, Path(model.path)) for model in store.scan() if model.valid}
        found.update(self.folders)
        return sorted(found.values(), key=lambda item: item[0].casefold())

    def locate(self, name: str) -> tuple[str, Path]:
        """The display name and folder of a servable model (404 for unknown or path-like names)."""
        from slmops.cache import store

        store.check_name(name)  # a name that looks like a path never reaches the file system
        if name.casefold() in self.folders:
            return self.folders[name.casefold()]
        entry = store.find(name)
        return entry.name, Path(entry.path)

    # ---- loading ----------------------------------------------------------

    async def get(self, name: str, ttl: float | None = None, wait: float | None = None) -> Loaded:
        """The loaded model called ``name``, loading it first if needed.

        Args:
            ttl: seconds it stays loaded while idle (default: as it is, or --keep-alive).
            wait: longest wait for a load under way (default --load-wait; ``math.inf``: until done).

        Raises:
            APIError: 404 for an unknown or path-like name; 503 while it loads past ``wait``
                (``model_loading``, with Retry-After) or while shutting down.
        """
        self._check_open()
        key = name.casefold()
        if key in self.loaded:
            return self._touch(self.loaded[key], ttl)
        display, folder = await asyncio.to_thread(self.locate, name)
        if display.casefold() not in self.loaded and display.casefold() not in self.pending:
            # A request's mistake, not a failed load: nothing is unloaded or logged for it.
            check_text_model(await asyncio.to_thread(resolve, folder))
        # Looked up after the last await: a load that ended meanwhile is not started again.
        entry = self.loaded.get(display.casefold())
        if entry is None:
            entry = await self._wait(self.start_load(display, folder), display, wait)
        return self._touch(entry, ttl)

    def start_load(self, name: str, folder: Path) -> asyncio.Task:
        """The load of ``name`` under way, started if none is; every caller shares it."""
        key = name.casefold()
        if key not in self.pending:
            task = asyncio.create_task(self._load(name, folder))
            task.add_done_callback(lambda done: self._finish_load(key, name, done))
            self.pending[key] = (name, task)
        return self.pending[key][1]

    def preload(self, item: str) -> None:
        """Start loading a model named at start-up; the service is not ready until it is loaded.

        Raises:
            SlmopsError: ``item`` is neither a cached name nor a model folder (the start fails).
        """
        name = self.add_folder(Path(item)) if looks_like_path(item) else item
        display, folder = self.locate(name)
        if resolve(folder).is_embedding:  # served by /v1/embeddings, which loads it on its first request
            return
        self.startup.add(display.casefold())
        self.start_load(display, folder)

    async def _wait(self, task: asyncio.Task, name: str, wait: float | None) -> Loaded:
        limit = self.config.load_wait if wait is None else wait
        try:
            # shield: a request that gives up (or disconnects) never cancels the load others share
            return await asyncio.wait_for(asyncio.shield(task), None if math.isinf(limit) else limit)
        except asyncio.TimeoutError:
            raise APIError(
                503,
                f"{name} is loading; retry in a few seconds.",
                "model",
                "model_loading",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            ) from None

    def _finish_load(self, key: str, name: str, task: asyncio.Task) -> None:
        self.pending.pop(key, None)
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            self.failed[key] = str(error) or type(error).__name__
            log.error("loading %s failed: %s", name, self.failed[key])
            return
        entry = task.result()
        if self.closing:  # the service stopped while this model loaded: nobody will use it
            entry.scheduler.close(cancel=True)
            return
        self.loaded[key] = entry
        self.startup.discard(key)
        self.failed.pop(key, None)

    def _check_open(self) -> None:
        if self.closing:
            raise APIError(503, "The service is shutting down; retry on another instance.", code="shutting_down")

    def _touch(self, entry: Loaded, ttl: float | None) -> Loaded:
        entry.touch()
        if ttl is not None:
            entry.ttl = ttl
        return entry

    async def _load(self, name: str, folder: Path) -> Loaded:
        from slmops.runtime.model import Model

        size = _folder_size(folder)
        self._make_room(size, name)
        # With batching, the batch's session runs the weights: the generator's copy loads only
        # for what a row cannot hold (see docs/server.md#memory).
        model = await asyncio.to_thread(Model.from_folder, resolve(folder), self.config.threads, self.config.batching)
        if not self.config.speculative:  # every request's options start from the model's defaults
            model.defaults = model.defaults.replace(speculative=False)
        decoder = await asyncio.to_thread(self._decoder, model)
        if decoder is None:
            await asyncio.to_thread(lambda: model.og_model)
        scheduler = Scheduler(name, self.config.parallel, self.config.max_queue, self.observer, decoder)
        log.info("loaded %s from %s in %.1f s", name, folder, model.load_s)
        log.info("%s reserved: %s", name, _reserved(size, decoder))
        size += decoder.nbytes + decoder.prefix.budget if decoder else 0
        return Loaded(name, model, scheduler, size, self.config.keep_alive)

    def _decoder(self, model) -> BatchedDecoder | None:
        """A batched decoder for ``model``, or None when batching is off or cannot run it."""
        if not self.config.batching or not BatchedDecoder.supports(model):
            return None
        per_row = self.config.kv_budget // (self.config.parallel * BatchedDecoder.token_bytes(model))
        length = min(model.context_length, self.config.max_seq_len, per_row)
        if length < MIN_BATCHED_LENGTH:
            log.warning(
                "%s runs without batching: its KV cache is too large for %d rows", model.name, self.config.parallel
            )
            return None
        prefix = self.config.prefix_cache
        if prefix is None:  # a quarter of the rows' tokens: long system prompts and a few conversations
            prefix = self.config.parallel * length * BatchedDecoder.token_bytes(model) // 4
        try:
            return BatchedDecoder(model, self.config.parallel, length, prefix)
        except Exception as exc:  # an unusual graph: its requests run one generator each instead
            log.warning("%s runs without batching: %s", model.name, exc)
            return None

    def _make_room(self, size: int, name: str) -> None:
        budget = self.config.max_memory
        if not budget:
            return
        if size > budget:
            raise APIError(
                503, f"{name} needs {size >> 20} MB, more than --max-memory allows; raise it.", code="memory_budget"
            )
        for entry in sorted(self.loaded.values(), key=lambda item: item.last_used):
            if sum(item.size_bytes for item in self.loaded.values()) + size <= budget:
                return
            if not entry.scheduler.busy:
                self.unload(entry.name)
        if sum(item.size_bytes for item in self.loaded.values()) + size > budget:
            raise APIError(
                503,
                f"Not enough of --max-memory free for {name}: the loaded models are busy; retry later.",
                code="memory_budget",
                headers={"Retry-After": "5"},
            )

    # ---- unloading --------------------------------------------------------

    def unload(self, name: str, force: bool = False) -> bool:
        """Unload ``name``; False if it was not loaded.

        Raises:
            APIError: 409 if it is answering requests and ``force`` is off.
        """
        entry = self.loaded.get(name.casefold())
        if entry is None:
            return False
        if entry.scheduler.busy and not force:
            raise APIError(
                409, f"{entry.name} is answering requests; wait, or unload with force=true.", "name", "model_busy"
            )
        del self.loaded[name.casefold()]
        entry.scheduler.close(cancel=True)
        log.info("unloaded %s", entry.name)
        return True

    def unload_all(self, force: bool = True) -> list[str]:
        names = [entry.name for entry in list(self.loaded.values())]
        return [name for name in names if self.unload(name, force)]

    def reap(self) -> list[str]:
        """Unload the models idle longer than their keep-alive; returns their names."""
        expired = [entry.name for entry in self.loaded.values() if entry.idle_for() > entry.ttl]
        return [name for name in expired if self.unload(name)]

    def shutdown(self, grace: float) -> None:
        """Stop taking requests; let running answers finish for ``grace`` seconds, then cancel them.

        A load still under way is dropped when it ends (see ``_finish_load``).
        """
        self.closing = True
        deadline = time.monotonic() + grace
        while any(entry.scheduler.busy for entry in self.loaded.values()) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.unload_all(force=True)

    # ---- state ------------------------------------------------------------

    @property
    def loading(self) -> list[str]:
        """Names of the models loading now."""
        return sorted(name for name, _ in self.pending.values())

    def readiness(self) -> tuple[str, dict]:
        """``ok``, ``loading`` (models named at start-up still load), ``failed`` or ``shutting_down``,
        and the failed start-up models' errors."""
        if self.closing:
            return "shutting_down", {}
        if not self.startup:
            return "ok", {}
        if self.startup & self.pending.keys():
            return "loading", {}
        return "failed", {key: self.failed.get(key, "not loaded") for key in sorted(self.startup)}

    def prefix_totals(self) -> tuple[int, int, int, int]:
        """Prefix cache hits, reused tokens, evictions and bytes held, over every loaded model."""
        caches = [e.scheduler.decoder.prefix for e in self.loaded.values() if e.scheduler.decoder is not None]
        return (
            sum(cache.hits for cache in caches),
            sum(cache.reused_tokens for cache in caches),
            sum(cache.evictions for cache in caches),
            sum(cache.used for cache in caches),
        )

    def totals(self) -> tuple[int, int]:
        """Waiting and running sequences over every loaded model."""
        entries = list(self.loaded.values())
        return sum(e.scheduler.queued for e in entries), sum(e.scheduler.active for e in entries)


def _reserved(weights: int, decoder: BatchedDecoder | None) -> str:
    """What a loaded model holds, for a user sizing a machine."""
    text = f"weights {weights >> 20} MB"
    if decoder is None:
        return text + ", KV cache per request (no batch rows)"
    return (
        f"{text} (once; a second copy loads if a request needs a generator of its own), KV cache "
        f"{decoder.rows} rows x {decoder.max_length} tokens ({decoder.nbytes >> 20} MB of {decoder.cache[0].dtype}, "
        f"resident as rows fill), prefix cache up to {decoder.prefix.budget >> 20} MB"
    )


def _folder_size(folder: Path) -> int:
    try:
        return sum(path.stat().st_size for path in Path(folder).iterdir() if path.is_file())
    except OSError as exc:
        raise ModelNotFound(f"{folder} cannot be read ({exc.strerror}); check the model folder.") from exc
