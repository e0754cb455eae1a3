"""A GGUF's quantized blocks in the form MatMulNBits stores, where that form holds them exactly.

Dequantizing a GGUF and letting the builder quantize it again rounds every weight a second
time, onto another grid. These ggml types need no second rounding, because each of their
blocks is a MatMulNBits block (unsigned values u, a scale s and a zero point z per block,
w = s·(u − z)):

| type | ggml value per weight | MatMulNBits form |
|---|---|---|
| Q4_0 | d·(q − 8), 32 a block | 4 bits, s = d, z = 8 |
| Q8_0 | d·q, q signed | 8 bits, s = d, u = q + 128, z = 128 |
| Q5_0 | d·(q − 16) | 8 bits, u = q + 112, z = 128 |
| Q6_K | d·sc·(q − 32), 16 a sub-block | 8 bits, blocks of 16, s = d·sc, u = q + 96, z = 128 |
| Q4_1, Q5_1 | d·q + m | 4 / 8 bits, s = d, z = round(−m/s), plus the rest of the minimum |
| Q4_K, Q5_K | d·sc·q − dmin·mn, 32 a sub-block | 4 / 8 bits, s = d·sc, the minimum −dmin·mn as for Q4_1 |

d·sc is exact in float32 (an fp16 times a 6- or 8-bit integer), so the scales lose nothing.
The fractional minimum of Q4_1 and the K-quants is no zero point: its integer part goes into
the zero point (see centred) and exact_import adds the rest as x·W = MatMulNBits(x) + S(x)·M. Rows are in the Hugging Face order: llama.cpp's Q/K row
permutation moves whole rows, so blocks stay intact.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from slmops.convert.gguf_families import Family, hf_name, unpermute
from slmops.convert.gguf_file import GGUFFile, GGUFTensor, dequantize
from slmops.convert.matmul_nbits import stored_codes

GRAPH_BLOCK = 32  # the block size the builder's graph must have been written with
EXACT_TYPES = ("Q4_0", "Q4_1", "Q8_0", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K")


@dataclass
class Blocks:
    """One weight as MatMulNBits stores it, unpacked: rows (outputs) first, in the Hugging Face order."""

    ggml_type: str
    bits: int
    values: np.ndarray  # uint8 [rows, k_blocks, block]
    scales: np.ndarray  # float32 [rows, k_blocks]
    zero_points: np.ndarray  # uint8 [rows, k_blocks]
    minimum: np.ndarray | None = None  # float32 [rows, k_blocks], added to every weight of its block

    @property
    def block(self) -> int:
        return self.values.shape[2]

    @property
    def neutral(self) -> bool:
        """Whether every zero point is the one MatMulNBits assumes when none is given."""
        return bool(np.all(self.zero_points == 1 << (self.bits - 1)))

    def packed(self) -> np.ndarray:
        """MatMulNBits' B: [rows, k_blocks, block·bits/8], weight 2j in the low nibble, 2j + 1 in the high."""
        return stored_codes(self.values, self.bits)

    def map_rows(self, change: Callable[[np.ndarray], np.ndarray]) -> Blocks:
        """The same blocks with `change` (a slice or a reordering of the first axis) applied to every array."""
        minimum = None if self.minimum is None else change(self.minimum)
        values, scales, zero_points = change(self.values), change(self.scales), change(self.zero_points)
        return Blocks(self.ggml_type, self.bits, values, scales, zero_points, minimum)

    def as_form(self, bits: int, block: int) -> Blocks:
        """The same weights with more bits or smaller blocks (what another type in the same MatMul needs)."""
        values, scales, zero_points, minimum = self.values, self.scales, self.zero_points, self.minimum
        if block < self.block:
            split = self.block // block
            rows = values.shape[0]
            values = values.reshape(rows, -1, block)
            scales, zero_points = np.repeat(scales, split, axis=1), np.repeat(zero_points, split, axis=1)
            minimum = None if minimum is None else np.repeat(minimum, split, axis=1)
        return Blocks(self.ggml_type, bits, values, scales, zero_points, minimum)

    def weight(self) -> np.ndarray:
        """The float32 [rows, columns] these blocks stand for."""
        w = (self.values.astype(np.float32) - self.zero_points[..., None]) * self.scales[..., None]
        if self.minimum is not None:
            w = w + self.minimum[..., None]
        return w.reshape(w.shape[0], -1)


