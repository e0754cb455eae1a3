"""Model names: refusing those that could be read as paths, and finding the model a name means."""

from __future__ import annotations

import difflib
import os
import re
import urllib.parse

from slmops.cache.location import location
from slmops.cache.scan import CachedModel, scan
from slmops.errors import CacheError, ModelNotFound, UsageError


class InvalidModelName(UsageError):
    """A model name that could be read as a path."""


def check_name(name: object) -> str:
    """Refuse names that could be read as a path; returns the name.

    A name never becomes a path by itself, so no command or HTTP request can
    reach outside the cache through it.
    """
    if not isinstance(name, str) or not name.strip():
        raise InvalidModelName("A model name must not be empty.")
    decoded = name
    for _ in range(3):  # %252F decodes to %2F, then to /
        decoded = urllib.parse.unquote(decoded)
    for text in {name, decoded}:
        if any(ch in text for ch in "/\\") or ".." in text or text.startswith((".", "~")):
            raise InvalidModelName(f"{name!r} is not a model name: names cannot contain '/', '\\' or '..'.")
        if any(ord(ch) < 32 or ord(ch) == 127 for ch in text):
            raise InvalidModelName(f"{name!r} is not a model name: it contains control characters.")
        if re.match(r"^[A-Za-z]:", text) or os.path.isabs(text):
            raise InvalidModelName(f"{name!r} is not a model name: it looks like an absolute path.")
    if len(name) > 200:
        raise InvalidModelName("A model name must be at most 200 characters.")
    return name


def find(name: str, include_invalid: bool = False) -> CachedModel:
    """The cached model called ``name`` (case-insensitive); names only, never a path
    (:func:`slmops.cache.resolver.resolve` takes either).

    Raises:
        InvalidModelName: the name looks like a path.
        ModelNotFound: no model or several have that name; the message lists close matches.
        CacheError: the only match is invalid (unless ``include_invalid``).
    """
    check_name(name)
    models = scan()
    matches = [model for model in models if model.name.casefold() == name.casefold()]
    usable = matches if include_invalid else [model for model in matches if model.valid]
    if len(usable) == 1:
        return usable[0]
    if len(usable) > 1:
        paths = ", ".join(str(model.path) for model in usable)
        raise ModelNotFound(
            f"{name!r} is ambiguous: {len(usable)} models have that name ({paths}); "
            "change the Name in one inference_model.json, or remove one."
        )
    if matches:
        bad = matches[0]
        raise CacheError(
            f"Model {bad.name!r} at {bad.path} is invalid: {bad.reason}. "
            f"Fix it, or delete it with `slmops cache remove {bad.name}`."
        )
    raise ModelNotFound(_not_found_message(name, models))


def _not_found_message(name: str, models: list[CachedModel]) -> str:
    names = sorted({model.name for model in models})
    folded = {candidate.casefold(): candidate for candidate in names}
    close = difflib.get_close_matches(name.casefold(), list(folded), n=5, cutoff=0.5)
    close += [key for key in folded if name.casefold() in key and key not in close]
    message = f"No model named {name!r} in the cache ({location()})."
    if close:
        return message + " Close matches: " + ", ".join(folded[key] for key in close[:5]) + "."
    return message + " `slmops cache ls` lists the models; `slmops cache add FOLDER` adds one."
