"""What `slmops model list` and `slmops model info` show, as data first, then as text."""

from __future__ import annotations

import dataclasses

from rich.console import Console
from rich.table import Table

from slmops.cache import store
from slmops.cache.resolver import looks_like_path, resolve
from slmops.cache.scan import CachedModel
from slmops.errors import CacheError
from slmops.modelfolder.folder import ModelFolder
from slmops.modelfolder.inference_model import EmbeddingSettings
from slmops.runtime.options import model_defaults
from slmops.runtime.threads import default_threads


def loaded_models() -> set[str] | None:
    """Names of the models a running service has loaded; None when no service runs."""
    try:
        from slmops.client import loaded_models as ask_service
    except ImportError:
        return None
    try:
        names = ask_service()
    except Exception:  # a service that cannot answer is as good as none for a listing
        return None
    return None if names is None else {name.casefold() for name in names}


def list_models() -> list[dict]:
    """Every cached model as a dict (``cache ls --json`` fields plus ``loaded``)."""
    loaded = loaded_models()
    rows = []
    for entry in store.scan():
        row = entry.to_dict()
        row["loaded"] = None if loaded is None else entry.name.casefold() in loaded
        folder = entry.model_folder()
        if folder:  # the context a run really gets: ModelConfig.max_length may cap it
            row["context_length"] = folder.context_length
        rows.append(row)
    return rows


def print_models(rows: list[dict], console: Console | None = None) -> None:
    from slmops.console import print_table

    console = console or Console()
    if not rows:
        console.print(f"No models in the cache ({store.location()}). `slmops cache add FOLDER` adds one.")
        return
    service = any(row["loaded"] is not None for row in rows)
    table = Table(box=None, header_style="bold")
    for column in ("name", "precision", "size", "context", *(["loaded"] if service else []), "path"):
        table.add_column(column, overflow="fold")
    for row in rows:
        name = row["name"] if row["valid"] else f"{row['name']} [red](invalid: {row['reason']})[/red]"
        cells = [name, row["precision"] or "?", _size(row["size_bytes"]), str(row["context_length"] or "?")]
        if service:
            cells.append("yes" if row["loaded"] else "")
        table.add_row(*cells, row["path"])
    print_table(table, console)
    if not service:
        console.print("[dim]No slmops service is running; `slmops serve` starts one.[/dim]")


def model_info(name_or_path: str) -> dict:
    """What slmops knows about a model without loading it: template, defaults, precision, size, context."""
    entry = _entry(name_or_path)
    info = entry.inference_model
    folder = entry.model_folder()
    # Without a readable genai_config.json (an invalid entry), the defaults come from ModelConfig alone.
    settings = folder or ModelFolder(entry.path, {}, info)
    template = info.PromptTemplate if info and info.has_template else None
    return {
        "name": entry.name,
        "path": str(entry.path),
        "valid": entry.valid,
        "reason": entry.reason,
        "description": entry.description,
        "version": entry.version,
        "precision": entry.precision,
        "size_bytes": entry.size_bytes,
        "context_length": folder.context_length if folder else entry.context_length,
        "source": entry.source,
        "conversion": entry.conversion,
        "task": (info.Task if info else None) or "text-generation",
        "embedding": _embedding(info),
        "template": template.model_dump(exclude_none=True) if template else None,
        "model_config": info.ModelConfig.model_dump(exclude_none=True) if info and info.ModelConfig else None,
        "defaults": dataclasses.asdict(model_defaults(settings.search, settings.model_config)),
        "threads": default_threads(),
    }


def _embedding(info) -> dict | None:
    """An embedding model's pooling settings (defaults filled in), else None."""
    if info is None or not info.is_embedding:
        return None
    return (info.Embedding or EmbeddingSettings()).model_dump(exclude_none=True)


def _entry(name_or_path: str) -> CachedModel:
    if not looks_like_path(name_or_path):
        return store.find(name_or_path, include_invalid=True)
    folder = resolve(name_or_path)  # a path that is no model folder stops here, with the resolver's message
    entry = store.read_entry(folder.path)
    if entry is None:
        raise CacheError(f"{folder.path} disappeared while it was being read.")
    return entry


def print_info(info: dict, console: Console | None = None) -> None:
    console = console or Console()
    console.print(f"[bold]{info['name']}[/bold]  {info['path']}")
    if not info["valid"]:
        console.print(f"[red]invalid: {info['reason']}[/red]")
    facts = [
        ("description", info["description"]),
        ("version", info["version"]),
        ("precision", info["precision"] or "unknown"),
        ("size", _size(info["size_bytes"])),
        ("context length", info["context_length"]),
        ("source", info["source"] or "unknown (no conversion.json)"),
        ("threads", f"{info['threads']} (the CPUs this process may use; --threads overrides)"),
    ]
    for label, value in facts:
        if value is not None:
            console.print(f"  {label + ':':16} {value}", highlight=False)
    if info.get("embedding"):
        settings = info["embedding"]
        shape = f"{settings['pooling']} pooling, {settings.get('dimensions', '?')} dimensions"
        console.print(f"  {'task:':16} embedding ({shape}, normalize={settings['normalize']})", highlight=False)
        return
    defaults = ", ".join(f"{key}={value}" for key, value in info["defaults"].items() if value not in (None, ()))
    console.print(f"  {'defaults:':16} {defaults}", highlight=False)
    if info["template"]:
        console.print("  template (inference_model.json PromptTemplate):")
        for role, text in info["template"].items():
            console.print(f"    {role}: {text!r}", highlight=False, markup=False)
    else:
        console.print("  template:        the tokenizer's chat template")


def _size(size_bytes: int | None) -> str:
    size = float(size_bytes or 0)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"