def stack(parts: list[Blocks]) -> Blocks:
    """Row blocks of one MatMul (q, k, v) in one form: the most bits and the smallest block of any."""
    bits, block = max(p.bits for p in parts), min(p.block for p in parts)
    same = [p.as_form(bits, block) for p in parts]
    with_minimum = any(p.minimum is not None for p in same)
    minimum = (
        np.concatenate([np.zeros_like(p.scales) if p.minimum is None else p.minimum for p in same])
        if with_minimum
        else None
    )
    types = "+".join(dict.fromkeys(p.ggml_type for p in parts))
    values, scales = np.concatenate([p.values for p in same]), np.concatenate([p.scales for p in same])
    return Blocks(types, bits, values, scales, np.concatenate([p.zero_points for p in same]), minimum)


# --- reading the GGUF ---------------------------------------------------------------------------


def raw_blocks(gguf_file: GGUFFile, tensor: GGUFTensor) -> np.ndarray:
    """A tensor's bytes as [rows, blocks of the row, bytes of a block]."""
    import gguf

    blob = np.memmap(gguf_file.path, dtype=np.uint8, mode="r")
    start = gguf_file.data_start + tensor.offset
    raw = np.asarray(blob[start : start + tensor.nbytes])
    block, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(tensor.ggml_type)]
    rows = int(np.prod(tensor.shape[:-1], dtype=np.int64))
    return raw.reshape(rows, tensor.shape[-1] // block, type_size)


def _half(raw: np.ndarray, start: int) -> np.ndarray:
    """The fp16 at byte `start` of every block as float32 (exact)."""
    return np.ascontiguousarray(raw[..., start : start + 2]).view(np.float16)[..., 0].astype(np.float32)


def _ggml_nibbles(qs: np.ndarray) -> np.ndarray:
    """ggml's 16 bytes of a 4-bit block -> its 32 values in order (byte j holds j low and j + 16 high)."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)


def _full(like: np.ndarray, value: int) -> np.ndarray:
    return np.full(like.shape, value, dtype=np.uint8)


def _simple_blocks(raw: np.ndarray, ggml_type: str) -> Blocks:
    """Q4_0, Q4_1 and Q8_0 straight from their bytes."""
    d = _half(raw, 0)
    if ggml_type == "Q4_0":
        return Blocks(ggml_type, 4, _ggml_nibbles(raw[..., 2:18]), d, _full(d, 8))
    if ggml_type == "Q4_1":
        return Blocks(ggml_type, 4, _ggml_nibbles(raw[..., 4:20]), d, _full(d, 0), minimum=_half(raw, 2))
    return Blocks(ggml_type, 8, np.ascontiguousarray(raw[..., 2:34]) ^ np.uint8(0x80), d, _full(d, 128))


def _scales_and_minima(raw: np.ndarray, ggml_type: str) -> tuple[np.ndarray, np.ndarray | None, int]:
    """Per (sub-)block scale, minimum (None: a zero point holds the offset) and block size."""
    import gguf

    rows, n = raw.shape[:2]
    if ggml_type in ("Q5_0", "Q5_1"):
        return _half(raw, 0), (_half(raw, 2) if ggml_type == "Q5_1" else None), 32
    if ggml_type == "Q6_K":
        sc = raw[..., 192:208].copy().view(np.int8).astype(np.float32)
        return (_half(raw, 208)[..., None] * sc).reshape(rows, n * 16), None, 16
    sc, mn = gguf.quants.Q4_K.get_scale_min(raw[..., 4:16].reshape(-1, 12))  # Q4_K and Q5_K
    scales = _half(raw, 0).reshape(-1, 1) * sc.astype(np.float32)
    minima = -(_half(raw, 2).reshape(-1, 1) * mn.astype(np.float32))
    return scales.reshape(rows, n * 8), minima.reshape(rows, n * 8), 32


# bits of the MatMulNBits form, and the offset from the signed ggml value to the stored one
_RECOVERED = {"Q5_0": (8, 128), "Q6_K": (8, 128), "Q5_1": (8, 0), "Q4_K": (4, 0), "Q5_K": (8, 0)}


def _recovered_blocks(gguf_file: GGUFFile, tensor: GGUFTensor, ggml_type: str) -> Blocks | None:
    """The integer of every weight recovered from gguf's own dequantized values and the block scales.

    w = s·q (+ m) was computed with one rounding, so q = round((w − m) / s) is exact; every block
    is checked to give w back, and a tensor that does not stays requantized (None).
    """
    scales, minimum, block = _scales_and_minima(raw_blocks(gguf_file, tensor), ggml_type)
    rows = scales.shape[0]
    weight = dequantize(gguf_file, tensor).reshape(rows, -1, block)
    offset_weight = weight - (0 if minimum is None else minimum[..., None])
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(scales[..., None] != 0, np.rint(offset_weight / scales[..., None]), 0)
    bits, zero = _RECOVERED[ggml_type]
    stored = q + zero
    if stored.min() < 0 or stored.max() >= 1 << bits:
        return None
    blocks = Blocks(ggml_type, bits, stored.astype(np.uint8), scales, _full(scales, zero), minimum)
    if not np.allclose(blocks.weight(), weight.reshape(rows, -1), rtol=1e-6, atol=0):
        return None
    return blocks


def tensor_blocks(gguf_file: GGUFFile, tensor: GGUFTensor) -> Blocks | None:
    """A tensor's Blocks, or None when its type has no exact MatMulNBits form."""
    import gguf

    ggml_type = gguf.GGMLQuantizationType(tensor.ggml_type).name
    if ggml_type not in EXACT_TYPES or len(tensor.shape) != 2:
        return None
    if ggml_type in ("Q4_0", "Q4_1", "Q8_0"):
        blocks: Blocks | None = _simple_blocks(raw_blocks(gguf_file, tensor), ggml_type)
    else:
        blocks = _recovered_blocks(gguf_file, tensor, ggml_type)
    return None if blocks is None else centred(blocks)


def has_exact_blocks(gguf_file: GGUFFile) -> bool:
    """Whether any of the GGUF's matrices is stored in a type with an exact MatMulNBits form."""
    import gguf

    return any(
        len(tensor.shape) == 2 and gguf.GGMLQuantizationType(tensor.ggml_type).name in EXACT_TYPES
        for tensor in gguf_file.tensors
    )


def centred(blocks: Blocks) -> Blocks:
    """The integer part of each block's minimum moved into its zero point: s·u + m = s·(u − z) + (m + s·z).

    With z = round(−m / s) the stored values straddle the zero point, as a symmetric format's
    do, and the minimum left for S(x)·M is at most s/2. The int8 activations of MatMulNBits'
    fast kernel (accuracy level 4) are rounded per block, and that error is multiplied by
    u − z: centred, it is about half of what u − 0 gives, and S(x)·M, computed on the
    unrounded x, no longer has to cancel a large offset.
    """
    if blocks.minimum is None:
        return blocks
    with np.errstate(divide="ignore", invalid="ignore"):
        shift = np.where(blocks.scales != 0, np.rint(-blocks.minimum / blocks.scales), 0)
    zero_points = np.clip(shift, 0, (1 << blocks.bits) - 1).astype(np.uint8)
    minimum = (blocks.minimum + blocks.scales * zero_points).astype(np.float32)
    return Blocks(blocks.ggml_type, blocks.bits, blocks.values, blocks.scales, zero_points, minimum)


@dataclass
class LazyBlocks:
    """A Hugging Face weight's GGUF type, and its Blocks read only when a MatMul asks for them."""

    ggml_type: str
    load: Callable[[], Blocks | None]


def hf_blocks(gguf_file: GGUFFile, family: Family, config: dict) -> Iterator[tuple[str, LazyBlocks]]:
    """Every 2-D weight under its Hugging Face name, q/k/v split and Q/K rows unpermuted as the import does."""
    import gguf

    heads, kv_heads, head_dim = config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]
    for tensor in gguf_file.tensors:
        name = hf_name(tensor.name, family)
        if name is None or len(tensor.shape) != 2 or not name.endswith(".weight"):
            continue
        ggml_type = gguf.GGMLQuantizationType(tensor.ggml_type).name
        whole = _cached(functools.partial(tensor_blocks, gguf_file, tensor))
        if ".self_attn.qkv_proj." in name and not family.fused_qkv:
            q, k = heads * head_dim, kv_heads * head_dim
            for part, rows in (("q_proj", slice(0, q)), ("k_proj", slice(q, q + k)), ("v_proj", slice(q + k, None))):
                split = name.replace("qkv_proj", part)
                yield split, LazyBlocks(ggml_type, _part(whole, rows, split, family, heads, kv_heads))
            continue
        yield name, LazyBlocks(ggml_type, _part(whole, slice(None), name, family, heads, kv_heads))


def _cached(load: Callable[[], Blocks | None]) -> Callable[[], Blocks | None]:
    found: list = []

    def once() -> Blocks | None:
        if not found:
            found.append(load())
        return found[0]

    return once


def _part(whole, rows: slice, name: str, family: Family, heads: int, kv_heads: int) -> Callable[[], Blocks | None]:
    def load() -> Blocks | None:
        blocks = whole()
        if blocks is None:
            return None
        blocks = blocks.map_rows(lambda array: array[rows])
        if family.permuted_qk and ".self_attn.q_proj." in name:
            return blocks.map_rows(lambda array: unpermute(array, heads))
        if family.permuted_qk and ".self_attn.k_proj." in name:
            return blocks.map_rows(lambda array: unpermute(array, kv_heads))
        return blocks

    return load
