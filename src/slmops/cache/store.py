"""The model cache: adding and removing models, and the names other packages use.

Changes are atomic for readers: `add` fills a hidden staging folder (which also
holds a ``download.tmp`` marker) and renames it into place; `remove` renames the
folder away before deleting it. A listing sees a whole model or none.

Where the cache is lives in :mod:`slmops.cache.location`, what it holds in
:mod:`slmops.cache.scan`, what a name means in :mod:`slmops.cache.names`, what a
name or a path means in :mod:`slmops.cache.resolver`; they are all reachable from
here (``from slmops.cache import store; store.scan()``).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
from pathlib import Path

import psutil

from slmops.cache.location import location, set_location
from slmops.cache.names import InvalidModelName, check_name, find
from slmops.cache.resolver import resolve
from slmops.cache.scan import CONVERSION, MARKER, CachedModel, read_entry, read_json_file, scan, source_of
from slmops.errors import CacheError, UsageError
from slmops.modelfolder.folder import GENAI_CONFIG, genai_context_length
from slmops.modelfolder.inference_model import FILENAME, InferenceModel, default_model_config

__all__ = [
    "CachedModel",
    "InvalidModelName",
    "add",
    "check_name",
    "find",
    "location",
    "model_root",
    "read_entry",
    "remove",
    "resolve",
    "scan",
    "set_location",
]

CUSTOM = "custom"
STAGING, TRASH = ".adding-", ".removing-"


def add(folder: str | os.PathLike, name: str | None = None, link: bool = False, force: bool = False) -> CachedModel:
    """Copy (or link) a converted model folder into ``<cache>/custom/<name>/``.

    Writes ``inference_model.json`` when the folder has none (the template is picked
    from the tokenizer's chat format). Atomic: on any failure, or if the process is
    killed, the cache is left as it was.

    Args:
        folder: an onnxruntime-genai output folder (holding ``genai_config.json``),
            or a folder with exactly one such folder inside.
        name: the model's name; default: the folder's ``inference_model.json`` Name,
            else the folder's name.
        link: symlink the model's files instead of copying them (the source must stay).
        force: replace a model of the same name.

    Returns:
        The new cache entry.
    """
    source = model_root(folder)
    model = _inference_model_for(source, name)
    check_name(model.Name)
    custom = location() / CUSTOM
    target = custom / model.Name
    replaced = _replaced_entries(model.Name, target, force)
    if link and _inside(source, location()):
        raise UsageError(f"{source} is inside the cache; add it without --link.")
    custom.mkdir(parents=True, exist_ok=True)
    _clean_stale(custom)
    staging = custom / f"{STAGING}{os.getpid()}-{secrets.token_hex(4)}"
    staging.mkdir()
    try:
        (staging / MARKER).touch()  # Foundry Local (and our scan) skip a folder with this marker
        _fill(source, staging, link)
        model.write(staging)
        (staging / MARKER).unlink()
        _swap_in(staging, target, replaced)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    entry = read_entry(target)
    if entry is None:
        raise CacheError(f"{target} disappeared while it was being added; run the command again.")
    return entry


def remove(name: str) -> CachedModel:
    """Delete the cached model called ``name`` (valid or not); returns what was removed."""
    entry = find(name, include_invalid=True)
    cache = location()
    if not _inside(entry.path, cache, follow=False):
        raise CacheError(f"{entry.path} is outside the cache ({cache}); not removing it.")
    _clean_stale(entry.path.parent)
    _discard(entry.path)
    return entry


def model_root(folder: str | os.PathLike) -> Path:
    """The folder holding ``genai_config.json``: ``folder`` itself or its only model subfolder."""
    path = Path(folder).expanduser().resolve()
    if not path.is_dir():
        raise CacheError(f"{path} is not a folder; give the output folder of `slmops convert`.")
    if (path / GENAI_CONFIG).is_file():
        return path
    inner = [child for child in path.iterdir() if (child / GENAI_CONFIG).is_file()]
    if len(inner) == 1:
        return inner[0]
    raise CacheError(
        f"{path} holds no {GENAI_CONFIG}; it is not an onnxruntime-genai model. "
        "Convert the model first with `slmops convert`."
    )


def _inference_model_for(source: Path, name: str | None) -> InferenceModel:
    if (source / FILENAME).is_file():
        model = InferenceModel.read(source)
        return model.model_copy(update={"Name": name}) if name is not None else model
    from slmops.modelfolder.templates import template_for

    genai = read_json_file(source / GENAI_CONFIG, []) or {}
    conversion = read_json_file(source / CONVERSION, []) or {}
    default_name = source.parent.name if source.name in ("onnx", "model", "output") else source.name
    converted_from = source_of(conversion)
    return InferenceModel(
        Name=name if name is not None else default_name,
        Description=f"Added from {source}" + (f", converted from {converted_from}" if converted_from else ""),
        Version="1.0",
        PromptTemplate=template_for(source),
        ModelConfig=default_model_config(genai_context_length(genai)),
    )


def _replaced_entries(name: str, target: Path, force: bool) -> list[Path]:
    existing = [model.path for model in scan() if model.name.casefold() == name.casefold()]
    if target.exists() or target.is_symlink():
        existing = existing if target in existing else [*existing, target]
    if existing and not force:
        raise CacheError(
            f"{existing[0]} already holds a model named {name!r}; "
            "pass --force to replace it, or --name to pick another name."
        )
    return existing


def _fill(source: Path, staging: Path, link: bool) -> None:
    try:
        _copy_or_link(source, staging, link)
    except OSError as exc:  # shutil.Error (a list of failed files) is an OSError too
        detail = exc.args[0][0][2] if isinstance(exc, shutil.Error) and exc.args and exc.args[0] else exc
        raise CacheError(f"Cannot {'link' if link else 'copy'} {source} into the cache: {detail}") from exc


def _copy_or_link(source: Path, staging: Path, link: bool) -> None:
    skip = {FILENAME, MARKER}
    if link:
        for child in sorted(source.iterdir()):
            if child.name not in skip:
                os.symlink(child, staging / child.name)
        return
    shutil.copytree(
        source,
        staging,
        dirs_exist_ok=True,
        ignore=lambda where, names: [n for n in names if Path(where) == source and n in skip],
    )


def _swap_in(staging: Path, target: Path, replaced: list[Path]) -> None:
    """Rename ``staging`` to ``target``; entries it replaces are moved away first, deleted after."""
    moved = []
    try:
        for path in replaced:
            aside = path.parent / f"{TRASH}{os.getpid()}-{secrets.token_hex(4)}"
            os.rename(path, aside)
            moved.append((path, aside))
        target.parent.mkdir(parents=True, exist_ok=True)
        os.rename(staging, target)
    except OSError as exc:
        for path, aside in reversed(moved):
            os.rename(aside, path)
        raise CacheError(f"Cannot move the model into {target}: {exc.strerror or exc}.") from exc
    for _, aside in moved:
        _delete(aside)


def _discard(path: Path) -> None:
    if path.is_symlink():  # a linked model folder: drop the link, never its target
        path.unlink()
        return
    aside = path.parent / f"{TRASH}{os.getpid()}-{secrets.token_hex(4)}"
    try:
        os.rename(path, aside)
    except OSError as exc:
        raise CacheError(f"Cannot remove {path}: {exc.strerror or exc}.") from exc
    _delete(aside)


def _delete(path: Path) -> None:
    if path.is_symlink():
        path.unlink()
    else:
        shutil.rmtree(path, ignore_errors=True)


def _clean_stale(folder: Path) -> None:
    """Delete staging and trash folders left by killed processes."""
    for child in folder.iterdir():
        match = re.match(rf"^(?:{re.escape(STAGING)}|{re.escape(TRASH)})(\d+)-", child.name)
        if match and not psutil.pid_exists(int(match.group(1))):
            _delete(child)


def _inside(path: Path, root: Path, follow: bool = True) -> bool:
    resolved_path = (
        Path(os.path.realpath(path)) if follow else Path(os.path.abspath(path)).parent.resolve() / Path(path).name
    )
    return Path(os.path.realpath(root)) in resolved_path.parents
