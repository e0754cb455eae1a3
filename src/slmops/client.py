"""Talking to the running service from other commands (`slmops model load|unload|list`).

The service writes where it listens to ``$SLMOPS_HOME/service/service.json`` while
it runs; these functions read it, so they need no flags. They use only the
standard library and psutil: `slmops model list` must stay fast.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import psutil

from slmops import settings
from slmops.errors import ServiceError

STATE_FILE = "service.json"
TIMEOUT_S = 3.0


def state_path() -> Path:
    return settings.service_dir() / STATE_FILE


def read_state() -> dict | None:
    """The running service's pid, host, port and start time; None when none runs."""
    try:
        state = json.loads(state_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(state, dict) or not _alive(state.get("pid")):
        return None
    return state


def base_url() -> str | None:
    """The running service's URL; None when none runs."""
    state = read_state()
    return None if state is None else state_url(state)


def state_url(state: dict) -> str:
    """The URL a client reaches the service at, from its state file."""
    host = state.get("host", "127.0.0.1")
    host = "127.0.0.1" if host in ("0.0.0.0", "") else (f"[{host}]" if ":" in host else host)
    return f"http://{host}:{state['port']}"


def request(path: str, timeout: float = TIMEOUT_S, method: str = "GET", body: dict | None = None) -> Any:
    """JSON from the running service (its shape depends on the endpoint).

    Raises:
        ServiceError: no service runs, or it answered with an error.
    """
    url = base_url()
    if url is None:
        raise ServiceError("No slmops service is running; start one with `slmops service start`.")
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"}
    key = os.environ.get("SLMOPS_API_KEY")
    if key:
        headers["Authorization"] = f"Bearer {key}"
    call = urllib.request.Request(url + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(call, timeout=timeout) as answer:
            return json.loads(answer.read() or b"null")
    except urllib.error.HTTPError as exc:
        raise ServiceError(f"The service at {url} refused: {_message(exc)}") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise ServiceError(f"The service at {url} does not answer ({exc}); see `slmops service status`.") from exc


def loaded_models() -> list[str] | None:
    """Names of the models the running service has loaded; None when no service runs."""
    if read_state() is None:
        return None
    try:
        return list(request("/openai/loadedmodels"))
    except ServiceError:
        return None


def load_model(name: str, ttl: float | None = None, timeout: float = 300.0) -> dict:
    """Ask the running service to load ``name`` (and keep it ``ttl`` seconds idle)."""
    query = f"?ttl={ttl:g}" if ttl is not None else ""
    return request(f"/openai/load/{urllib.parse.quote(name, safe='')}{query}", timeout=timeout)


def unload_model(name: str, force: bool = False) -> dict:
    """Ask the running service to unload ``name``; ``force`` cancels what it is answering."""
    query = "?force=true" if force else ""
    return request(f"/openai/unload/{urllib.parse.quote(name, safe='')}{query}")


def _message(exc: urllib.error.HTTPError) -> str:
    try:
        return json.loads(exc.read())["error"]["message"]
    except (ValueError, KeyError, TypeError, OSError):
        return f"HTTP {exc.code}"


def _alive(pid: object) -> bool:
    # pid 0 and negative pids name process groups, not a service
    return isinstance(pid, int) and pid > 0 and psutil.pid_exists(pid)
