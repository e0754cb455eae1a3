"""`slmops service start|stop|status|restart`: the service in the background.

``start`` runs `slmops serve` as a detached process logging to
``$SLMOPS_HOME/logs/service.log``; that process writes its pid and port to
``$SLMOPS_HOME/service/service.json`` (see :mod:`slmops.client`), and
``stop`` sends it SIGTERM, which finishes the answers in flight first.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

from slmops import client, settings
from slmops.errors import ServiceError
from slmops.server.process import wait_ready

ARGS_FILE = "args.json"
START_TIMEOUT_S = 120.0


@dataclass
class Status:
    """What `slmops service status` prints."""

    running: bool
    url: str | None = None
    pid: int | None = None
    uptime_s: float | None = None
    loaded: list[str] | None = None
    log: str | None = None


def log_path():
    return settings.logs_dir() / "service.log"


def status() -> Status:
    """Whether the service runs, where, for how long, and what it has loaded."""
    state = client.read_state()
    if state is None:
        return Status(False, log=str(log_path()))
    return Status(
        True,
        client.state_url(state) + "/v1",
        state["pid"],
        time.time() - state.get("started", time.time()),
        client.loaded_models(),
        str(log_path()),
    )


def start(serve_args: list[str] | None = None, timeout: float = START_TIMEOUT_S) -> tuple[Status, bool]:
    """Start the service in the background unless it runs; returns its status and whether it was started.

    Args:
        serve_args: `slmops serve` arguments (models and flags); None reuses the last start's.

    Raises:
        ServiceError: it exited or did not answer within ``timeout`` (the message quotes its log).
    """
    current = status()
    if current.running:
        return current, False
    args = _remember(serve_args)
    settings.logs_dir().mkdir(parents=True, exist_ok=True)
    with open(log_path(), "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "slmops", "serve", *args],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    outcome, failed = wait_ready(process, lambda: _url(process.pid), timeout)
    if outcome == "ok":
        return status(), True
    if outcome == "exited":
        raise ServiceError(f"The service exited at start: {_last_line()} (log: {log_path()}).")
    process.terminate()
    if outcome == "failed":
        reasons = "; ".join(f"{name}: {why}" for name, why in failed.items())
        raise ServiceError(f"The service could not load its models ({reasons}); fix them or start it without them.")
    raise ServiceError(f"The service did not answer within {timeout:.0f} s; see {log_path()}.")


def stop(timeout: float = 30.0) -> bool:
    """Stop the service (SIGTERM, then SIGKILL after ``timeout``); False if none ran."""
    state = client.read_state()
    if state is None:
        return False
    pid = state["pid"]
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not client._alive(pid) or _zombie(pid):
            break
        time.sleep(0.1)
    else:
        os.kill(pid, signal.SIGKILL)
    try:
        client.state_path().unlink()
    except OSError:
        pass
    return True


def restart(serve_args: list[str] | None = None) -> Status:
    stop()
    return start(serve_args)[0]


def last_args() -> list[str]:
    """The `slmops serve` arguments of the last background start (none before the first)."""
    return _remember(None)


def _remember(serve_args: list[str] | None) -> list[str]:
    path = settings.service_dir() / ARGS_FILE
    if serve_args is None:
        try:
            return list(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            return []
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(serve_args), encoding="utf-8")
    return serve_args


def _url(pid: int) -> str | None:
    """The service's URL once the process ``pid`` has written where it listens (not an older service's)."""
    state = client.read_state()
    return client.state_url(state) if state and state.get("pid") == pid else None


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def _last_line() -> str:
    try:
        lines = [line for line in log_path().read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    errors = [line for line in lines if line.startswith("Error:")]
    return (errors or lines or ["no output"])[-1]
