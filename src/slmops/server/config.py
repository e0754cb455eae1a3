"""How the service runs: the `slmops serve` settings."""

from __future__ import annotations

from dataclasses import dataclass

# Where `slmops serve`, `service start` and the clients meet unless told otherwise.
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5273


@dataclass
class ServerConfig:
    """How the service runs models (the `slmops serve` flags)."""

    parallel: int = 8
    max_queue: int = 64
    keep_alive: float = 600.0
    max_memory: int | None = None
    threads: int | None = None
    api_key: str | None = None
    max_body: int = 4 * 1024 * 1024
    grace: float = 10.0
    batching: bool = True
    max_seq_len: int = 2048
    kv_budget: int = 1 << 30  # bytes of batched KV cache per model; fewer tokens per row when larger
    load_wait: float = 10.0  # seconds a request waits for its model to load before a 503
    ui: bool = True  # the web playground at /
    cors: tuple[str, ...] = ()  # origins other than its own whose pages may call the service
    prefix_cache: int | None = None  # bytes of KV kept for prefix reuse per model; None: sized from the model
    speculative: bool = True  # prompt-lookup drafts for greedy answers, in batch rows and on generators
