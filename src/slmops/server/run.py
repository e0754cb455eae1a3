"""`slmops serve`: the service in the foreground, on uvicorn."""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import socket
import time
from collections.abc import Sequence

from slmops import client, settings
from slmops.errors import ServiceError
from slmops.memory import return_large_buffers
from slmops.server.config import DEFAULT_HOST, DEFAULT_PORT, ServerConfig


def serve(
    models: Sequence[str] = (),
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    config: ServerConfig | None = None,
    log_level: str = "info",
) -> None:
    """Serve ``models`` (cached names or folders; others load on first request) until SIGTERM or Ctrl-C.

    Args:
        models: models to load at start-up.
        host, port: where to listen; port 0 picks a free port (printed, and written to
            ``$SLMOPS_HOME/service/service.json``).
        config: parallel sequences, queue, keep-alive, memory budget, API key, grace period.
        log_level: uvicorn's log level.

    Raises:
        ServiceError: the port is busy or the host cannot be bound.
    """
    import uvicorn

    from slmops.server.app import create_app

    config = config or ServerConfig()
    return_large_buffers()  # what a prefill frees goes back to the system (slmops.memory)
    sock = bind(host, port)
    actual = sock.getsockname()[1]
    logging.basicConfig(level=getattr(logging, log_level.upper(), logging.INFO), format="%(levelname)s: %(message)s")
    app = create_app(config, list(models))
    shown = f"[{host}]" if ":" in host else host
    app.state.base_url = f"http://{shown}:{actual}/v1"
    uv = uvicorn.Server(
        # uvicorn annotates the grace period as int, but waits it out with asyncio.wait_for, which takes seconds as a float.
        uvicorn.Config(
            app,
            log_level=log_level,
            timeout_graceful_shutdown=config.grace,  # type: ignore[arg-type]
            timeout_keep_alive=5,
        )
    )
    _write_state(host, actual)
    print(f"slmops serving on http://{shown}:{actual}/v1 (pid {os.getpid()})", flush=True)
    # uvicorn re-raises SIGTERM once it has shut down gracefully; with this handler
    # in place that ends the process with 0, as a clean stop should.
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        uv.run(sockets=[sock])
    finally:
        signal.signal(signal.SIGTERM, previous)
        _clear_state()


def bind(host: str, port: int) -> socket.socket:
    """A listening socket, or a one-line error naming the port and the flag to change it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    # Lets a restart reuse a port in TIME_WAIT; a port another server listens on still fails.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ServiceError(f"Port {port} on {host} is busy; pick another with --port.") from exc
        raise ServiceError(f"Cannot listen on {host}:{port} ({exc.strerror}); check --host and --port.") from exc
    sock.set_inheritable(True)
    return sock


def _write_state(host: str, port: int) -> None:
    folder = settings.service_dir()
    folder.mkdir(parents=True, exist_ok=True)
    state = {"pid": os.getpid(), "host": host, "port": port, "started": time.time()}
    tmp = folder / f".{client.STATE_FILE}.{os.getpid()}"
    tmp.write_text(json.dumps(state) + "\n", encoding="utf-8")
    os.replace(tmp, client.state_path())


def _clear_state() -> None:
    try:
        state = json.loads(client.state_path().read_text(encoding="utf-8"))
        if state.get("pid") == os.getpid():  # never remove another service's file
            client.state_path().unlink()
    except (OSError, ValueError, AttributeError):
        pass
