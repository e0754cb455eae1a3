"""`slmops serve`'s app in this process (FastAPI's TestClient), for tests of the tiny models."""

from __future__ import annotations

import time

from fastapi.testclient import TestClient

from slmops.server import ServerConfig, create_app


def wait_healthy(client: TestClient) -> None:
    """Return once ``/health`` answers 200 (the model loads in the background), at most a minute."""
    for _ in range(600):
        if client.get("/health").status_code == 200:
            return
        time.sleep(0.1)


def serve(folder, **config) -> TestClient:
    """The app serving ``folder`` on one thread, entered and healthy; the caller exits it."""
    client = TestClient(create_app(ServerConfig(load_wait=60, threads=1, **config), [str(folder)]))
    client.__enter__()
    wait_healthy(client)
    return client
