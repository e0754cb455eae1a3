"""How MatMulNBits (and GatherBlockQuantized) store a block-quantized matrix.

Codes are unsigned, rows (outputs) first, blocks along the input: 8-bit codes one a byte,
4-bit codes two a byte, the first of a pair in the low nibble. Zero points take one code
per (row, block), 4-bit ones packed the same way, each row padded to whole bytes.
"""

from __future__ import annotations

import numpy as np

NEUTRAL_ZERO_POINT = 8  # the 4-bit zero point MatMulNBits assumes when none is given


def pack_nibbles(values: np.ndarray) -> np.ndarray:
    """4-bit values in pairs along the last axis as bytes, the first of a pair in the low nibble
    (how MatMulNBits and GatherBlockQuantized read weights and zero points)."""
    return ((values[..., 0::2] & 0x0F) | ((values[..., 1::2] & 0x0F) << 4)).astype(np.uint8)


def pack_zero_points(zero_point: np.ndarray, rows: int, k_blocks: int) -> np.ndarray:
    """4-bit zero points, one per (output row, block), as MatMulNBits reads them: [rows, ceil(k_blocks / 2)] bytes."""
    per_row = np.asarray(zero_point, dtype=np.uint8).reshape(rows, k_blocks)
    if k_blocks % 2:
        per_row = np.pad(per_row, ((0, 0), (0, 1)), constant_values=NEUTRAL_ZERO_POINT)
    return pack_nibbles(per_row)


def stored_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """MatMulNBits' B from codes [rows, k_blocks, block]: [rows, k_blocks, block·bits/8] bytes."""
    return pack_nibbles(codes) if bits == 4 else codes


def stored_zero_points(zero_point: np.ndarray, bits: int) -> np.ndarray:
    """MatMulNBits' zero points from one code per (row, block) [rows, k_blocks]."""
    if bits == 4:
        return pack_zero_points(zero_point, *zero_point.shape)
    return np.ascontiguousarray(zero_point, dtype=np.uint8)
