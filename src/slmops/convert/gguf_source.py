"""A GGUF file turned into a Hugging Face folder the ONNX builder can read.

The builder's own GGUF loader reads only fp16/fp32 files, and going through
transformers' GGUF loader is slow. So slmops reads the header itself, dequantizes
each tensor with the `gguf` library straight into a safetensors file under the
Hugging Face names (undoing llama.cpp's conversions, see gguf_families), writes
config.json from the metadata and builds tokenizer.json from the vocabulary stored
in the file. An architecture slmops does not map goes through transformers' GGUF
loader when transformers can read it.
"""

from __future__ import annotations

import json
from pathlib import Path

from slmops.convert.architectures import SUPPORTED_ARCHITECTURES
from slmops.convert.gguf_families import FAMILIES, Family, hf_config_fields, hf_tensors, unpermute
from slmops.convert.gguf_file import GGUFFile, GGUFTensor, dequantize, read_gguf
from slmops.convert.gguf_tokenizer import CONTROL, write_tokenizer
from slmops.errors import ConversionError, UnsupportedArchitecture

__all__ = [
    "FAMILIES",
    "GGUFFile",
    "GGUFTensor",
    "dequantize",
    "gguf_to_hf",
    "hf_config",
    "read_gguf",
    "unpermute",
]


def hf_config(gguf_file: GGUFFile) -> dict:
    """config.json for the model the GGUF describes (raises UnsupportedArchitecture first)."""
    family = FAMILIES.get(gguf_file.architecture)
    if family is None:
        return _transformers_config(gguf_file)
    return _family_config(gguf_file, family).to_dict()


def _family_config(gguf_file: GGUFFile, family: Family):
    from transformers import AutoConfig

    config = AutoConfig.for_model(family.model_type, **hf_config_fields(gguf_file, family))
    config.architectures = [family.architecture]
    return config


def gguf_to_hf(path: Path, folder: Path, gguf_file: GGUFFile | None = None, notes: list[str] | None = None) -> dict:
    """Write a Hugging Face folder for the GGUF at `path` into `folder`; returns its config.

    Args:
        path: the .gguf file.
        folder: the folder to create (config.json, generation_config.json,
            model.safetensors, tokenizer.json, tokenizer_config.json).
        gguf_file: its header, when already read.
        notes: one-line remarks for the conversion report are appended here.
    """
    gguf_file = gguf_file or read_gguf(path)
    notes = notes if notes is not None else []
    folder.mkdir(parents=True, exist_ok=True)
    family = FAMILIES.get(gguf_file.architecture)
    if family is None:
        return _through_transformers(gguf_file, folder, notes)
    config = _family_config(gguf_file, family)
    write_weights(gguf_file, family, config.to_dict(), folder)
    config.save_pretrained(str(folder))
    _write_generation_config(gguf_file, config.to_dict(), folder)
    write_tokenizer(gguf_file, folder, notes)
    return json.loads((folder / "config.json").read_text(encoding="utf-8"))


def write_weights(gguf_file: GGUFFile, family: Family, config: dict, folder: Path) -> int:
    """Dequantize every tensor into folder/model.safetensors; returns the parameter count."""
    import numpy as np
    from safetensors.numpy import save_file

    tensors = {name: np.ascontiguousarray(weight) for name, weight in hf_tensors(gguf_file, family, config)}
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return sum(t.size for t in tensors.values())


def _write_generation_config(gguf_file: GGUFFile, config: dict, folder: Path) -> None:
    eos = config.get("eos_token_id")
    generation = {
        "bos_token_id": config.get("bos_token_id"),
        "eos_token_id": end_of_generation_ids(gguf_file) or eos,
        "pad_token_id": config.get("pad_token_id", eos),
    }
    (folder / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n", encoding="utf-8")


def end_of_generation_ids(gguf_file: GGUFFile) -> list[int] | int | None:
    """EOS plus the end-of-turn and end-of-message tokens the file names, when they are control
    tokens (Gemma's <end_of_turn>, Llama 3's <|eot_id|>): a chat turn ends at any of them."""
    meta = gguf_file.metadata
    types = meta.get("tokenizer.ggml.token_type") or []
    eos = meta.get("tokenizer.ggml.eos_token_id")
    ids = [] if eos is None else [int(eos)]
    for key in ("eot", "eom"):
        token_id = meta.get(f"tokenizer.ggml.{key}_token_id")
        if token_id is not None and token_id < len(types) and types[token_id] == CONTROL and token_id not in ids:
            ids.append(int(token_id))
    return ids if len(ids) > 1 else (ids[0] if ids else None)


# --- architectures slmops does not map: transformers' GGUF loader ------------------------------


def _transformers_architectures() -> dict[str, str]:
    """GGUF architecture -> the Hugging Face causal-LM class transformers' GGUF loader builds."""
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    names = {"qwen2_moe": "qwen2moe", "qwen3_moe": "qwen3moe", "gpt_oss": "gpt-oss"}
    found = {}
    for model_type in GGUF_SUPPORTED_ARCHITECTURES:
        hf_type = {"gemma3": "gemma3_text"}.get(model_type, model_type)
        if hf_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
            found[names.get(model_type, model_type)] = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[hf_type]
    return found


def _transformers_config(gguf_file: GGUFFile) -> dict:
    arch = gguf_file.architecture
    readable = {
        gguf_arch: cls
        for gguf_arch, cls in _transformers_architectures().items()
        if cls in SUPPORTED_ARCHITECTURES and gguf_arch not in FAMILIES
    }
    if arch not in readable:
        raise UnsupportedArchitecture(
            f"GGUF architecture '{arch}' is not supported; supported: {', '.join(sorted(FAMILIES))}"
            + (f", and through transformers' GGUF loader: {', '.join(sorted(readable))}." if readable else ".")
        )
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    config = load_gguf_checkpoint(str(gguf_file.path), return_tensors=False)["config"]
    config["architectures"] = [readable[arch]]
    return config


def _through_transformers(gguf_file: GGUFFile, folder: Path, notes: list[str]) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _transformers_config(gguf_file)  # the one-line error for an architecture nobody reads
    directory, name = str(gguf_file.path.parent), gguf_file.path.name
    try:
        model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    except (ValueError, KeyError, NotImplementedError) as exc:
        raise ConversionError(f"transformers' GGUF loader cannot read {name}: {exc}") from exc
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    notes.append(f"GGUF architecture '{gguf_file.architecture}' was read by transformers' GGUF loader")
    return json.loads((folder / "config.json").read_text(encoding="utf-8"))
