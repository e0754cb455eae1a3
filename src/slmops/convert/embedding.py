"""`convert --task embedding`: a decoder model whose output is its last hidden state.

The builder's ``exclude_lm_head`` option ends the graph at the final norm, so the model
outputs ``hidden_states`` instead of logits; inference_model.json then says how the
runtime pools those states into one vector per input (see :mod:`slmops.runtime.embed`).
"""

from __future__ import annotations

import json
from pathlib import Path

from slmops.convert.architectures import causal_lm_of
from slmops.convert.sources import Source
from slmops.errors import UsageError
from slmops.modelfolder.inference_model import EMBEDDING_TASK, EmbeddingSettings

TASKS = ("text-generation", EMBEDDING_TASK)
POOLINGS = ("mean", "last")
BUILDER_OPTIONS = {"exclude_lm_head": "true"}
# llama.cpp's <arch>.pooling_type values in a GGUF header
_GGUF_POOLING = {1: "mean", 3: "last"}


def check_task(task: str, pooling: str | None) -> None:
    """Raises UsageError for an unknown task or pooling, or a pooling without ``--task embedding``."""
    if task not in TASKS:
        raise UsageError(f"task '{task}' is not supported; choose one of {', '.join(TASKS)}.")
    if pooling is not None and pooling not in POOLINGS:
        raise UsageError(f"pooling '{pooling}' is not supported; choose one of {', '.join(POOLINGS)}.")
    if pooling is not None and task != EMBEDDING_TASK:
        raise UsageError("--pooling applies to embedding models only; add --task embedding.")


def backbone_architecture(config: dict) -> str | None:
    """The architecture of a checkpoint without its LM head (e.g. Qwen3Model), else None."""
    architectures = config.get("architectures") or []
    return architectures[0] if architectures and causal_lm_of(architectures[0]) else None


def check_backbone(src: Source, task: str) -> None:
    """A backbone without an LM head cannot make text: raises UsageError unless the task is embedding."""
    backbone = backbone_architecture(src.config)
    if backbone and task != EMBEDDING_TASK:
        raise UsageError(
            f"{src.path} holds a {backbone}, a model without its LM head: it cannot generate text; "
            "convert it with --task embedding."
        )


def as_causal_lm(hf_dir: Path, folder: Path, config: dict) -> tuple[Path, dict]:
    """``hf_dir`` seen as its causal LM class (files linked, config.json rewritten), for the builder."""
    folder.mkdir()
    for item in hf_dir.iterdir():
        if item.name != "config.json":
            (folder / item.name).symlink_to(item.absolute())
    config = {**config, "architectures": [causal_lm_of(config["architectures"][0])]}
    (folder / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return folder, config


def embedding_settings(src: Source, config: dict, requested: str | None, notes: list[str]) -> EmbeddingSettings:
    """The pooling an embedding conversion writes: ``requested``, else what the source declares, else mean."""
    declared, where = _declared_pooling(src)
    pooling = requested or declared or "mean"
    if requested and declared and requested != declared:
        notes.append(f"--pooling {requested} overrides the {declared} pooling {where} declares")
    elif not requested:
        notes.append(f"{pooling} pooling ({f'declared by {where}' if declared else 'the default for decoder models'})")
    return EmbeddingSettings(pooling=pooling, normalize=True, dimensions=config.get("hidden_size"))


def _declared_pooling(src: Source) -> tuple[str | None, str]:
    if src.kind == "gguf" and src.gguf is not None:
        kind = src.gguf.arch_value("pooling_type")
        return _GGUF_POOLING.get(kind) if isinstance(kind, int) else None, "the GGUF header"
    for folder in (src.path, src.base):
        if folder is not None and folder.is_dir():
            pooling = _sentence_transformers_pooling(folder)
            if pooling:
                return pooling, f"{folder.name}'s sentence-transformers Pooling config"
    return None, ""


def _sentence_transformers_pooling(folder: Path) -> str | None:
    """The pooling of a sentence-transformers model folder (its Pooling module's config), if any."""
    for config_path in _pooling_configs(folder):
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if config.get("pooling_mode_lasttoken"):
            return "last"
        if config.get("pooling_mode_mean_tokens"):
            return "mean"
    return None


def _pooling_configs(folder: Path) -> list[Path]:
    paths = []
    try:
        modules = json.loads((folder / "modules.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        modules = []
    for module in modules if isinstance(modules, list) else []:
        if isinstance(module, dict) and str(module.get("type", "")).endswith("Pooling"):
            paths.append(folder / str(module.get("path", "")) / "config.json")
    return [*paths, folder / "1_Pooling" / "config.json"]
