"""Where the onnxruntime-genai builder and the checkpoints users bring disagree.

The builder reads the config object transformers 5 makes of ``config.json``, and
some families reach it in a shape it does not expect (Gemma 3's rope settings nested
per layer type, Phi-3's rope type under a new key); slmops adjusts that object in
memory before the build, never the user's files. For two families the builder writes
a graph that does not compute what the checkpoint does (OLMo's layer norm and clipped
q/k/v, SmolLM3's layers without rope); slmops rewrites those few nodes after the build.
What cannot be fixed stops before the build with a one-line UnsupportedArchitecture.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from slmops.errors import UnsupportedArchitecture

GraphFix = Callable[[Path], None]


def prepare(config: Any) -> list[GraphFix]:
    """Adjust the builder's `config` in place; returns the fixes its graph needs after the build.

    Raises:
        UnsupportedArchitecture: the model uses a feature the builder cannot export.
    """
    architecture = (getattr(config, "architectures", None) or [""])[0]
    _refuse_unsupported(config, architecture)
    if architecture == "Gemma3ForCausalLM":
        _flatten_gemma3_rope(config)
    if architecture == "Phi3ForCausalLM":
        _phi3_rope(config)
    if architecture == "SmolLM3ForCausalLM":
        return _smollm3_layers_without_rope(config)
    if architecture == "OlmoForCausalLM":
        clip = getattr(config, "clip_qkv", None)
        return [_olmo_layer_norm, *([_clipped_qkv(float(clip))] if clip else [])]
    return []


def _refuse_unsupported(config: Any, architecture: str) -> None:
    if architecture == "Gemma3ForCausalLM":
        full = _per_layer_type(config).get("full_attention", {})
        if full.get("rope_type", "default") != "default":
            raise UnsupportedArchitecture(
                f"Gemma 3 with '{full['rope_type']}' rope scaling on its global layers is not supported: "
                "the ONNX builder would scale the local layers' rope too."
            )


def _per_layer_type(config: Any) -> dict:
    rope = getattr(config, "rope_parameters", None)
    return rope if isinstance(rope, dict) and "full_attention" in rope else {}


def _flatten_gemma3_rope(config: Any) -> None:
    """Gemma 3's rope settings as the builder reads them: flat, with the local theta apart.

    transformers 5 keeps one rope dict per layer type (for configs of either version);
    the builder expects the global layers' dict at the top and `rope_local_base_freq`.
    """
    per_type = _per_layer_type(config)
    if not per_type:
        return
    config.rope_parameters = dict(per_type["full_attention"])
    config.rope_theta = per_type["full_attention"].get("rope_theta", 1_000_000.0)
    config.rope_local_base_freq = per_type.get("sliding_attention", {}).get("rope_theta", 10_000.0)


def _phi3_rope(config: Any) -> None:
    rope = getattr(config, "rope_parameters", None) or {}
    if rope.get("rope_type") == "longrope":
        # The builder reads the transformers 4 key "type"; transformers 5 writes "rope_type" only.
        rope.setdefault("type", "longrope")
        return
    # Without longrope the original context length means nothing to transformers, but the builder
    # takes a difference from max_position_embeddings for a long/short rope model.
    original = getattr(config, "original_max_position_embeddings", None)
    if original is not None and original != config.max_position_embeddings:
        config.original_max_position_embeddings = config.max_position_embeddings


def _smollm3_layers_without_rope(config: Any) -> list[GraphFix]:
    """SmolLM3 skips rope in every 4th layer; the builder cannot export such a layer.

    It is built with rope like the others, and rope is then switched off in that
    layer's attention node, which applies it itself.
    """
    without = [index for index, uses_rope in enumerate(config.no_rope_layers) if not uses_rope]
    if not without:
        return []
    config.no_rope_layers = [1] * len(config.no_rope_layers)

    def switch_off_rope(model_dir: Path) -> None:
        _edit_graph(model_dir, lambda graph: _set_do_rotary(graph, without))

    return [switch_off_rope]


def _set_do_rotary(graph, layers: list[int]) -> None:
    from onnx import helper

    names = {f"/model/layers.{index}/attn/GroupQueryAttention" for index in layers}
    found = 0
    for node in graph.node:
        if node.name in names:
            kept = [attribute for attribute in node.attribute if attribute.name != "do_rotary"]
            del node.attribute[:]
            node.attribute.extend([*kept, helper.make_attribute("do_rotary", 0)])
            found += 1
    if found != len(names):
        raise UnsupportedArchitecture(
            "SmolLM3's layers without rope could not be found in the exported graph; "
            "this onnxruntime-genai version builds them differently."
        )


def _olmo_layer_norm(model_dir: Path) -> None:
    """OLMo normalizes with a LayerNorm without weights; the builder writes an RMSNorm.

    Each (Skip)SimplifiedLayerNormalization becomes a (Skip)LayerNormalization with the
    builder's unit weight and a zero bias: the mean is subtracted as OLMo does.
    """
    _edit_graph(model_dir, _rms_norms_to_layer_norms)


def _rms_norms_to_layer_norms(graph) -> None:
    from onnx import helper

    biases: dict[str, str] = {}
    for node in graph.node:
        if node.op_type not in ("SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization"):
            continue
        weight = node.input[2] if node.op_type.startswith("Skip") else node.input[1]
        if weight not in biases:
            biases[weight] = f"{weight}.zero_bias"
            tensor = _initializer(graph, weight)
            size = tensor.dims[-1]
            graph.initializer.append(helper.make_tensor(biases[weight], tensor.data_type, [size], [0.0] * size))
        node.op_type = node.op_type.replace("Simplified", "")
        node.input.append(biases[weight])
    if not biases:
        raise UnsupportedArchitecture(
            "OLMo's layer norms could not be found in the exported graph; "
            "this onnxruntime-genai version builds them differently."
        )


def _clipped_qkv(limit: float) -> GraphFix:
    """OLMo's clip_qkv: queries, keys and values clamped to [-limit, limit], which the builder omits.

    A Clip goes on each projection that feeds an attention node (rope is applied inside it).
    """

    def clip(model_dir: Path) -> None:
        _edit_graph(model_dir, lambda graph: _clip_attention_inputs(graph, limit))

    return clip


def _clip_attention_inputs(graph, limit: float) -> None:
    from onnx import TensorProto, helper

    producers = {output: node for node in graph.node for output in node.output}
    bounds = ("/model/constants/clip_qkv/min", "/model/constants/clip_qkv/max")
    graph.initializer.extend(
        helper.make_tensor(name, TensorProto.FLOAT, [], [value]) for name, value in zip(bounds, (-limit, limit))
    )
    nodes = []
    for node in graph.node:
        if node.op_type == "GroupQueryAttention":
            for index, name in enumerate(node.input[:3]):
                if not name:
                    continue
                if producers[name].op_type not in ("MatMul", "MatMulNBits", "Add"):
                    raise UnsupportedArchitecture(
                        "OLMo's clip_qkv cannot be applied: its attention reads something other than the "
                        "projections in this onnxruntime-genai version."
                    )
                clipped = f"{name}/clip_qkv"
                nodes.append(helper.make_node("Clip", [name, *bounds], [clipped], name=f"{name}/Clip"))
                node.input[index] = clipped
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)


def _initializer(graph, name: str):
    for tensor in graph.initializer:
        if tensor.name == name:
            return tensor
    raise UnsupportedArchitecture(f"the exported graph has no weight {name}; it cannot be fixed for this model.")


def _edit_graph(model_dir: Path, edit: Callable[[Any], None]) -> None:
    """Apply `edit` to model.onnx's graph; the weights in model.onnx.data are left as they are."""
    import onnx

    path = Path(model_dir) / "model.onnx"
    model = onnx.load(str(path), load_external_data=False)
    edit(model.graph)
    onnx.save(model, str(path))
