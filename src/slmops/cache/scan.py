"""What the cache holds: finding model folders and reading each one into a :class:`CachedModel`.

The layout is Foundry Local's: any folder under the cache location (at any depth,
e.g. ``custom/<name>/`` or ``<Publisher>/<model-id>/<variant>/``) holding an
``inference_model.json`` beside an onnxruntime-genai model (``genai_config.json``)
and no ``download.tmp`` marker is a model. A model folder is a leaf: nothing below
it is scanned. Folders that look like models but are broken are listed with the
reason, so one bad folder never hides the others.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from slmops.cache.location import location
from slmops.errors import CacheError
from slmops.modelfolder.folder import GENAI_CONFIG, ModelFolder, genai_context_length
from slmops.modelfolder.inference_model import FILENAME, InferenceModel
from slmops.modelfolder.onnx_info import OnnxInfo, read_onnx_info

CONVERSION = "conversion.json"
MARKER = "download.tmp"
MAX_DEPTH = 8  # Foundry Local nests three deep; a cache pointed at a big tree must still list fast
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")
PRECISION_HINTS = re.compile(r"(?<![a-z0-9])(int4|int8|fp16|bf16|fp32|q4|q8|f16|f32)(?![a-z0-9])")
HINT_NAMES = {"q4": "int4", "q8": "int8", "f16": "fp16", "f32": "fp32"}


@dataclass
class CachedModel:
    """One model folder of the cache, valid or not (then ``reason`` says why).

    ``context_length`` is the context the ONNX model was built for (None when
    genai_config.json gives none); a run may get less, see :meth:`model_folder`.
    """

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

    def model_folder(self) -> ModelFolder | None:
        """This entry as a :class:`ModelFolder`; None when its genai_config.json is missing, unreadable or empty."""
        if not self.genai_config:
            return None
        return ModelFolder(self.path, self.genai_config, self.inference_model)

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
    genai = read_json_file(folder / GENAI_CONFIG, reasons)
    conversion = read_json_file(folder / CONVERSION, []) if CONVERSION in names else None
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
        context_length=genai_context_length(genai),
        source=source_of(conversion),
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


def read_json_file(path: Path, reasons: list[str]) -> dict | None:
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
    model = genai.get("model")
    parts = model.values() if isinstance(model, dict) else []
    graphs = [part["filename"] for part in parts if isinstance(part, dict) and isinstance(part.get("filename"), str)]
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


def source_of(conversion: dict | None) -> str | None:
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
