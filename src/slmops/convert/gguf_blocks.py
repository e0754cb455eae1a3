"""A GGUF's own quantized blocks put into the exported graph, where MatMulNBits can hold them.

Dequantizing a GGUF and letting the builder quantize it again rounds every weight a
second time, onto another grid. Three ggml types need no second rounding, because a
block of 32 of their weights is exactly a MatMulNBits block of 32:

- Q4_0, d·(q − 8): 4 bits, scale d, the kernel's neutral zero point 8.
- Q8_0, d·q with q signed: 8 bits, scale d, the unsigned q + 128 with the neutral zero point 128.
- Q4_1, d·q + m: 4 bits, scale d, zero point 0, and a fractional minimum m per block that no
  uint8 zero point holds. x·W then splits into MatMulNBits(x) + S(x)·M, where S(x) sums x
  over each block of 32 (Reshape + ReduceSum, computed once per input and shared by every
  MatMul reading it) and M holds the minima, one float per block and output.

After the builder has written its graph at block size 32, every MatMulNBits whose GGUF
tensors all have one of these types gets those blocks instead of the builder's, rows in
the Hugging Face order (llama.cpp's Q/K row permutation moves whole rows, so blocks stay
intact) and q, k, v stacked as the builder packs them. A tied embedding that gathers from
the LM head gathers from the new blocks. Any other type keeps the builder's requantized
weights, and the report says so per type with the weight error that cost.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
import numpy as np

from slmops.convert.gguf_families import Family, hf_name, unpermute
from slmops.convert.gguf_file import GGUFFile, GGUFTensor

BLOCK = 32  # weights per block in every type mapped here, and the graph's block size it needs
EXACT_TYPES = {2: "Q4_0", 3: "Q4_1", 8: "Q8_0"}  # ggml type id -> name


@dataclass
class Blocks:
    """One weight as MatMulNBits stores it, rows (outputs) in the Hugging Face order."""

    ggml_type: str
    bits: int
    packed: np.ndarray  # uint8 [rows, k_blocks, BLOCK * bits // 8], consecutive weights low nibble first
    scales: np.ndarray  # float32 [rows, k_blocks]
    zero_point: int  # the same for every block
    minimum: np.ndarray | None = None  # float32 [rows, k_blocks], added to every weight of its block

    @property
    def neutral(self) -> bool:
        """Whether the zero point is the one MatMulNBits assumes when none is given."""
        return self.zero_point == 1 << (self.bits - 1)

    def rows(self, start: int, stop: int) -> Blocks:
        minimum = None if self.minimum is None else self.minimum[start:stop]
        return Blocks(
            self.ggml_type, self.bits, self.packed[start:stop], self.scales[start:stop], self.zero_point, minimum
        )

    def reordered(self, order) -> Blocks:
        """The rows rearranged by `order`, a function of an array with rows first."""
        minimum = None if self.minimum is None else order(self.minimum)
        return Blocks(self.ggml_type, self.bits, order(self.packed), order(self.scales), self.zero_point, minimum)


# --- GGUF blocks --------------------------------------------------------------------------------


def raw_blocks(gguf_file: GGUFFile, tensor: GGUFTensor) -> np.ndarray:
    """A tensor's bytes as [rows, blocks of the row, bytes of a block]."""
    import gguf

    blob = np.memmap(gguf_file.path, dtype=np.uint8, mode="r")
    start = gguf_file.data_start + tensor.offset
    raw = np.asarray(blob[start : start + tensor.nbytes])
    _, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(tensor.ggml_type)]
    rows = int(np.prod(tensor.shape[:-1], dtype=np.int64))
    return raw.reshape(rows, tensor.shape[-1] // BLOCK, type_size)


def _halves(raw: np.ndarray, start: int) -> np.ndarray:
    """fp16 at byte `start` of every block, as float32 [rows, k_blocks] (exact: fp16 fits in fp32)."""
    return np.ascontiguousarray(raw[..., start : start + 2]).view(np.float16)[..., 0].astype(np.float32)


def _pack_nibbles(values: np.ndarray) -> np.ndarray:
    """[.., 32] values 0..15 -> [.., 16] bytes, MatMulNBits' order: weight 2j low, 2j + 1 high."""
    return (values[..., 0::2] | (values[..., 1::2] << 4)).astype(np.uint8)


def _ggml_nibbles(qs: np.ndarray) -> np.ndarray:
    """ggml's 16 bytes of a 4-bit block -> its 32 values in order (byte j holds j low and j + 16 high)."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)


def to_blocks(raw: np.ndarray, ggml_type: str) -> Blocks:
    """Raw Q4_0/Q4_1/Q8_0 blocks as MatMulNBits blocks; the values are the GGUF's, bit for bit."""
    if ggml_type == "Q4_0":
        return Blocks("Q4_0", 4, _pack_nibbles(_ggml_nibbles(raw[..., 2:18])), _halves(raw, 0), 8)
    if ggml_type == "Q4_1":
        packed = _pack_nibbles(_ggml_nibbles(raw[..., 4:20]))
        return Blocks("Q4_1", 4, packed, _halves(raw, 0), 0, minimum=_halves(raw, 2))
    if ggml_type == "Q8_0":
        return Blocks("Q8_0", 8, np.ascontiguousarray(raw[..., 2:34]) ^ np.uint8(0x80), _halves(raw, 0), 128)
    raise ValueError(f"{ggml_type} has no exact MatMulNBits form")


def hf_blocks(gguf_file: GGUFFile, family: Family, config: dict) -> Iterator[tuple[str, Blocks | str]]:
    """Every 2-D tensor under its Hugging Face name: its Blocks, or its ggml type name when it has none."""
    import gguf

    heads, kv_heads, head_dim = config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]
    for tensor in gguf_file.tensors:
        name = hf_name(tensor.name, family)
        if name is None or len(tensor.shape) != 2 or not name.endswith(".weight"):
            continue
        kind = EXACT_TYPES.get(tensor.ggml_type)
        split_qkv = ".self_attn.qkv_proj." in name and not family.fused_qkv
        if kind is None:
            type_name = gguf.GGMLQuantizationType(tensor.ggml_type).name
            for part in ("q_proj", "k_proj", "v_proj") if split_qkv else ("",):
                yield (name.replace("qkv_proj", part) if part else name), type_name
            continue
        blocks = to_blocks(raw_blocks(gguf_file, tensor), kind)
        if split_qkv:
            q, k, rows = heads * head_dim, kv_heads * head_dim, blocks.scales.shape[0]
            for part, start, stop in (("q_proj", 0, q), ("k_proj", q, q + k), ("v_proj", q + k, rows)):
                split = name.replace("qkv_proj", part)
                yield split, _unpermuted(blocks.rows(start, stop), split, family, heads, kv_heads)
            continue
        yield name, _unpermuted(blocks, name, family, heads, kv_heads)


def _unpermuted(blocks: Blocks, name: str, family: Family, heads: int, kv_heads: int) -> Blocks:
    if family.permuted_qk and ".self_attn.q_proj." in name:
        return blocks.reordered(lambda rows: unpermute(rows, heads))
    if family.permuted_qk and ".self_attn.k_proj." in name:
        return blocks.reordered(lambda rows: unpermute(rows, kv_heads))
    return blocks
