"""A server in a child process, and the one rule for when it is ready.

`slmops service start`, the server tests and the benchmarks start servers as child
processes and wait for them the same way, by what /health documents: 200 ("ok") once
the models named at start-up are loaded, 503 with status "loading" before and
"failed" when one of them could not load. A server that is not slmops (llama-server)
is ready at its first 200 with status "ok" too.

It sits below ``server`` and ``bench`` (beside ``client``) and imports neither, so that
``slmops bench`` can start a server without importing the server's app.
"""

from __future__ import annotations

import json
import random
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from slmops.errors import ServiceError

LOOPBACK = "127.0.0.1"
FIRST_PORT = 20000  # above Ray's worker ports (10002-19999)

POLL_S = 0.2
Outcome = Literal["ok", "failed", "exited", "timeout"]


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port nothing listens on at this moment.

    A server binds its port seconds after it is chosen (after Ray has started, for one), and
    every process that asks the OS for any port gets one from the ephemeral range: so the port
    is picked below that range (and above Ray's worker ports, 10002-19999), where nothing else
    lands in the meantime; the OS picks when that leaves no room.
    """
    end = _ephemeral_start()
    for port in random.sample(range(FIRST_PORT, end), min(64, end - FIRST_PORT)) if end > FIRST_PORT else []:
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _ephemeral_start() -> int:
    """The first port of the range the OS hands out to whoever asks for any port."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def health(url: str, timeout: float = 2.0) -> tuple[str, dict]:
    """The status /health gives at ``url`` ("ok", "loading", "failed", ...; "down" when
    nothing answers it, or something that is no such server: a metrics exporter answers 200
    at every path), and the models that failed to load, with why."""
    try:
        with urllib.request.urlopen(url + "/health", timeout=timeout) as answer:
            try:
                body = json.loads(answer.read() or b"{}")
            except ValueError:
                body = {}
            return ("ok", {}) if isinstance(body, dict) and body.get("status") == "ok" else ("down", {})
    except urllib.error.HTTPError as exc:
        try:
            body = json.loads(exc.read() or b"{}")
        except ValueError:
            body = {}
        if not isinstance(body, dict):
            return "down", {}
        return body.get("status", "down"), body.get("failed") or {}
    except (urllib.error.URLError, OSError):
        return "down", {}


def wait_ready(process: subprocess.Popen, url: str | Callable[[], str | None], timeout: float) -> tuple[Outcome, dict]:
    """Poll ``process``'s /health until it is ready, its models failed, it exited or ``timeout`` passed.

    Args:
        process: the server's process.
        url: its base URL, or a function giving it once it is known (None until then).
        timeout: seconds to wait at most.

    Returns:
        The outcome ("ok", "failed", "exited" or "timeout") and, for "failed", the models that failed.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return "exited", {}
        where = url() if callable(url) else url
        status, failed = health(where) if where else ("down", {})
        if status == "ok":
            return "ok", {}
        if status == "failed":
            return "failed", failed
        time.sleep(POLL_S)
    return "timeout", {}


class ServerProcess:
    """A server started on a free loopback port, its output in a log file; ``url`` is its base URL.

    Args:
        command: the server's command line; ``--host 127.0.0.1 --port PORT`` is appended.
        log: the file its output goes to (default: a new temporary file).
        env: its environment (default: this process's).
        label: how messages name it (default: the command's first word).
    """

    def __init__(
        self, command: list[str], log: Path | None = None, env: dict | None = None, label: str | None = None
    ) -> None:
        self.port = free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.label = label or Path(command[0]).name
        self.log = Path(log) if log else Path(tempfile.mkstemp(prefix="slmops-server-", suffix=".log")[1])
        with open(self.log, "wb") as output:
            self.process = subprocess.Popen(
                [*command, "--host", LOOPBACK, "--port", str(self.port)],
                stdout=output,
                stderr=subprocess.STDOUT,
                env=env,
            )

    def wait_ready(self, timeout: float = 120.0) -> ServerProcess:
        """Return once /health says it is ready.

        Raises:
            ServiceError: it exited, failed to load a model or did not answer within ``timeout``
                (it is stopped first; the message quotes the end of its log).
        """
        outcome, failed = wait_ready(self.process, self.url, timeout)
        if outcome == "ok":
            return self
        self.stop()
        why = {
            "exited": "exited at start",
            "failed": f"could not load {', '.join(failed)}",
            "timeout": f"did not answer within {timeout:.0f} s",
        }[outcome]
        raise ServiceError(f"{self.label} {why}; the end of {self.log}:\n{self.log_tail()}")

    def log_tail(self, chars: int = 2000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, which lets answers in flight finish, then SIGKILL after ``timeout``; returns its exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode
