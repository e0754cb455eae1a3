"""A real `slmops serve` process on loopback, for the server test modules."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cached_server(home: Path, folder: Path, name: str, *args: str) -> ServerProcess:
    """A ready server whose cache under ``home`` holds ``folder`` (linked) as ``name``."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SLMOPS_HOME", str(home))
        from slmops.cache import store

        store.add(folder, name=name, link=True)
    return ServerProcess(home, *args).wait_ready()


class ServerProcess:
    """`python -m slmops serve ...` with its own SLMOPS_HOME; ``url`` is its base URL."""

    def __init__(self, home: Path, *args: str, env: dict | None = None) -> None:
        self.home = home
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = home / "serve.log"
        home.mkdir(parents=True, exist_ok=True)
        environment = dict(os.environ, SLMOPS_HOME=str(home), PYTHONUNBUFFERED="1", **(env or {}))
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "slmops", "serve", "--port", str(self.port), "--log-level", "warning", *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=environment,
            )

    def wait_ready(self, timeout: float = 60.0) -> ServerProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"slmops serve exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"slmops serve did not answer in {timeout} s: {self.log.read_text()[-2000:]}")

    def metric(self, name: str, headers: dict | None = None) -> float:
        for line in httpx.get(self.url + "/metrics", headers=headers, timeout=5).text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        raise KeyError(name)

    def stop(self, timeout: float = 20.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode
