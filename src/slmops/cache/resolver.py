"""What a model argument means: a folder on disk, or a name in the cache.

Every command and API that takes "a model" (`slmops model run`, `slmops.load`,
`slmops bench`, `slmops eval`, `slmops serve MODEL`) turns it into a
:class:`~slmops.modelfolder.folder.ModelFolder` here, by the same rule.
"""

from __future__ import annotations

import os
from pathlib import Path

from slmops.cache.names import find
from slmops.modelfolder.folder import GENAI_CONFIG, ModelFolder, read_model_folder


def looks_like_path(name_or_path: str | os.PathLike[str]) -> bool:
    """True when ``name_or_path`` means a folder rather than a cache name.

    A Path, a string with a "/" or starting with "." or "~", or an existing folder
    holding genai_config.json is a folder; anything else is a name.
    """
    if isinstance(name_or_path, os.PathLike):
        return True
    text = str(name_or_path)
    return "/" in text or text.startswith((".", "~")) or (Path(text).expanduser() / GENAI_CONFIG).is_file()


def resolve(name_or_path: str | os.PathLike[str]) -> ModelFolder:
    """The model folder a name or a path means, read from disk.

    Args:
        name_or_path: a folder holding genai_config.json (and optionally
            inference_model.json), or the name of a valid cached model (case-insensitive).

    Raises:
        ModelNotFound: a path that is no model folder, or no cached model of that name
            (the message lists close names).
        InvalidModelName: not a path, yet not a valid name either.
        SlmopsError: the folder's genai_config.json cannot be read.
        CacheError: the only model of that name is invalid, or the folder's inference_model.json is.
    """
    if looks_like_path(name_or_path):
        return read_model_folder(Path(name_or_path))
    folder = find(str(name_or_path)).model_folder()
    assert folder is not None, "find returns valid models only, and a valid model has a genai_config.json"
    return folder
