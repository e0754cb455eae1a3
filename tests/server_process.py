"""A real `slmops serve` process on loopback, for the server test modules."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import httpx
import pytest

from slmops.server import process
from slmops.server.process import free_port

__all__ = ["ServerProcess", "cached_server", "free_port"]


def cached_server(home: Path, folder: Path, name: str, *args: str) -> ServerProcess:
    """A ready server whose cache under ``home`` holds ``folder`` (linked) as ``name``."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SLMOPS_HOME", str(home))
        from slmops.cache import store

        store.add(folder, name=name, link=True)
    return ServerProcess(home, *args).wait_ready()


class ServerProcess(process.ServerProcess):
    """`python -m slmops serve ...` with its own SLMOPS_HOME, logging to ``home/serve.log``."""

    def __init__(self, home: Path, *args: str, env: dict | None = None) -> None:
        self.home = home
        home.mkdir(parents=True, exist_ok=True)
        environment = dict(os.environ, SLMOPS_HOME=str(home), PYTHONUNBUFFERED="1", **(env or {}))
        command = [sys.executable, "-m", "slmops", "serve", "--log-level", "warning", *args]
        super().__init__(command, home / "serve.log", environment, label="slmops serve")

    def metric(self, name: str, headers: dict | None = None) -> float:
        for line in httpx.get(self.url + "/metrics", headers=headers, timeout=5).text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        raise KeyError(name)
