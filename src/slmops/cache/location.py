"""Where the model cache is: `slmops cache location` and `slmops cache cd PATH`."""

from __future__ import annotations

import os
from pathlib import Path

from slmops import settings
from slmops.errors import CacheError


def location() -> Path:
    """The cache folder (it may not exist yet)."""
    return Path(os.path.abspath(settings.cache_dir()))


def set_location(path: str | os.PathLike) -> Path:
    """Move the cache to ``path`` (created if missing); models at the old place stay there.

    Returns:
        The new location, absolute.
    """
    target = Path(os.path.abspath(Path(path).expanduser()))
    if target.exists() and not target.is_dir():
        raise CacheError(f"{target} is a file, not a folder; pick a folder for the cache.")
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CacheError(f"Cannot create the cache folder {target}: {exc.strerror or exc}.") from exc
    config = settings.read_config()
    config["cache_dir"] = str(target)
    settings.write_config(config)
    return target
