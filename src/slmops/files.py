"""Files slmops keeps (its settings, measurements, reports, a model folder's JSON): written whole or not at all."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any


def write_json(path: str | Path, data: Any, default: Callable[[Any], Any] | None = None) -> Path:
    """``data`` as indented JSON at ``path``, through a hidden file renamed into place: a reader, or a
    process killed while writing, sees the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=default) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def link_or_copy(source: str | Path, destination: str | Path) -> None:
    """A hard link to ``source`` at ``destination`` (no bytes copied), or a copy where the file system
    cannot link (another device); for files nothing writes in place."""
    try:
        os.link(source, destination)
    except OSError:
        shutil.copy2(source, destination)
