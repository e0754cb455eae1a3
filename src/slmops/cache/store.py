"""The model cache: where it is, what it holds, adding and removing models.

The layout is Foundry Local's: any folder under the cache location (at any depth,
e.g. ``custom/<name>/`` or ``<Publisher>/<model-id>/<variant>/``) holding an
``inference_model.json`` beside an onnxruntime-genai model (``genai_config.json``)
and no ``download.tmp`` marker is a model. A model folder is a leaf: nothing below
it is scanned. Folders that look like models but are broken are listed with the
reason, so one bad folder never hides the others.

Changes are atomic for readers: `add` fills a hidden staging folder (which also
holds a ``download.tmp`` marker) and renames it into place; `remove` renames the
folder away before deleting it. A listing sees a whole model or none.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import secrets
import shutil
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from slmops import settings
from slmops.cache.inference_model import FILENAME, InferenceModel
from slmops.cache.onnx_info import OnnxInfo, read_onnx_info
from slmops.errors import CacheError, ModelNotFound, UsageError

GENAI_CONFIG = "genai_config.json"
CONVERSION = "conversion.json"
MARKER = "download.tmp"
CUSTOM = "custom"
MAX_DEPTH = 8  # Foundry Local nests three deep; a cache pointed at a big tree must still list fast
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")
PRECISION_HINTS = re.compile(r"(?<![a-z0-9])(int4|int8|fp16|bf16|fp32|q4|q8|f16|f32)(?![a-z0-9])")
HINT_NAMES = {"q4": "int4", "q8": "int8", "f16": "fp16", "f32": "fp32"}
STAGING, TRASH = ".adding-", ".removing-"


class InvalidModelName(UsageError):
    """A model name that could be read as a path."""


@dataclass
class CachedModel:
    """One model folder of the cache, valid or not (then ``reason`` says why)."""

    name: str
    path: Path
    valid: bool
    reason: str | None = None
    version: str | None = None
    precision: str | None = None
    size_bytes: int = 0
    inference_model: InferenceModel | None = None
    description: str | None = None
    context_length: int | None = None
    source: str | None = None
    conversion: dict | None = None
    genai_config: dict | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        """A JSON-ready summary (what `slmops cache ls --json` prints)."""
        return {
            "name": self.name,
            "path": str(self.path),
            "valid": self.valid,
            "reason": self.reason,
            "version": self.version,
            "precision": self.precision,
            "size_bytes": self.size_bytes,
            "description": self.description,
            "context_length": self.context_length,
            "source": self.source,
            "inference_model": self.inference_model.to_json() if self.inference_model else None,
        }


# ---- location ---------------------------------------------------------------


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


# ---- listing ----------------------------------------------------------------


def scan(root: str | os.PathLike | None = None) -> list[CachedModel]:
    """Every model folder under ``root`` (default: the cache), sorted by name.

    Never raises for a bad folder: it is returned with ``valid=False`` and a reason.
    """
    root = Path(root) if root is not None else location()
    found: list[CachedModel] = []
    if root.is_dir():
        _walk(root, 0, found, set())
    return sorted(found, key=lambda model: (model.name.casefold(), str(model.path)))


def _walk(folder: Path, depth: int, found: list[CachedModel], seen: set[str]) -> None:
    try:
        real = os.path.realpath(folder)
        names = set(os.listdir(folder))
    except OSError:
        return  # unreadable or removed while we looked: nothing to list
    if real in seen or MARKER in names:
        return  # a symlink loop, or a download (or `cache add`) still in progress
    seen.add(real)
    if FILENAME in names or GENAI_CONFIG in names:
        entry = read_entry(folder, names)
        if entry is not None:
            found.append(entry)
        return
    if depth >= MAX_DEPTH:
        return
    for name in sorted(names):
        child = folder / name
        if not name.startswith(".") and child.is_dir():
            _walk(child, depth + 1, found, seen)


def read_entry(folder: Path, names: set[str] | None = None) -> CachedModel | None:
    """Read one model folder; None when it vanished while being read."""
    folder = Path(folder)
    try:
        names = set(os.listdir(folder)) if names is None else names
        entry = _read_entry(folder, names)
    except FileNotFoundError:
        return None
    return entry if folder.is_dir() else None


def _read_entry(folder: Path, names: set[str]) -> CachedModel:
    reasons: list[str] = []
    model = _read_inference_model(folder, names, reasons)
    genai = _read_json_file(folder / GENAI_CONFIG, reasons)
    conversion = _read_json_file(folder / CONVERSION, []) if CONVERSION in names else None
    onnx_precision = _check_model_files(folder, genai, reasons) if genai is not None else None
    if not any(name in names for name in TOKENIZER_FILES):
        reasons.append("no tokenizer (tokenizer.json) in the folder")
    return CachedModel(
        name=model.Name if model else folder.name,
        path=folder,
        valid=not reasons,
        reason="; ".join(reasons) or None,
        version=model.Version if model else None,
        precision=_precision(folder, conversion, onnx_precision),
        size_bytes=_size(folder),
        inference_model=model,
        description=model.Description if model else None,
        context_length=_context_length(genai),
        source=_source(conversion),
        conversion=conversion,
        genai_config=genai,
    )


def _read_inference_model(folder: Path, names: set[str], reasons: list[str]) -> InferenceModel | None:
    if FILENAME not in names:
        reasons.append(f"no {FILENAME}; register the folder with `slmops cache add {folder}`")
        return None
    try:
        model = InferenceModel.read(folder)
    except CacheError as exc:
        reasons.append(str(exc).replace(str(folder) + os.sep, ""))
        return None
    if not model.Name.strip():
        reasons.append(f"{FILENAME} has an empty Name")
        return None
    return model


def _read_json_file(path: Path, reasons: list[str]) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        reasons.append(f"no {path.name} (not an onnxruntime-genai model folder)")
        return None
    except (OSError, ValueError) as exc:
        reasons.append(f"{path.name} is not valid JSON ({str(exc).splitlines()[0]})")
        return None
    if not isinstance(data, dict):
        reasons.append(f"{path.name} is not a JSON object")
        return None
    return data


def _check_model_files(folder: Path, genai: dict, reasons: list[str]) -> str | None:
    """Check the ONNX files genai_config.json names; returns the decoder's precision if readable."""
    model = genai.get("model") if isinstance(genai.get("model"), dict) else {}
    graphs = [part.get("filename") for part in model.values() if isinstance(part, dict)]
    graphs = [name for name in graphs if isinstance(name, str)]
    if not graphs:
        reasons.append(f"{GENAI_CONFIG} names no ONNX file (model.decoder.filename)")
        return None
    precision = None
    for name in graphs:
        path = folder / name
        if os.path.isabs(name) or os.path.normpath(name).split(os.sep)[0] == "..":
            reasons.append(f"{GENAI_CONFIG} names {name}, outside the model folder")
            continue
        if not path.is_file():
            reasons.append(f"missing ONNX file {name}")
            continue
        try:
            info = _onnx_info(path)
        except (OSError, ValueError) as exc:
            reasons.append(f"{name} is not a readable ONNX file ({exc})")
            continue
        missing = sorted(data for data in info.external_files if not (path.parent / data).is_file())
        if missing:
            reasons.append(f"missing ONNX weights file {', '.join(missing)}")
        precision = precision or info.precision
    return precision


