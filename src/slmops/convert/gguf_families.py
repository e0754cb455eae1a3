"""One contract per GGUF architecture: the Hugging Face config it stands for, and how each tensor
goes back to its Hugging Face name and values.

The conventions undone here are the ones llama.cpp's `convert_hf_to_gguf.py` applies:
- Q/K rows of the llama-style families (llama, mistral, smollm3, granite, olmo) are reordered
  per head for llama.cpp's interleaved rotary pairs; they are put back in rotate-half order.
- Gemma's RMSNorm scales by (1 + w), and llama.cpp stores 1 + w: every norm gets 1 subtracted.
- Phi-3 keeps its fused qkv_proj and gate_up_proj (llama.cpp stores them fused too); a
  `--fuse-qkv` file of another family is split back into q/k/v.
- Values that exist only as metadata (Gemma's soft-capping and sliding window, Granite's
  multipliers, OLMo's clip_qkv) or as tensors (Llama 3's rope_freqs, Phi-3's long/short rope
  factors) go back into config.json; what llama.cpp leaves implicit (Gemma's query scaling,
  its sliding-window layer pattern, SmolLM3's NoPE every 4th layer) is filled in the way
  llama.cpp itself runs the file.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from slmops.convert.gguf_file import GGUFFile, dequantize
from slmops.errors import ConversionError

# GGUF tensor name (inside blk.N) -> Hugging Face module (inside model.layers.N)
_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_qkv": "self_attn.qkv_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
# Gemma 2 and 3 norm both sides of attention and of the MLP.
_GEMMA2_NAMES = {
    "ffn_norm": "pre_feedforward_layernorm",
    "post_attention_norm": "post_attention_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
}
_PHI3_NAMES = {"ffn_up": "mlp.gate_up_proj"}
_GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
# Tensors that carry configuration, not weights.
_CONFIG_TENSORS = ("rope_freqs.weight", "rope_factors_long.weight", "rope_factors_short.weight")
_GELU_TANH = "gelu_pytorch_tanh"


@dataclass
class Family:
    architecture: str  # the Hugging Face class
    model_type: str
    extra_config: Callable[[GGUFFile, dict], dict]
    permuted_qk: bool = False
    norm_offset: float = 0.0
    fused_qkv: bool = False
    layer_names: dict[str, str] = field(default_factory=dict)


def hf_name(gguf_name: str, family: Family) -> str | None:
    """`blk.3.attn_q.weight` -> `model.layers.3.self_attn.q_proj.weight`; None when the family has no such tensor."""
    stem, _, suffix = gguf_name.rpartition(".")
    if stem.startswith("blk."):
        _, layer, part = stem.split(".", 2)
        mapped = family.layer_names.get(part) or _LAYER_NAMES.get(part)
        return f"model.layers.{layer}.{mapped}.{suffix}" if mapped else None
    mapped = _GLOBAL_NAMES.get(stem)
    return f"{mapped}.{suffix}" if mapped else None


def unpermute(weight: np.ndarray, heads: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row order (it interleaves each head's two rotary halves)."""
    rows = weight.shape[0]
    return weight.reshape(heads, rows // heads // 2, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


# --- config.json ------------------------------------------------------------------------------


def hf_config_fields(gguf_file: GGUFFile, family: Family) -> dict:
    """The keyword arguments of the family's transformers config class."""
    fields = _common_fields(gguf_file)
    fields.update(family.extra_config(gguf_file, fields))
    return fields


def _common_fields(g: GGUFFile) -> dict:
    heads, hidden = _scalar(g, "attention.head_count"), _scalar(g, "embedding_length")
    embeddings = g.tensor("token_embd.weight")
    if embeddings is None:
        raise ConversionError(f"{g.path.name} has no token_embd.weight tensor; the file is incomplete.")
    fields: dict[str, Any] = {
        "hidden_size": hidden,
        "intermediate_size": _scalar(g, "feed_forward_length"),
        "num_hidden_layers": _scalar(g, "block_count"),
        "num_attention_heads": heads,
        "num_key_value_heads": _scalar(g, "attention.head_count_kv", heads),
        "head_dim": int(g.arch_value("attention.key_length", hidden // heads)),
        "max_position_embeddings": int(g.arch_value("context_length", 2048)),
        "rms_norm_eps": float(g.arch_value("attention.layer_norm_rms_epsilon", 1e-6)),
        "rope_theta": float(g.arch_value("rope.freq_base", 10000.0)),
        "vocab_size": embeddings.shape[0],
        "tie_word_embeddings": g.tensor("output.weight") is None,
        "torch_dtype": "float32",
    }
    for key, name in (("bos", "bos"), ("eos", "eos"), ("padding", "pad")):
        value = g.metadata.get(f"tokenizer.ggml.{key}_token_id")
        fields[f"{name}_token_id"] = int(value) if value is not None else None
    return fields


def _scalar(g: GGUFFile, key: str, default: int | None = None) -> int:
    value = g.arch_value(key, default)
    if isinstance(value, list):  # per-layer counts: layouts none of the mapped families use
        if len(set(value)) != 1:
            raise ConversionError(f"{g.path.name}: per-layer {key} values {sorted(set(value))} are not supported.")
        value = value[0]
    if value is None:
        raise ConversionError(f"{g.path.name} has no {g.architecture}.{key}; the file is incomplete.")
    return int(value)


def _has(g: GGUFFile, name: str) -> bool:
    return g.tensor(name) is not None


def _rope_scaling(g: GGUFFile, fields: dict) -> dict | None:
    """rope_scaling from the generic rope.scaling.* keys (linear and YaRN) or Llama 3's rope_freqs."""
    if _has(g, "rope_freqs.weight"):
        return llama3_rope_scaling(_config_tensor(g, "rope_freqs.weight"), fields["rope_theta"], _rope_dim(g, fields))
    kind = g.arch_value("rope.scaling.type")
    factor = g.arch_value("rope.scaling.factor")
    if kind == "linear" and factor:
        return {"rope_type": "linear", "factor": float(factor)}
    if kind == "yarn" and factor:
        scaling = {"rope_type": "yarn", "factor": float(factor)}
        original = g.arch_value("rope.scaling.original_context_length")
        if original:
            scaling["original_max_position_embeddings"] = int(original)
        for key, name in (("yarn_beta_fast", "beta_fast"), ("yarn_beta_slow", "beta_slow")):
            if g.arch_value(f"rope.scaling.{key}") is not None:
                scaling[name] = float(g.arch_value(f"rope.scaling.{key}"))
        return scaling
    return None


def _rope_dim(g: GGUFFile, fields: dict) -> int:
    return int(g.arch_value("rope.dimension_count", fields["head_dim"]))


def _config_tensor(g: GGUFFile, name: str) -> np.ndarray:
    tensor = g.tensor(name)
    assert tensor is not None
    return dequantize(g, tensor).astype(np.float64)


def llama3_rope_scaling(factors: np.ndarray, theta: float, rope_dim: int) -> dict:
    """Llama 3's rope_scaling from the per-frequency divisors llama.cpp stores as rope_freqs.

    llama.cpp keeps only the divisors; the four parameters are recovered by fitting the
    smoothed band (or by the published Llama 3.x values) and checked by recomputing them.
    """
    wavelengths = 2 * math.pi * theta ** (np.arange(0, rope_dim, 2) / rope_dim)
    factor = float(factors.max())
    for low, high, original in _llama3_candidates(factors, wavelengths, factor):
        expected = _llama3_divisors(wavelengths, factor, low, high, original)
        if np.allclose(expected, factors, rtol=1e-4):
            return {
                "rope_type": "llama3",
                "factor": factor,
                "low_freq_factor": low,
                "high_freq_factor": high,
                "original_max_position_embeddings": original,
            }
    raise ConversionError("the GGUF's rope_freqs tensor does not follow Llama 3's rope scaling; slmops cannot map it.")


def _llama3_candidates(factors: np.ndarray, wavelengths: np.ndarray, factor: float) -> Iterator[tuple]:
    yield 1.0, 4.0, 8192  # Llama 3.1, 3.2 and 3.3
    between = (factors > 1 + 1e-6) & (factors < factor * (1 - 1e-6))
    # In the band, 1/divisor = (1 - s)/factor + s with s = original/(wavelength*(high-low)) - low/(high-low);
    # only the band's edges show in the divisors, so low = 1 loses nothing.
    smooth = (1 / factors[between] - 1 / factor) / (1 - 1 / factor)
    if len(smooth) >= 2:
        slope, offset = np.polyfit(1 / wavelengths[between], smooth, 1)
        if offset < 0:
            yield 1.0, round(1 - 1 / offset, 6), round(slope / -offset)
        return
    unscaled, scaled = wavelengths[factors <= 1 + 1e-6], wavelengths[factors >= factor * (1 - 1e-6)]
    for high in (4.0, 2.0, 8.0, 3.0, 6.0, 16.0):  # too few points to fit: try the usual band widths
        if len(smooth) == 1:
            yield 1.0, high, round(wavelengths[between][0] * (1 + smooth[0] * (high - 1)))
        elif len(unscaled) and len(scaled) and high * unscaled.max() < scaled.min():
            yield 1.0, high, round((high * unscaled.max() + scaled.min()) / 2)


def _llama3_divisors(wavelengths: np.ndarray, factor: float, low: float, high: float, original: int) -> np.ndarray:
    smooth = (original / wavelengths - low) / (high - low)
    divisors = 1 / ((1 - smooth) / factor + smooth)
    divisors = np.where(wavelengths < original / high, 1.0, divisors)
    return np.where(wavelengths > original / low, factor, divisors)


def _with_rope(g: GGUFFile, fields: dict) -> dict:
    scaling = _rope_scaling(g, fields)
    return {"rope_scaling": scaling} if scaling else {}


def _attention_bias(g: GGUFFile) -> bool:
    return _has(g, "blk.0.attn_q.bias") or _has(g, "blk.0.attn_qkv.bias")


def _llama(g: GGUFFile, fields: dict) -> dict:
    if g.arch_value("expert_count"):
        raise ConversionError(
            f"{g.path.name} is a mixture-of-experts llama (Mixtral); slmops does not export MoE models."
        )
    return {
        **_with_rope(g, fields),
        "attention_bias": _attention_bias(g),
        "mlp_bias": _has(g, "blk.0.ffn_down.bias"),
        "hidden_act": "silu",
    }


def _mistral(g: GGUFFile, fields: dict) -> dict:
    return {**_llama(g, fields), "sliding_window": g.arch_value("attention.sliding_window") or None}


def _smollm3(g: GGUFFile, fields: dict) -> dict:
    layers = fields["num_hidden_layers"]
    # llama.cpp runs every 4th SmolLM3 layer without rope; 1 marks a layer that uses it.
    return {
        **_llama(g, fields),
        "no_rope_layer_interval": 4,
        "no_rope_layers": [int((i + 1) % 4 != 0) for i in range(layers)],
    }


def _granite(g: GGUFFile, fields: dict) -> dict:
    return {
        **_llama(g, fields),
        "head_dim": fields["hidden_size"] // fields["num_attention_heads"],  # llama.cpp ignores Granite's head_dim
        "embedding_multiplier": float(g.arch_value("embedding_scale", 1.0)),
        "attention_multiplier": float(g.arch_value("attention.scale", 1.0)),
        "residual_multiplier": float(g.arch_value("residual_scale", 1.0)),
        "logits_scaling": float(g.arch_value("logit_scale", 1.0)),
    }


def _olmo(g: GGUFFile, fields: dict) -> dict:
    clip = g.arch_value("attention.clamp_kqv")
    return {**_with_rope(g, fields), "clip_qkv": float(clip) if clip else None, "attention_bias": _attention_bias(g)}


def _qwen2(g: GGUFFile, fields: dict) -> dict:
    return {**_with_rope(g, fields), "use_sliding_window": False, "hidden_act": "silu"}


def _qwen3(g: GGUFFile, fields: dict) -> dict:
    return {**_qwen2(g, fields), "attention_bias": _attention_bias(g)}


def _gemma(g: GGUFFile, fields: dict) -> dict:
    return {"hidden_act": _GELU_TANH, "hidden_activation": _GELU_TANH}


def _gemma_query_scale(g: GGUFFile, fields: dict, layers_27b: int) -> int:
    # llama.cpp scales queries by 1/sqrt(head_dim), except for the 27B model (hidden/heads).
    if fields["num_hidden_layers"] == layers_27b:
        return fields["hidden_size"] // fields["num_attention_heads"]
    return fields["head_dim"]


def _sliding_layers(g: GGUFFile, layers: int, default_pattern: int) -> list[str]:
    """Per-layer attention kinds as llama.cpp derives them: every n-th layer is global."""
    pattern = g.arch_value("attention.sliding_window_pattern", default_pattern)
    if isinstance(pattern, list):
        sliding = [bool(p) for p in pattern]
    else:
        sliding = [i % int(pattern) < int(pattern) - 1 for i in range(layers)]
    return ["sliding_attention" if s else "full_attention" for s in sliding]


def _gemma2(g: GGUFFile, fields: dict) -> dict:
    layers = fields["num_hidden_layers"]
    return {
        **_gemma(g, fields),
        "attn_logit_softcapping": g.arch_value("attn_logit_softcapping"),
        "final_logit_softcapping": g.arch_value("final_logit_softcapping"),
        "sliding_window": int(g.arch_value("attention.sliding_window", 4096)),
        "layer_types": _sliding_layers(g, layers, 2),
        "query_pre_attn_scalar": _gemma_query_scale(g, fields, 46),
    }


def _gemma3(g: GGUFFile, fields: dict) -> dict:
    layers, window = fields["num_hidden_layers"], g.arch_value("attention.sliding_window")
    extra = {
        **_gemma(g, fields),
        **_with_rope(g, fields),
        "rope_local_base_freq": float(g.arch_value("rope.freq_base_swa", 10000.0)),
        "final_logit_softcapping": g.arch_value("final_logit_softcapping"),
        "attn_logit_softcapping": None,
        "query_pre_attn_scalar": _gemma_query_scale(g, fields, 62),
    }
    if window:
        extra.update(sliding_window=int(window), layer_types=_sliding_layers(g, layers, 6))
    else:
        extra["layer_types"] = ["full_attention"] * layers
    return extra


def _phi3(g: GGUFFile, fields: dict) -> dict:
    head_dim = fields["hidden_size"] // fields["num_attention_heads"]
    extra: dict[str, Any] = {
        "head_dim": head_dim,
        "original_max_position_embeddings": int(
            g.arch_value("rope.scaling.original_context_length", fields["max_position_embeddings"])
        ),
        "sliding_window": g.arch_value("attention.sliding_window") or None,
        "partial_rotary_factor": int(g.arch_value("rope.dimension_count", head_dim)) / head_dim,
        "hidden_act": "silu",
    }
    if _has(g, "rope_factors_long.weight"):
        extra["rope_scaling"] = {
            "rope_type": "longrope",
            "long_factor": _config_tensor(g, "rope_factors_long.weight").tolist(),
            "short_factor": _config_tensor(g, "rope_factors_short.weight").tolist(),
        }
    return extra


FAMILIES: dict[str, Family] = {
    "llama": Family("LlamaForCausalLM", "llama", _llama, permuted_qk=True),
    "mistral": Family("MistralForCausalLM", "mistral", _mistral, permuted_qk=True),
    "smollm3": Family("SmolLM3ForCausalLM", "smollm3", _smollm3, permuted_qk=True),
    "granite": Family("GraniteForCausalLM", "granite", _granite, permuted_qk=True),
    "olmo": Family("OlmoForCausalLM", "olmo", _olmo, permuted_qk=True),
    "qwen2": Family("Qwen2ForCausalLM", "qwen2", _qwen2),
    "qwen3": Family("Qwen3ForCausalLM", "qwen3", _qwen3),
    "gemma": Family("GemmaForCausalLM", "gemma", _gemma, norm_offset=1.0),
    "gemma2": Family("Gemma2ForCausalLM", "gemma2", _gemma2, norm_offset=1.0, layer_names=_GEMMA2_NAMES),
    "gemma3": Family("Gemma3ForCausalLM", "gemma3_text", _gemma3, norm_offset=1.0, layer_names=_GEMMA2_NAMES),
    "phi3": Family("Phi3ForCausalLM", "phi3", _phi3, fused_qkv=True, layer_names=_PHI3_NAMES),
}


# --- weights ----------------------------------------------------------------------------------


def hf_tensors(g: GGUFFile, family: Family, config: dict) -> Iterator[tuple[str, np.ndarray]]:
    """Every weight under its Hugging Face name with llama.cpp's conversions undone."""
    heads, kv_heads, head_dim = config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]
    for tensor in g.tensors:
        if tensor.name in _CONFIG_TENSORS:
            continue
        name = hf_name(tensor.name, family)
        if name is None:
            raise ConversionError(
                f"{g.path.name}: tensor {tensor.name} has no place in {family.architecture}; "
                "the file holds a variant slmops does not map."
            )
        weight = dequantize(g, tensor)
        if family.norm_offset and tensor.name.endswith("norm.weight"):
            weight = weight - np.float32(family.norm_offset)
        if ".self_attn.qkv_proj." in name and not family.fused_qkv:
            sizes = [heads * head_dim, kv_heads * head_dim]
            for part, piece in zip(("q_proj", "k_proj", "v_proj"), np.split(weight, np.cumsum(sizes))):
                split_name = name.replace("qkv_proj", part)
                yield split_name, _unpermuted(piece, split_name, family, heads, kv_heads)
            continue
        yield name, _unpermuted(weight, name, family, heads, kv_heads)


def _unpermuted(weight: np.ndarray, name: str, family: Family, heads: int, kv_heads: int) -> np.ndarray:
    if family.permuted_qk and ".self_attn.q_proj." in name:
        return unpermute(weight, heads)
    if family.permuted_qk and ".self_attn.k_proj." in name:
        return unpermute(weight, kv_heads)
    return weight
