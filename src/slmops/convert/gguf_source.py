"""A GGUF file turned into a Hugging Face folder the ONNX builder can read.

The builder's own GGUF loader reads only fp16/fp32 files, and going through
transformers' GGUF loader is slow. So slmops reads the header itself, dequantizes
each tensor with the `gguf` library straight into a safetensors file under the
Hugging Face names, writes config.json from the metadata and builds tokenizer.json
from the vocabulary stored in the file.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from slmops.errors import ConversionError, UnsupportedArchitecture

MAGIC = b"GGUF"
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9

# GGUF architecture -> (HF architecture, model_type); these are the layouts slmops maps by name.
ARCHITECTURES = {
    "llama": ("LlamaForCausalLM", "llama"),
    "mistral": ("MistralForCausalLM", "mistral"),
    "qwen2": ("Qwen2ForCausalLM", "qwen2"),
    "qwen3": ("Qwen3ForCausalLM", "qwen3"),
}

_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


@dataclass
class GGUFTensor:
    name: str
    shape: tuple[int, ...]  # in numpy (row-major) order, the reverse of GGUF's
    ggml_type: int
    offset: int
    nbytes: int


@dataclass
class GGUFFile:
    path: Path
    metadata: dict = field(default_factory=dict)
    tensors: list[GGUFTensor] = field(default_factory=list)
    data_start: int = 0

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", "unknown"))


class _Cursor:
    def __init__(self, blob: np.ndarray, path: Path):
        self.blob, self.pos, self.path = blob, 0, path

    def take(self, size: int) -> bytes:
        if self.pos + size > len(self.blob):
            raise ConversionError(f"{self.path} is truncated or not a GGUF file; download it again.")
        chunk = self.blob[self.pos : self.pos + size].tobytes()
        self.pos += size
        return chunk

    def scalar(self, fmt: str):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        return self.take(self.scalar("<Q")).decode("utf-8", errors="replace")

    def value(self, kind: int):
        if kind in _SCALARS:
            return self.scalar(_SCALARS[kind])
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            item_kind, count = self.scalar("<I"), self.scalar("<Q")
            return [self.value(item_kind) for _ in range(count)]
        raise ConversionError(f"{self.path}: unknown GGUF value type {kind}; the file is damaged.")


def read_gguf(path: Path) -> GGUFFile:
    """Read a GGUF file's metadata and tensor table (the tensors stay on disk, memory-mapped)."""
    import gguf

    path = Path(path)
    blob = np.memmap(path, dtype=np.uint8, mode="r")
    cursor = _Cursor(blob, path)
    if cursor.take(4) != MAGIC:
        raise ConversionError(f"{path} is not a GGUF file (bad magic); pass a .gguf model file.")
    version = cursor.scalar("<I")
    if version not in (2, 3):
        raise ConversionError(f"{path} is GGUF version {version}; slmops reads versions 2 and 3.")
    tensor_count, kv_count = cursor.scalar("<Q"), cursor.scalar("<Q")
    result = GGUFFile(path)
    for _ in range(kv_count):
        key = cursor.string()
        result.metadata[key] = cursor.value(cursor.scalar("<I"))
    for _ in range(tensor_count):
        name = cursor.string()
        dims = [cursor.scalar("<Q") for _ in range(cursor.scalar("<I"))]
        ggml_type, offset = cursor.scalar("<I"), cursor.scalar("<Q")
        result.tensors.append(
            GGUFTensor(name, tuple(reversed(dims)), ggml_type, offset, _nbytes(gguf, ggml_type, dims))
        )
    alignment = int(result.metadata.get("general.alignment", 32))
    result.data_start = -(-cursor.pos // alignment) * alignment
    end = max((t.offset + t.nbytes for t in result.tensors), default=0)
    if result.data_start + end > len(blob):
        raise ConversionError(
            f"{path} is truncated ({len(blob)} bytes, needs {result.data_start + end}); download it again."
        )
    return result


def _nbytes(gguf, ggml_type: int, dims: list[int]) -> int:
    try:
        block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(ggml_type)]
    except (ValueError, KeyError) as exc:
        raise ConversionError(f"GGUF tensor type {ggml_type} is unknown to the gguf library; upgrade gguf.") from exc
    return int(np.prod(dims, dtype=np.int64)) // block * size


def dequantize(gguf_file: GGUFFile, tensor: GGUFTensor) -> np.ndarray:
    """One tensor as float32, shaped the Hugging Face way ([out, in] for weights)."""
    import gguf

    blob = np.memmap(gguf_file.path, dtype=np.uint8, mode="r")
    start = gguf_file.data_start + tensor.offset
    raw = np.asarray(blob[start : start + tensor.nbytes])
    kind = gguf.GGMLQuantizationType(tensor.ggml_type)
    if kind == gguf.GGMLQuantizationType.F32:
        return raw.view(np.float32).reshape(tensor.shape)
    if kind == gguf.GGMLQuantizationType.F16:
        return raw.view(np.float16).reshape(tensor.shape).astype(np.float32)
    rows = int(np.prod(tensor.shape[:-1], dtype=np.int64))
    return gguf.quants.dequantize(raw.reshape(rows, -1), kind).reshape(tensor.shape).astype(np.float32, copy=False)


def hf_name(gguf_name: str) -> str | None:
    """`blk.3.attn_q.weight` -> `model.layers.3.self_attn.q_proj.weight`; None for tensors HF derives."""
    stem, _, suffix = gguf_name.rpartition(".")
    if stem.startswith("blk."):
        _, layer, part = stem.split(".", 2)
        mapped = _LAYER_NAMES.get(part)
        return f"model.layers.{layer}.{mapped}.{suffix}" if mapped else None
    mapped = _GLOBAL_NAMES.get(stem)
    return f"{mapped}.{suffix}" if mapped else None