_ONNX_INFO: dict[tuple, OnnxInfo] = {}


def _onnx_info(path: Path) -> OnnxInfo:
    # A server resolves a name per request; an unchanged graph is parsed once per process.
    stat = path.stat()
    key = (str(path), stat.st_ino, stat.st_size, stat.st_mtime_ns)
    if key not in _ONNX_INFO:
        _ONNX_INFO[key] = read_onnx_info(path)
    return _ONNX_INFO[key]


def _precision(folder: Path, conversion: dict | None, onnx_precision: str | None) -> str | None:
    if conversion and isinstance(conversion.get("precision"), str):
        return conversion["precision"].lower()
    if onnx_precision:
        return onnx_precision
    hint = PRECISION_HINTS.search(folder.name.lower())
    return HINT_NAMES.get(hint.group(1), hint.group(1)) if hint else None


def _context_length(genai: dict | None) -> int | None:
    if not genai:
        return None
    model = genai.get("model") if isinstance(genai.get("model"), dict) else {}
    search = genai.get("search") if isinstance(genai.get("search"), dict) else {}
    value = model.get("context_length") or search.get("max_length")
    return value if isinstance(value, int) else None


def _source(conversion: dict | None) -> str | None:
    if not conversion:
        return None
    for key in ("source", "input", "input_model", "model_path", "model_name_or_path"):
        value = conversion.get(key)
        if isinstance(value, dict):
            value = value.get("path") or value.get("model_path")
        if isinstance(value, str):
            return value
    return None


