"""Where slmops keeps its state, and the settings read from the environment.

Every path derives from one home folder, ``$SLMOPS_HOME`` (default ``~/.slmops``):

- ``config.json``: settings changed by commands (the cache location);
- ``cache/``: the model cache, unless ``slmops cache cd`` moved it;
- ``logs/`` and ``service/``: the background service's log and pid file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from slmops.errors import SlmopsError
from slmops.files import write_json


def home() -> Path:
    return Path(os.environ.get("SLMOPS_HOME") or Path.home() / ".slmops").expanduser()


def config_path() -> Path:
    return home() / "config.json"


def read_config() -> dict:
    path = config_path()
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SlmopsError(f"{path} is not valid JSON ({exc}); fix or delete it.") from exc


def write_config(config: dict) -> None:
    write_json(config_path(), config)


def cache_dir() -> Path:
    """The model cache folder: set by `slmops cache cd`, else ``$SLMOPS_HOME/cache``."""
    location = read_config().get("cache_dir")
    return Path(location).expanduser() if location else home() / "cache"


def logs_dir() -> Path:
    return home() / "logs"


def service_dir() -> Path:
    return home() / "service"
