"""FP16/BF16 models that run on the CPU: half-size weights, fp32 compute.

The builder's fp16 and bf16 graphs target GPUs: onnxruntime's CPU provider has no
kernels for parts of them and fails at the first token. So for the CPU slmops
builds the fp32 graph and stores its large weights in 16 bits, each read through a
Cast to fp32. The file is half the size; onnxruntime folds the casts when it loads
the model, so compute and memory are those of the fp32 model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from slmops.convert.graph_file import save_graph

MIN_ELEMENTS = 1024  # norms and biases stay fp32: they are tiny and precision-sensitive


def store_weights_as(model_dir: Path, precision: str) -> int:
    """Rewrite model.onnx(+data) in `model_dir` with fp16 or bf16 weights; returns how many were cast."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    path = Path(model_dir) / "model.onnx"
    model = onnx.load(str(path))
    target = TensorProto.FLOAT16 if precision == "fp16" else TensorProto.BFLOAT16
    kept, casts = [], []
    for tensor in model.graph.initializer:
        if tensor.data_type != TensorProto.FLOAT or np.prod(tensor.dims, dtype=np.int64) < MIN_ELEMENTS:
            kept.append(tensor)
            continue
        stored = _half(numpy_helper.to_array(tensor), f"{tensor.name}.{precision}", target)
        kept.append(stored)
        casts.append(
            helper.make_node(
                "Cast", [stored.name], [tensor.name], name=f"{tensor.name}/StorageCast", to=TensorProto.FLOAT
            )
        )
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    nodes = casts + list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    save_graph(model, model_dir)
    return len(casts)


def _half(values: np.ndarray, name: str, target: int):
    from onnx import TensorProto, helper, numpy_helper

    if target == TensorProto.FLOAT16:
        return numpy_helper.from_array(values.astype(np.float16), name)
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)  # round to nearest even
    return helper.make_tensor(name, TensorProto.BFLOAT16, values.shape, rounded.tobytes(), raw=True)
