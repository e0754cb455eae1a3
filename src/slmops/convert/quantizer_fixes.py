"""Where onnxruntime's weight-only quantizer writes a graph its own kernel cannot read.

The RTN and k-quant paths the builder calls for ``rtn*``/``k_quant*`` (and the GPTQ one)
pack 4-bit zero points as one flat run of nibbles. MatMulNBits reads them per output
row, each row padded to whole bytes, so when a row holds an odd number of blocks
(SmolLM2's hidden size 576 at blocks of 64 or 128: 9 or 4.5 → 5 blocks) the flat run
cannot be reshaped and the build crashes. slmops packs those zero points per row
instead, while the quantizer runs; every other case is left to onnxruntime.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np

from slmops.convert.matmul_nbits import pack_zero_points


@contextlib.contextmanager
def row_packed_zero_points() -> Iterator[None]:
    """While active, onnxruntime's RTN/k-quant/GPTQ node maker packs odd-block zero points per row."""
    from onnxruntime.quantization.neural_compressor import weight_only

    original = weight_only.make_matmul_weight_only_node

    def make_node(node, weight_shape, num_bits, group_size, k_blocks, q_weight, scale, zero_point, accuracy_level=0):
        if zero_point is None or num_bits != 4 or k_blocks % 2 == 0:
            return original(
                node, weight_shape, num_bits, group_size, k_blocks, q_weight, scale, zero_point, accuracy_level
            )
        made, initializers = original(
            node, weight_shape, num_bits, group_size, k_blocks, q_weight, scale, None, accuracy_level
        )
        return _with_zero_points(
            made, initializers, node.input[1], pack_zero_points(zero_point, weight_shape[1], k_blocks)
        )

    weight_only.make_matmul_weight_only_node = make_node
    try:
        yield
    finally:
        weight_only.make_matmul_weight_only_node = original


def _with_zero_points(made, initializers: list, weight_name: str, packed: np.ndarray):
    from onnx import numpy_helper

    tensor = numpy_helper.from_array(packed, weight_name + "_zp")
    made.input.append(tensor.name)  # MatMulNBits inputs: A, B, scales, zero_points
    return made, [*initializers, tensor]