def unpermute(weight: np.ndarray, heads: int) -> np.ndarray:
    """Undo llama.cpp's reordering of Q/K rows (it interleaves rotary halves per head)."""
    rows = weight.shape[0]
    return weight.reshape(heads, rows // heads // 2, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def hf_config(gguf_file: GGUFFile) -> dict:
    """config.json for the model the GGUF describes."""
    arch = gguf_file.architecture
    if arch not in ARCHITECTURES:
        raise UnsupportedArchitecture(
            f"GGUF architecture '{arch}' is not supported; supported: {', '.join(sorted(ARCHITECTURES))}."
        )

    def meta(key: str, default: Any = None) -> Any:
        return gguf_file.metadata.get(f"{arch}.{key}", default)

    names = {t.name for t in gguf_file.tensors}
    heads = int(meta("attention.head_count"))
    hidden = int(meta("embedding_length"))
    tokens = gguf_file.metadata.get("tokenizer.ggml.tokens") or []
    config = {
        "architectures": [ARCHITECTURES[arch][0]],
        "model_type": ARCHITECTURES[arch][1],
        "hidden_size": hidden,
        "intermediate_size": int(meta("feed_forward_length")),
        "num_hidden_layers": int(meta("block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(meta("attention.head_count_kv", heads)),
        "head_dim": int(meta("attention.key_length", hidden // heads)),
        "max_position_embeddings": int(meta("context_length", 2048)),
        "rms_norm_eps": float(meta("attention.layer_norm_rms_epsilon", 1e-6)),
        "rope_theta": float(meta("rope.freq_base", 10000.0)),
        "vocab_size": int(meta("vocab_size", len(tokens))),
        "tie_word_embeddings": "output.weight" not in names,
        "hidden_act": "silu",
        "torch_dtype": "float32",
    }
    for key in ("bos", "eos", "padding", "unknown"):
        value = gguf_file.metadata.get(f"tokenizer.ggml.{key}_token_id")
        if value is not None:
            config[{"padding": "pad", "unknown": "unk"}.get(key, key) + "_token_id"] = int(value)
    if arch == "qwen2":
        config["use_sliding_window"] = False
    return config


def write_weights(gguf_file: GGUFFile, config: dict, folder: Path) -> int:
    """Dequantize every tensor into folder/model.safetensors; returns the parameter count."""
    from safetensors.numpy import save_file

    permute = config["model_type"] in ("llama", "mistral")
    heads = {"self_attn.q_proj": config["num_attention_heads"], "self_attn.k_proj": config["num_key_value_heads"]}
    tensors = {}
    for tensor in gguf_file.tensors:
        name = hf_name(tensor.name)
        if name is None:
            continue
        weight = dequantize(gguf_file, tensor)
        part = name.rsplit(".", 1)[0].split(".", 3)[-1] if name.startswith("model.layers.") else ""
        if permute and part in heads:
            weight = unpermute(weight, heads[part])
        tensors[name] = np.ascontiguousarray(weight)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return sum(t.size for t in tensors.values())


def write_tokenizer(gguf_file: GGUFFile, folder: Path) -> None:
    """tokenizer.json + tokenizer_config.json (with the chat template) from the GGUF vocabulary."""
    from transformers import PreTrainedTokenizerFast
    from transformers.integrations.gguf.gguf_tokenizer_mapping import (
        GGUF_TOKENIZER_MAPPING,
        convert_gguf_tokenizer,
    )

    meta = gguf_file.metadata
    if "tokenizer.ggml.tokens" not in meta:
        raise ConversionError(f"{gguf_file.path} has no tokenizer vocabulary; slmops needs one to run the model.")
    tokenizer_dict = {
        name: meta[f"tokenizer.{key}"]
        for key, name in GGUF_TOKENIZER_MAPPING["tokenizer"].items()
        if f"tokenizer.{key}" in meta
    }
    backend, _ = convert_gguf_tokenizer(gguf_file.architecture, tokenizer_dict)
    tokens = meta["tokenizer.ggml.tokens"]
    special = {}
    for name, key in (("bos_token", "bos"), ("eos_token", "eos"), ("unk_token", "unknown"), ("pad_token", "padding")):
        token_id = meta.get(f"tokenizer.ggml.{key}_token_id")
        if token_id is not None and token_id < len(tokens):
            special[name] = tokens[token_id]
    fast = PreTrainedTokenizerFast(tokenizer_object=backend, **special)
    if meta.get("tokenizer.chat_template"):
        fast.chat_template = meta["tokenizer.chat_template"]
    fast.save_pretrained(str(folder))
    _set_add_bos(folder, bool(meta.get("tokenizer.ggml.add_bos_token", meta.get("tokenizer.ggml.model") == "llama")))


def _set_add_bos(folder: Path, add_bos: bool) -> None:
    path = folder / "tokenizer_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config["add_bos_token"] = add_bos
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def gguf_to_hf(path: Path, folder: Path, gguf_file: GGUFFile | None = None) -> dict:
    """Write a Hugging Face folder for the GGUF at `path` into `folder`; returns its config."""
    gguf_file = gguf_file or read_gguf(path)
    config = hf_config(gguf_file)
    folder.mkdir(parents=True, exist_ok=True)
    write_weights(gguf_file, config, folder)
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    eos = config.get("eos_token_id")
    generation = {
        "bos_token_id": config.get("bos_token_id"),
        "eos_token_id": eos,
        "pad_token_id": config.get("pad_token_id", eos),
    }
    (folder / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n", encoding="utf-8")
    write_tokenizer(gguf_file, folder)
    return config