def _size(folder: Path) -> int:
    """Bytes of the files the model uses, following links (a `--link`ed model counts its files)."""
    total = 0
    for dirpath, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.stat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass  # a dangling link; the entry's checks report the missing file
    return total


# ---- names ------------------------------------------------------------------


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


def resolve(name: str, include_invalid: bool = False) -> CachedModel:
    """The cached model called ``name`` (case-insensitive).

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
        raise ModelNotFound(f"{name!r} is ambiguous: {len(usable)} models have that name ({paths}); "
                            "change the Name in one inference_model.json, or remove one.")
    if matches:
        bad = matches[0]
        raise CacheError(f"Model {bad.name!r} at {bad.path} is invalid: {bad.reason}. "
                         f"Fix it, or delete it with `slmops cache remove {bad.name}`.")
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


# ---- adding and removing ----------------------------------------------------


def add(folder: str | os.PathLike, name: str | None = None, link: bool = False,
        force: bool = False) -> CachedModel:
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
    entry = resolve(name, include_invalid=True)
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
    raise CacheError(f"{path} holds no {GENAI_CONFIG}; it is not an onnxruntime-genai model. "
                     "Convert the model first with `slmops convert`.")


def _inference_model_for(source: Path, name: str | None) -> InferenceModel:
    if (source / FILENAME).is_file():
        model = InferenceModel.read(source)
        return model.model_copy(update={"Name": name}) if name is not None else model
    from slmops.cache.templates import default_config, template_for

    genai = _read_json_file(source / GENAI_CONFIG, []) or {}
    conversion = _read_json_file(source / CONVERSION, []) or {}
    default_name = source.parent.name if source.name in ("onnx", "model", "output") else source.name
    return InferenceModel(
        Name=name if name is not None else default_name,
        Description=f"Added from {source}" + (f", converted from {_source(conversion)}" if _source(conversion) else ""),
        Version="1.0",
        PromptTemplate=template_for(source),
        ModelConfig=default_config(_context_length(genai)),
    )


def _replaced_entries(name: str, target: Path, force: bool) -> list[Path]:
    existing = [model.path for model in scan() if model.name.casefold() == name.casefold()]
    if target.exists() or target.is_symlink():
        existing = existing if target in existing else [*existing, target]
    if existing and not force:
        raise CacheError(f"{existing[0]} already holds a model named {name!r}; "
                         "pass --force to replace it, or --name to pick another name.")
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
    shutil.copytree(source, staging, dirs_exist_ok=True,
                    ignore=lambda where, names: [n for n in names if Path(where) == source and n in skip])


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
    resolved_path = Path(os.path.realpath(path)) if follow else Path(os.path.abspath(path)).parent.resolve() / Path(path).name
    return Path(os.path.realpath(root)) in resolved_path.parents
