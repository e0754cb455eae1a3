"""INT4 at the fast layouts with rounding chosen to minimise output error, not weight error.

onnxruntime's CPU MatMulNBits runs fast only with integer zero points, and on AVX-512 VNNI
fastest at blocks of 64 or 128. Plain round-to-nearest at those blocks loses a lot on a small
model (SmolLM2 +50-75% ΔPPL), because it weighs every input channel alike. Here every MatMul
is quantized with the second moment of its input, measured on calibration text (the tail of
the shipped eval text, so `slmops eval` never scores a token it was calibrated on), after the
hidden state, the value heads and the down projections' inputs are rotated so that no input
channel stands out (:mod:`slmops.convert.rotation`, ``rotate``):

- ``importance``: each block's scale and zero point are searched to minimise the error
  weighted by the mean squared activation of each input channel (the "importance matrix"
  idea llama.cpp's k-quants use);
- ``gptq``: the same search per block, then GPTQ's error feedback: each column's rounding
  error is pushed onto the columns not yet quantized, through the inverse of the input's
  second-moment matrix H = XᵀX;
- with ``in_order`` (the default), either of the above in graph order, each MatMul fitted to the
  inputs the quantized MatMuls before it give and to the weights that undo what they moved
  (:mod:`slmops.convert.sequential`), instead of to the FP32 graph's inputs;
- ``awq`` (either of the above, after; off by default, since on a rotated graph it costs more than
  it buys): per-input-channel scales s = E[x²]^(α/2), searched per
  layer over α to minimise the output error trace(ΔW H ΔWᵀ), are folded into the RMSNorm
  weight before qkv and gate/up, into up_proj's output before down_proj, and into the value
  columns of qkv_proj before o_proj (one scale per value channel, shared by the query heads
  that read it), so the graph computes the same function with weights that quantize better.

A share of the layer MatMuls is quantized to 8 bits in the same MatMulNBits layout: with
``int8_share`` (the default), the ones whose 8 bits cut the KL divergence from the FP32 graph
most per extra byte on calibration text (:mod:`slmops.convert.sensitivity`; in order, measured with
every MatMul rounded to nearest first, since a MatMul fitted in order undoes what the ones before it
did at the bits they had); with
``int8_share=0``, those named in ``int8``. The LM head is read at 4 bits and its top candidates
rescored with a 4-bit residual (``head="screened"``, :mod:`slmops.convert.screened_head`), or
kept at 8 or 4 bits. The input embedding then gathers the head's rows
(:mod:`slmops.convert.tied_head`) when the two are tied, else 8-bit rows of its own table, so no
fp32 table is left.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from slmops.convert.graph_file import (
    calibration_options,
    quantized_lm_heads,
    save_graph,
    set_weight,
    token_lookups,
    transposed_table,
)
from slmops.convert.matmul_nbits import stored_codes, stored_zero_points
from slmops.convert.rotation import BLOCK as ROTATION_BLOCK
from slmops.convert.rotation import LM_HEAD_NODE, ROTATION_NODE, rotate_export, value_heads
from slmops.convert.screened_head import TOP_K, screened_head_nodes
from slmops.convert.tied_head import RowBlocks, replace_gather

ACCURACY_LEVEL = 4  # int8 activations: the VNNI kernel
SHRINKS = (1.0, 0.96, 0.92, 0.88, 0.84, 0.8, 0.76, 0.72)  # a block's range is shrunk by these, both ends alike
ALPHAS = tuple(a / 10 for a in range(0, 9))  # AWQ's exponent grid
SENSITIVITY_FILE = "int8-sensitivity.json"  # what each MatMul's 8 bits bought, written beside the graph
INT8_MIN_BLOCK = 64
HEAD_NODES = (LM_HEAD_NODE, ROTATION_NODE)  # the MatMuls every logit reads: neither int8 candidates nor AWQ's
# Multiply-adds a calibration may spend (its forward passes and XᵀX; in graph order twice that). 64 windows of
# 512 tokens cost SmolLM2-135M 8 T (0.24 G a token; its build 56 -> 105 s on 2 cores, in order 206 s) and
# Qwen2.5-0.5B 37 T (1.1 G a token; 332 -> 624 s). Over the budget, a model calibrates on SMALL_CALIBRATION,
# on the FP32 graph's inputs: 31 windows of 512, which the budget would have allowed Qwen, scored no better
# than 16 x 256 (docs/quality.md).
CALIBRATION_BUDGET = 18e12
SMALL_CALIBRATION = (16, 256)  # windows, tokens
MOMENTS_MEMORY_SHARE = 0.25  # of the memory available when calibration starts, for the XᵀX held at once
# GPTQ's rows never meet: a matrix this many rows a usable CPU or taller is quantized a slice of rows a thread. Each
# column step then has rows enough for numpy's loops, which release the interpreter, to do most of the work:
# on 2 cores SmolLM2's 49,152 x 576 LM head 16.7-17.3 -> 8.9-11.5 s and Qwen2.5-0.5B's 151,936 x 896 one
# 106-111 -> 61-63 s, the same bytes. A layer's 576-4,864 rows gained nothing or lost.
ROWS_PER_THREAD = 8192


@dataclass(frozen=True)
class CalibratedOptions:
    """How :func:`quantize_calibrated` quantizes an FP32 export."""

    block_size: int = 128
    method: str = "gptq"  # "rtn" (range only), "importance" or "gptq"
    # the hidden state and value heads rotated first: all 4-bit GPTQ b64 KLD 0.143 -> 0.098-0.105 on SmolLM2,
    # 0.145 -> 0.097 off the 4-bit grid; with 25% int8, 0.072 -> 0.062-0.067 off-grid, a wash on SmolLM2. The down
    # projections' inputs too, in blocks of 64 (in order, 25% int8: SmolLM2 KLD 0.046 -> 0.044, off-grid 0.049 ->
    # 0.046; Qwen2.5-Coder-0.5B on FP32 inputs 0.052 -> 0.045; docs/quality.md)
    rotate: bool = True
    # which random rotation: seeds 0/1/2 gave SmolLM2 top-1 85.7/85.0/85.4% on 16,352 tokens (88.5/86.7/84.6% on 2,303)
    rotation_seed: int = 0
    # unrotated, AWQ helps (SmolLM2 b128: GPTQ +9.7% ΔPPL, with AWQ scales +6.5%); rotated, it hurts (KLD 0.090 -> 0.111)
    awq: bool = False
    # the LM head, which the tied embedding shares: "screened" (4-bit codes read for every logit, the top
    # candidates rescored with a 4-bit residual), "int8" or "int4". SmolLM2 b64, 16,352 held-out tokens:
    # KLD 0.084 / 0.082 / 0.095, decoding ~10% faster screened than int8; a single stream's prefill screens
    # every position, ~10% longer on long prompts (docs/quality.md)
    head: str = "screened"
    # MatMul names (substrings) kept at 8 bits when ``int8_share`` is 0: the MLP's down projections
    # halve SmolLM2's ΔPPL for +13% size
    int8: tuple[str, ...] = ("down_proj",)
    # this share of the layer weights is 8-bit, the MatMuls chosen by measured gain per byte: at the
    # size of all down_proj, SmolLM2 b64 KLD 0.075 -> 0.063, top-1 84.6% -> 87.0%; each scored alone beside FP32
    # weights rather than beside the others at 4 bits, 0.044 -> 0.041, off-grid 0.046 -> 0.042. 32% rather than
    # 25% fills SmolLM2's export to 1.3x the builder's INT4 (116.5 MB): KLD 0.041 -> 0.038, top-1 89.7% -> 90.1%,
    # off-grid 0.042 -> 0.039 and 89.6% -> 90.0%, for ~3% of decode speed (docs/quality.md)
    int8_share: float = 0.32
    # GPTQ's diagonal damping, a fraction of the mean of H's diagonal: on 16,352 held-out tokens
    # SmolLM2's KLD was 0.089 at 0.001 and 0.01, 0.082-0.084 at 0.05-0.1, 0.087-0.091 at 0.2-0.3,
    # 0.100 at 1.0 (0.01 -> 0.1 at rotation seeds 0/1/2: -8/-5/-3%); off the 4-bit grid 0.01 -> 0.1
    # gave 0.092 -> 0.092, 0.091 -> 0.096, 0.103 -> 0.097 at seeds 0/1/2 (docs/quality.md, the fifth round)
    damping: float = 0.1
    # each MatMul quantized in graph order on the inputs the quantized MatMuls before it give, to the weights
    # that undo what they moved (:mod:`slmops.convert.sequential`): SmolLM2 b64 on 16,352 held-out tokens,
    # ΔPPL +3.2% -> +1.1%, KLD 0.082 -> 0.046, top-1 86.3% -> 88.8%. The fit wants text: on 32 x 512 tokens
    # KLD 0.066, on 16 x 256 0.090, so a model over the calibration budget is quantized on FP32 inputs (docs/quality.md)
    in_order: bool = True
    awq_o_proj: bool = False  # AWQ on o_proj too (folded into qkv_proj's value columns): SmolLM2 b64 KLD 0.075 -> 0.079
    exclude: tuple[str, ...] = ()  # MatMul names left in fp32
    # The last 64 x 512 tokens of the shipped text (32,768), or 16 x 256 where that passes CALIBRATION_BUDGET.
    # Against 16 x 256, screened b64, 16,352 held-out tokens, KLD: SmolLM2 0.084 -> 0.082 (rotation seed 1:
    # 0.088 -> 0.077), off the grid 0.094 -> 0.080, Qwen2.5-Coder-0.5B's deploy pick 0.035 -> 0.032; top-1
    # +0.5 to +1.1 points on all four. 32 windows of 512 were no better than 16 x 256 (docs/quality.md)
    calibration_windows: int = 64
    calibration_tokens: int = 512
    sensitivity_windows: int = 1  # calibration windows scored once per candidate MatMul (int8_share); 2 cost 2x
    sensitivity_tokens: int = 64  # 128: about twice the time, the same KLD (docs/quality.md)

    @property
    def int8_block(self) -> int:
        """The block of the 8-bit matrices: ``block_size``, but no finer than 64. Each block stores a
        float scale and a zero point (5 bytes), which at blocks of 32 cost 8-bit weights 1.25 bits
        each (0.6 more than at 64), where their rounding error is already ~1/16 of 4-bit's."""
        return max(self.block_size, INT8_MIN_BLOCK)

    def describe(self) -> str:
        extra = f", int8: {','.join(self.int8)}" if self.int8 and not self.int8_share else ""
        extra += f", {self.int8_share:.0%} of the layer weights int8 by measured sensitivity" if self.int8_share else ""
        extra += f", fp32: {','.join(self.exclude)}" if self.exclude else ""
        extra += f", 8-bit matrices in blocks of {self.int8_block}" if self.int8_block != self.block_size else ""
        awq = ("AWQ scales (o_proj too) + " if self.awq_o_proj else "AWQ scales + ") if self.awq else ""
        seed = f" (seed {self.rotation_seed})" if self.rotation_seed else ""
        rotated = (
            f"rotated{seed} with the down projections' inputs in blocks of {ROTATION_BLOCK}, " if self.rotate else ""
        )
        method = f"gptq (damping {self.damping:g})" if self.method == "gptq" else self.method
        method += " in graph order on the quantized model's inputs" if self._in_order else ""
        return (
            f"int4 b{self.block_size} asymmetric, {rotated}{awq}{method}, LM head {self.describe_head()}{extra}; "
            f"calibrated on the last {self.calibration_windows} x {self.calibration_tokens} tokens of the shipped text "
            f"({SMALL_CALIBRATION[0]} x {SMALL_CALIBRATION[1]}{' on FP32 inputs' if self._in_order else ''} "
            "over the calibration budget)"
        )

    @property
    def _in_order(self) -> bool:
        return self.in_order and self.method != "rtn"

    def describe_head(self) -> str:
        if self.head == "screened":
            return f"int4 read for every logit, its top {TOP_K} rescored with a 4-bit residual"
        return self.head


@dataclass
class Quantized:
    """One matrix in MatMulNBits' layout: ``q`` [N, blocks, block] codes, ``scale``/``zero_point`` [N, blocks];
    ``residual``: what a screened head's codes miss, quantized again (:mod:`slmops.convert.screened_head`)."""

    q: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray
    bits: int
    residual: Quantized | None = None

    def dequantize(self, k: int) -> np.ndarray:
        """[N, K] weights as the kernel sees them (with the residual, as the rescored logits and the embedding do)."""
        values = (self.q.astype(np.float32) - self.zero_point[..., None]) * self.scale[..., None]
        values = values.reshape(self.q.shape[0], -1)[:, :k]
        return values if self.residual is None else values + self.residual.dequantize(k)


# --- the search for each block's scale and zero point -------------------------------------------


def quantize_rows(w: np.ndarray, importance: np.ndarray | None, block: int, bits: int, search: bool) -> Quantized:
    """Quantize ``w`` [N, K] per row in blocks of ``block`` along K, integer zero points.

    With ``search``, each block's range is shrunk and the scale refitted by
    weighted least squares, keeping what minimises Σ importance·(w − ŵ)².
    """
    n, k = w.shape
    blocks = -(-k // block)
    padded = np.zeros((n, blocks * block), dtype=np.float32)
    padded[:, :k] = w
    x = padded.reshape(n, blocks, block)
    weight = np.zeros(blocks * block, dtype=np.float32)
    weight[:k] = 1.0 if importance is None else np.maximum(importance, 1e-12)
    weight = np.broadcast_to(weight.reshape(1, blocks, block), x.shape)
    return _search(x, weight, bits, SHRINKS if search else (1.0,))


def _search(x: np.ndarray, weight: np.ndarray, bits: int, shrinks: tuple[float, ...]) -> Quantized:
    top = 2**bits - 1
    low, high = np.minimum(x.min(-1), 0.0), np.maximum(x.max(-1), 0.0)
    best: Quantized | None = None
    best_error = np.full(x.shape[:2], np.inf, dtype=np.float32)
    for shrink in shrinks:
        candidate = _fit(x, weight, low * shrink, high * shrink, top, refit=len(shrinks) > 1)
        error = (weight * (x - _values(candidate)) ** 2).sum(-1)
        better = error < best_error
        best_error = np.where(better, error, best_error)
        best = candidate if best is None else _merge(best, candidate, better)
    assert best is not None
    return best


def _fit(x, weight, low, high, top: int, refit: bool) -> Quantized:
    scale = np.maximum(high - low, 1e-10) / top
    zero = np.clip(np.round(-low / scale), 0, top)
    q = np.clip(np.round(x / scale[..., None]) + zero[..., None], 0, top)
    if refit:  # the scale that minimises the weighted error for these codes, then round again
        centred = q - zero[..., None]
        denominator = (weight * centred * centred).sum(-1)
        fitted = (weight * x * centred).sum(-1) / np.where(denominator > 0, denominator, 1)
        scale = np.where((denominator > 0) & (fitted > 0), fitted, scale)
        q = np.clip(np.round(x / scale[..., None]) + zero[..., None], 0, top)
    return Quantized(q.astype(np.uint8), scale.astype(np.float32), zero.astype(np.uint8), int(np.log2(top + 1)))


def _values(item: Quantized) -> np.ndarray:
    return (item.q.astype(np.float32) - item.zero_point[..., None]) * item.scale[..., None]


def _merge(old: Quantized, new: Quantized, better: np.ndarray) -> Quantized:
    return Quantized(
        np.where(better[..., None], new.q, old.q),
        np.where(better, new.scale, old.scale),
        np.where(better, new.zero_point, old.zero_point),
        old.bits,
    )


# --- GPTQ: error feedback through the inverse Hessian -------------------------------------------


def gptq_rows(w: np.ndarray, hessian: np.ndarray, block: int, bits: int, damping: float = 0.1) -> Quantized:
    """GPTQ on ``w`` [N, K] with H = XᵀX [K, K], ``damping`` x mean(diag H) added to its diagonal; each
    block's grid is searched (importance = diag H) on the error-corrected weights when the first
    column of the block is reached."""
    n, k = w.shape
    w = w.astype(np.float64).copy()
    h = hessian.astype(np.float64).copy()
    dead = np.diag(h) <= 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += np.eye(k) * damping * np.mean(np.diag(h))
    upper = inverse_factor(h)
    importance = np.diag(hessian).astype(np.float32)
    blocks = -(-k // block)
    q = np.zeros((n, blocks * block), dtype=np.uint8)
    scale = np.zeros((n, blocks), dtype=np.float32)
    zero = np.zeros((n, blocks), dtype=np.uint8)

    def quantize(rows: slice) -> None:
        part = w[rows]  # a view: the feedback updates w's own rows
        for b in range(blocks):
            start, end = b * block, min((b + 1) * block, k)
            grid = quantize_rows(part[:, start:end].astype(np.float32), importance[start:end], end - start, bits, True)
            scale[rows, b], zero[rows, b] = grid.scale[:, 0], grid.zero_point[:, 0]
            q[rows, start:end] = _feedback(part, upper, start, end, scale[rows, b], zero[rows, b], 2**bits - 1)

    _over_rows(quantize, n)
    return Quantized(q.reshape(n, blocks, block), scale, zero, bits)


def _over_rows(work, n: int) -> None:
    """``work(rows)`` over all ``n`` rows: in one call, or one thread a usable CPU for a matrix
    :data:`ROWS_PER_THREAD` rows a CPU tall."""
    from concurrent.futures import ThreadPoolExecutor

    from slmops.runtime.threads import default_threads

    threads = max(1, min(default_threads(), n // ROWS_PER_THREAD))
    if threads == 1:
        work(slice(0, n))
        return
    cuts = [n * i // threads for i in range(threads + 1)]
    with ThreadPoolExecutor(threads) as pool:
        for done in [pool.submit(work, slice(a, b)) for a, b in zip(cuts, cuts[1:])]:
            done.result()


def inverse_factor(h: np.ndarray) -> np.ndarray:
    """The upper triangular U with UᵀU = H⁻¹ (H symmetric positive definite): with H's rows and columns
    reversed factored as LLᵀ, U is L⁻¹ reversed the same way. One Cholesky and one triangular solve cost about
    half of inverting H and factoring the inverse (a 4,864-wide H: 7.4 -> 3.4 s on 2 cores)."""
    import torch

    lower = torch.linalg.cholesky(torch.from_numpy(np.ascontiguousarray(h[::-1, ::-1])))
    inverse = torch.linalg.solve_triangular(lower, torch.eye(len(h), dtype=lower.dtype), upper=False)
    return np.ascontiguousarray(inverse.numpy()[::-1, ::-1])


def _feedback(w, upper, start: int, end: int, scale, zero, top: int) -> np.ndarray:
    """Quantize columns start..end of ``w`` in order, pushing each rounding error onto the later columns."""
    codes = np.zeros((w.shape[0], end - start), dtype=np.uint8)
    errors = np.zeros((w.shape[0], end - start))
    for offset, column in enumerate(range(start, end)):
        code = np.clip(np.round(w[:, column] / scale) + zero, 0, top)
        codes[:, offset] = code
        error = (w[:, column] - (code - zero) * scale) / upper[column, column]
        w[:, column:end] -= np.outer(error, upper[column, column:end])
        errors[:, offset] = error
    w[:, end:] -= errors @ upper[start:end, end:]
    return codes


# --- AWQ: per-channel scales folded into the op before ------------------------------------------


def awq_scale(weights: list[np.ndarray], hessian: np.ndarray, quantize, tie: np.ndarray | None = None) -> np.ndarray:
    """The per-input-channel scale s = E[x²]^(α/2) (α searched) minimising Σ trace(ΔW H ΔWᵀ) over ``weights`` [N, K].

    ``tie`` [K] maps each input channel to the scale it must share (o_proj's channels that read one value channel).
    """
    energy = np.maximum(np.diag(hessian), 1e-12)
    if tie is not None:  # one energy per shared scale: the mean over the channels that share it
        energy = (np.bincount(tie, weights=energy) / np.maximum(np.bincount(tie), 1))[tie]
    best, best_error = np.ones_like(energy), np.inf
    for alpha in ALPHAS:
        s = energy ** (alpha / 2)
        s = s / np.sqrt(s.max() * s.min())
        h_scaled = hessian / np.outer(s, s)
        error = 0.0
        for w in weights:
            delta = w - quantize(w * s, h_scaled).dequantize(w.shape[1]) / s
            error += float(np.einsum("nk,kj,nj->", delta, hessian, delta, optimize=True))
        if error < best_error:
            best, best_error = s, error
    return best.astype(np.float32)


# --- calibration: H = XᵀX of every MatMul input --------------------------------------------------


def second_moments(model_dir: Path, windows: int, tokens: int, names: list[str] | None = None) -> dict[str, np.ndarray]:
    """XᵀX [K, K] (float64) of every MatMul input with a constant weight (or of ``names``), over the calibration
    windows. The graph is cut after the last of them, so a pass over the first layers runs those layers only."""
    import onnx
    import onnxruntime as ort

    from slmops.convert.calibration_text import CalibrationWindows

    graph_file = Path(model_dir) / "model.onnx"
    model = onnx.load(str(graph_file), load_external_data=False)  # weights stay in model.onnx.data
    names = sorted({node.input[0] for node in _weight_matmuls(model.graph)}) if names is None else names
    known = {item.name for item in model.graph.output}
    del model.graph.output[:]  # onnxruntime then drops every node none of ``names`` needs
    model.graph.output.extend(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None) for name in names)
    # a graph file beside the weights, so no in-memory copy (and no 2 GB protobuf limit)
    probe = graph_file.with_name("calibration-probe.onnx")
    onnx.save(model, str(probe))
    try:
        session = ort.InferenceSession(str(probe), calibration_options(), providers=["CPUExecutionProvider"])
    finally:
        probe.unlink()
    sums: dict[str, np.ndarray] = {}
    for feeds in CalibrationWindows(model_dir, windows, tokens):
        outputs = session.run(names, {k: v for k, v in feeds.items() if k not in known})
        for name, value in zip(names, outputs, strict=True):
            x = value.reshape(-1, value.shape[-1])
            sums[name] = sums.get(name, 0) + (x.T @ x).astype(np.float64)  # float32 products, float64 sums
    return sums


def _weight_matmuls(graph) -> list:
    initializers = {item.name for item in graph.initializer}
    return [node for node in graph.node if node.op_type == "MatMul" and node.input[1] in initializers]


# --- the graph rewrite ---------------------------------------------------------------------------


def quantize_calibrated(
    model_dir: Path,
    options: CalibratedOptions,
    echo=lambda line: None,
    moments: dict[str, np.ndarray] | None = None,
    steps: Path | None = None,
) -> list[str]:
    """Replace ``model_dir``'s FP32 graph (a slmops FP32 export) by its calibrated INT4 version, in place.

    Returns what the conversion report should say beyond the options (a rotation that could not be done).

    ``moments`` (from :func:`second_moments` on the same graph, rotated when ``options.rotate``) skips the
    calibration passes; it is not modified. ``steps``: a folder shared by exports of one model that differ
    only in ``int8_share``: the first keeps its 4-bit matrices and measured gains there, the next ones
    start from them (calibration, GPTQ and the sensitivity scoring are most of the time).
    """
    import onnx

    path = Path(model_dir) / "model.onnx"
    notes = []
    if options.rotate:
        why = rotate_export(model_dir, options.rotation_seed)
        notes += [f"the hidden state was not rotated before quantizing: {why}"] if why else []
        echo(notes[0] if why else "rotated the hidden state, the value heads and the down projections' inputs")
    # The weights stay in model.onnx.data and are read one at a time: in memory, the graph's
    # 4 bytes a parameter would sit beside every pass and scoring below (2 GB on a 0.5B model).
    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    weights = Weights(model_dir, graph)
    nodes = [node for node in _weight_matmuls(graph) if node.name not in options.exclude]
    if moments is None and not calibration_within_budget(graph, weights, options):
        asked = f"{options.calibration_windows} x {options.calibration_tokens}"
        # in order, a fit to 16 x 256 tokens undoes noise: SmolLM2 KLD 0.090 against 0.082 on FP32 inputs
        order = ", on the FP32 graph's inputs" if options._in_order else ""
        windows, tokens = SMALL_CALIBRATION
        options = replace(options, calibration_windows=windows, calibration_tokens=tokens, in_order=False)
        notes.append(
            f"calibrated on {options.calibration_windows} x {options.calibration_tokens} tokens{order}: "
            f"{asked} would pass the calibration budget"
        )
    if options.awq:  # its scales are searched over every MatMul group: every XᵀX at once
        moments = dict(moments if moments is not None else _calibrate(model_dir, options, None, echo))  # rescaled
        echo("searching AWQ scales")
        _apply_awq(graph, nodes, weights, moments, options)
    in_order = options._in_order and moments is None
    kept = SharedSteps(steps, options) if steps is not None and options.int8_share and not options.awq else None
    earlier = kept.load() if kept is not None else None
    if earlier is not None:
        items, gains = earlier
        echo(
            "the 8-bit gains from the export before"
            if in_order
            else f"the {len(items)} MatMuls' 4-bit blocks and 8-bit gains from the export before"
        )
    else:
        echo(f"quantizing {len(nodes)} MatMuls")
        if not in_order:
            items = _quantize_nodes(model_dir, nodes, weights, moments, options, echo)
        else:  # the 8-bit gains are measured on weights rounded to nearest (SmolLM2: the choice so made
            # scored KLD 0.046 in the end, the one made on GPTQ's 4 bits of FP32 inputs 0.045)
            items = _rounded(nodes, weights, options) if options.int8_share else {}
        # every layer MatMul is 4-bit so far; measure which ones 8 bits help most
        gains = _int8_gains(model_dir, model, nodes, weights, items, options, echo) if options.int8_share else {}
        items = {} if in_order else items
        if kept is not None:
            kept.save(items, gains)
    del moments
    eight_bit = _chosen_int8(model_dir, nodes, weights, gains, options, echo) if options.int8_share else []
    if in_order:
        items = _quantize_in_order(model_dir, model, nodes, weights, set(eight_bit), options, echo)
    else:
        by_name = {node.name: node for node in nodes}
        for name in eight_bit:
            items[name] = _quantize_matrix(_weight(by_name[name], weights).T, None, 8, options)
    added: list = []
    residual = None
    for node in nodes:
        shape = tuple(weights[node.input[1]].dims)
        tensors, table = _replace_matmul(graph, node, items[node.name], shape)
        added += tensors
        residual = table or residual
    del weights
    _replace_initializers(graph, added)
    _quantized_embedding(graph, options, model_dir, residual)
    onnx.load_external_data_for_model(model, str(model_dir))  # what is left (norms, rotary caches), before saving
    save_graph(model, model_dir)
    return notes


def calibration_within_budget(graph, weights, options: CalibratedOptions) -> bool:
    """Whether calibrating this graph on ``options``' tokens costs at most :data:`CALIBRATION_BUDGET`
    multiply-adds: a token costs each MatMul's K x N, and each distinct input's K x K for its XᵀX."""
    matmuls = _weight_matmuls(graph)
    widths = {node.input[0]: int(weights[node.input[1]].dims[0]) for node in matmuls}
    per_token = sum(int(np.prod(weights[node.input[1]].dims)) for node in matmuls) + sum(k * k for k in widths.values())
    return per_token * options.calibration_windows * options.calibration_tokens <= CALIBRATION_BUDGET


def _calibrate(model_dir: Path, options: CalibratedOptions, names: list[str] | None, echo) -> dict[str, np.ndarray]:
    echo(f"calibrating on {options.calibration_windows} x {options.calibration_tokens} tokens")
    return second_moments(model_dir, options.calibration_windows, options.calibration_tokens, names)


def _rounded(nodes, weights, options: CalibratedOptions) -> dict[str, Quantized]:
    """Every layer node's weight at its bits, rounded to nearest (the 8-bit candidates' 4 bits)."""
    return {
        node.name: _quantize_weight(node.name, _weight(node, weights).T, None, options)
        for node in nodes
        if node.name not in HEAD_NODES
    }


def _quantize_in_order(
    model_dir: Path, model, nodes, weights, eight_bit: set[str], options: CalibratedOptions, echo
) -> dict[str, Quantized]:
    """Every node's weight (``eight_bit`` ones at 8 bits) quantized on the inputs the quantized nodes before
    it give (:mod:`slmops.convert.sequential`)."""
    from slmops.convert.calibration_text import CalibrationWindows
    from slmops.convert.sequential import quantize_in_order

    windows, tokens = options.calibration_windows, options.calibration_tokens
    echo(f"calibrating on {windows} x {tokens} tokens, in graph order")
    feeds = CalibrationWindows(model_dir, windows, tokens).items
    head = next((node for node in nodes if node.name == LM_HEAD_NODE), None)
    # the embedding gathers the head's rows when the two are tied: the head keeps the weights it was given
    tied = head is not None and transposed_table(model.graph) == head.input[1]

    def quantize(node, w: np.ndarray, hessian: np.ndarray) -> Quantized:
        return _quantize_weight(node.name, w, hessian, options, 8 if node.name in eight_bit else None)

    kept = {LM_HEAD_NODE} if tied else set()
    return quantize_in_order(model, nodes, weights, feeds, quantize, options.damping, kept, echo)


def _quantize_nodes(model_dir: Path, nodes, weights, moments, options: CalibratedOptions, echo) -> dict[str, Quantized]:
    """Every node's weight quantized, with the XᵀX of its input; each pass's XᵀX freed once its run is done."""
    items = {}
    for run, run_moments in _calibration_passes(model_dir, nodes, weights, moments, options, echo):
        items.update({node.name: _quantize_node(node, weights, run_moments, options) for node in run})
        del run_moments  # before the next pass calibrates
    return items


def _calibration_passes(model_dir: Path, nodes, weights, moments, options: CalibratedOptions, echo):
    """``nodes`` in runs, each with the XᵀX of its inputs: one run when ``moments`` are given, else as
    many calibration passes as keep the XᵀX held at once within :data:`MOMENTS_MEMORY_SHARE` of the
    memory available. (A 0.5B model's take 5 GB in float64, a 1.5B model's 18 GB: down_proj's input is
    the MLP's intermediate width, squared, in every layer.)"""
    import psutil

    if moments is not None:
        yield nodes, moments
        return
    needs = {node.name for node in nodes if _bits(node.name, options) == 4 and options.method != "rtn"}
    widths = {node.input[0]: int(weights[node.input[1]].dims[0]) for node in nodes if node.name in needs}
    runs = _runs_within(nodes, widths, MOMENTS_MEMORY_SHARE * psutil.virtual_memory().available)
    for number, run in enumerate(runs, start=1):
        names = sorted({node.input[0] for node in run if node.name in needs})
        if len(runs) > 1:
            echo(f"calibration pass {number} of {len(runs)}")
        yield run, _calibrate(model_dir, options, names, echo) if names else {}


def _runs_within(nodes: list, widths: dict[str, int], budget: float) -> list[list]:
    """``nodes`` in order, cut where the float64 XᵀX of the inputs in ``widths`` a run reads would pass ``budget`` bytes."""
    runs: list[list] = [[]]
    held: set[str] = set()
    for node in nodes:
        name = node.input[0]
        grows = name in widths and name not in held
        if grows and runs[-1] and sum(8 * widths[n] ** 2 for n in held | {name}) > budget:
            runs.append([])
            held = set()
        runs[-1].append(node)
        held |= {name} if grows else set()
    return [run for run in runs if run]


def _bits(name: str, options: CalibratedOptions) -> int:
    if name == LM_HEAD_NODE:
        return 8 if options.head == "int8" else 4
    if name == ROTATION_NODE:  # the head's view of the rotated state: 0.3 M weights that every logit reads
        return 8
    if options.int8_share:  # chosen after measuring, from 4 bits
        return 4
    return 8 if any(pattern in name for pattern in options.int8) else 4


class Weights(dict):
    """A graph's initializers by name, their values read from the model folder's weights file when asked
    (:meth:`array`) and not kept in the graph."""

    def __init__(self, model_dir: Path, graph) -> None:
        super().__init__({item.name: item for item in graph.initializer})
        self.base = str(model_dir)

    def array(self, name: str) -> np.ndarray:
        """The initializer's values as float32 (a copy of the tensor is loaded, so the graph keeps none)."""
        from onnx import TensorProto, numpy_helper

        tensor = TensorProto()
        tensor.CopyFrom(self[name])
        return numpy_helper.to_array(tensor, base_dir=self.base).astype(np.float32)

    def in_memory(self, name: str) -> None:
        """Load the initializer's values into the graph (for a session made from the graph's bytes)."""
        from onnx import TensorProto
        from onnx.external_data_helper import load_external_data_for_tensor, uses_external_data

        tensor = self[name]
        if uses_external_data(tensor):
            load_external_data_for_tensor(tensor, self.base)
            tensor.data_location = TensorProto.DEFAULT
            del tensor.external_data[:]


def _weight(node, weights: Weights) -> np.ndarray:
    """The MatMul's weight [K, N] as the graph holds it now (after AWQ)."""
    return weights.array(node.input[1])


def _quantize_node(node, weights, moments, options: CalibratedOptions) -> Quantized:
    return _quantize_weight(node.name, _weight(node, weights).T, moments.get(node.input[0]), options)


def _quantize_weight(
    name: str, w: np.ndarray, hessian: np.ndarray | None, options: CalibratedOptions, bits: int | None = None
) -> Quantized:
    """The MatMul ``name``'s weight ``w`` [N, K] at ``bits`` (None: its own), with the second moment of its input."""
    if name == LM_HEAD_NODE and options.head == "screened":
        return screened_rows(w, hessian, options)
    return _quantize_matrix(w, hessian, bits or _bits(name, options), options)


def screened_rows(w: np.ndarray, hessian: np.ndarray | None, options: CalibratedOptions) -> Quantized:
    """``w`` [N, K] as 4-bit codes fitted like a layer's and a 4-bit residual, both in the 8-bit matrices'
    blocks (a screened head has 8-bit rows' worth of bytes; finer blocks would add scales to both)."""
    blocks = replace(options, block_size=options.int8_block)
    codes = _quantize_matrix(w, hessian, 4, blocks)
    residual = quantize_rows(w - codes.dequantize(w.shape[1]), None, options.int8_block, 4, search=False)
    return replace(codes, residual=residual)


def _int8_gains(model_dir: Path, model, nodes, weights, items, options: CalibratedOptions, echo) -> dict[str, float]:
    """How much each layer MatMul's 8 bits cut the divergence from FP32, by MatMul name."""
    from slmops.convert.calibration_text import CalibrationWindows
    from slmops.convert.sensitivity import Divergence, LazyWeights, int8_gains, probe_session

    by_weight = {node.input[1]: node for node in nodes}
    shapes = {name: tuple(weights[name].dims) for name in by_weight}  # [K, N]
    candidates = [name for name, node in by_weight.items() if node.name not in HEAD_NODES]
    fp32 = {name: _weight(node, weights) for name, node in by_weight.items()}
    # One 4-bit matrix at a time beside the FP32 set: all of a model's sets at once held three copies
    # of its weights (18.7 GB at the peak of a 0.5B model's conversion).
    four = LazyWeights(candidates, lambda name: items[by_weight[name].name].dequantize(shapes[name][0]).T.copy())
    feeds = CalibrationWindows(model_dir, options.sensitivity_windows, options.sensitivity_tokens).items
    for name in weights.keys() - by_weight.keys():  # the probe session is made from the graph's bytes
        weights.in_memory(name)
    divergence = Divergence(probe_session(model, list(by_weight)), feeds, fp32)
    gains = int8_gains(divergence, fp32, four, echo)
    return {by_weight[name].name: gain for name, gain in gains.items()}


def _chosen_int8(
    model_dir: Path, nodes, weights, gains: dict[str, float], options: CalibratedOptions, echo
) -> list[str]:
    """The layer MatMuls whose 8 bits cut the divergence most per byte, up to ``int8_share`` of them."""
    from slmops.convert.sensitivity import choose_int8

    sizes = {node.name: int(np.prod(tuple(weights[node.input[1]].dims))) for node in nodes if node.name in gains}
    chosen = choose_int8(gains, sizes, options.int8_share)
    echo(f"8-bit by measured sensitivity: {len(chosen)} of {len(gains)} MatMuls")
    record = {"kld_gain_of_int8": {name: round(gain, 6) for name, gain in gains.items()}, "int8": chosen}
    (Path(model_dir) / SENSITIVITY_FILE).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return chosen


class SharedSteps:
    """The 4-bit matrices and 8-bit gains of one calibrated run, kept for the runs that differ only in
    ``int8_share`` (deploy's steps): both depend on every other option, not on the share."""

    def __init__(self, folder: Path, options: CalibratedOptions):
        self.folder = Path(folder)
        self.key = repr(replace(options, int8_share=0.0))  # every other setting, the scoring's included

    def load(self) -> tuple[dict[str, Quantized], dict[str, float]] | None:
        index = self.folder / "steps.json"
        if not index.exists():
            return None
        record = json.loads(index.read_text(encoding="utf-8"))
        if record["key"] != self.key:
            return None
        arrays = np.load(self.folder / "matrices.npz")

        def stored(key: str, bits: int) -> Quantized:
            residual = stored(f"{key}.residual", bits) if f"{key}.residual.q" in arrays else None
            return Quantized(arrays[f"{key}.q"], arrays[f"{key}.scale"], arrays[f"{key}.zero_point"], bits, residual)

        items = {name: stored(str(i), bits) for i, (name, bits) in enumerate(record["matrices"])}
        return items, record["gains"]

    def save(self, items: dict[str, Quantized], gains: dict[str, float]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, Any] = {}
        part: Quantized | None
        for i, item in enumerate(items.values()):
            key, part = str(i), item  # a screened head's residual under the key's ".residual"
            while part is not None:
                arrays.update({f"{key}.q": part.q, f"{key}.scale": part.scale, f"{key}.zero_point": part.zero_point})
                key, part = f"{key}.residual", part.residual
        np.savez(self.folder / "matrices.npz", **arrays)
        record = {"key": self.key, "matrices": [[name, item.bits] for name, item in items.items()], "gains": gains}
        (self.folder / "steps.json").write_text(json.dumps(record) + "\n", encoding="utf-8")


def _quantize_matrix(w: np.ndarray, hessian: np.ndarray | None, bits: int, options: CalibratedOptions) -> Quantized:
    """``w`` [N, K] by the chosen method; 8 bits is plain range quantization (its error is ~16x smaller)."""
    if bits == 8:
        return quantize_rows(w, None, options.int8_block, bits, search=False)
    if options.method == "rtn" or hessian is None:
        return quantize_rows(w, None, options.block_size, bits, search=False)
    if options.method == "gptq":
        return gptq_rows(w, hessian, options.block_size, bits, options.damping)
    return quantize_rows(w, np.diag(hessian).astype(np.float32), options.block_size, bits, search=True)


def _apply_awq(graph, nodes, weights: Weights, moments, options: CalibratedOptions) -> None:
    """Scale each foldable group of MatMuls sharing an input; fold 1/s into the op that produced it."""
    producers = {output: node for node in graph.node for output in node.output}
    groups: dict[str, list] = {}
    for node in nodes:
        if node.name not in HEAD_NODES and (options.int8_share or _bits(node.name, options) == 4):
            groups.setdefault(node.input[0], []).append(node)
    matmuls = {node.output[0]: node for node in nodes}
    for name, members in groups.items():
        if name not in moments:
            continue
        fold = _fold_target(name, producers.get(name), matmuls, options, moments[name].shape[0])
        if fold is None:
            continue
        arrays = {m.input[1]: weights.array(m.input[1]) for m in members}

        def rtn(w, h):
            return quantize_rows(w, None, options.block_size, 4, search=False)

        s = awq_scale([a.T for a in arrays.values()], moments[name], rtn, fold.tie)
        for key, array in arrays.items():
            set_weight(weights[key], array * s[:, None])
        folded = weights.array(fold.initializer)
        set_weight(weights[fold.initializer], fold.apply(folded, s))
        moments[name] = moments[name] / np.outer(s, s)


@dataclass
class Fold:
    """Where 1/s goes: an RMSNorm weight (``axis`` None) or output columns of a MatMul weight [K, N] (``axis`` 1)."""

    initializer: str
    axis: int | None = None
    first_column: int = 0  # the columns ``tie`` indexes start here (qkv_proj's value part)
    tie: np.ndarray | None = None  # input channel -> the column whose scale it shares

    def apply(self, array: np.ndarray, s: np.ndarray) -> np.ndarray:
        if self.axis is None:
            return array / s
        if self.tie is None:
            return array / s[None, :]
        shared = np.ones(int(self.tie.max()) + 1, dtype=np.float32)
        shared[self.tie] = s  # channels tied to one column carry the same scale
        array = array.copy()
        array[:, self.first_column : self.first_column + shared.size] /= shared[None, :]
        return array


def _fold_target(name: str, producer, matmuls, options: CalibratedOptions, width: int) -> Fold | None:
    """What absorbs 1/s: an RMSNorm weight, up_proj's columns before the MLP's Mul, or qkv_proj's value columns."""
    if producer is None:
        return None
    if producer.op_type.endswith("SimplifiedLayerNormalization") and name != producer.output[0]:
        return None
    if producer.op_type == "SimplifiedLayerNormalization":
        return Fold(producer.input[1])
    if producer.op_type == "SkipSimplifiedLayerNormalization":
        return Fold(producer.input[2])
    if producer.op_type == "Mul":
        ups = [matmuls[i] for i in producer.input if i in matmuls]
        if len(ups) == 1 and "up_proj" in ups[0].name:
            return Fold(ups[0].input[1], axis=1)
    if producer.op_type == "GroupQueryAttention" and options.awq_o_proj and producer.input[0] in matmuls:
        return _value_fold(producer, matmuls[producer.input[0]], width)
    return None


def _value_fold(attention, qkv, width: int) -> Fold | None:
    """o_proj's input channel (head h, dim d) is a weighted sum of value channel (h's kv group, d): scale that column.

    ``width`` is o_proj's input size (heads x head size); qkv_proj's columns are q, then k, then v.
    """
    heads = value_heads(attention, width)
    if heads is None:
        return None
    num_heads, kv_heads, head_size = heads
    channel = np.arange(width)
    group = (channel // head_size) // (num_heads // kv_heads)
    tie = group * head_size + channel % head_size
    return Fold(qkv.input[1], axis=1, first_column=width + kv_heads * head_size, tie=tie)


def _replace_matmul(graph, node, item: Quantized, shape: tuple[int, int]) -> tuple[list, RowBlocks | None]:
    """Swap ``node`` for a MatMulNBits reading ``item`` (and, for a screened head, the nodes that rescore
    its top candidates); returns the initializers they need and the residual's table, if any."""
    from onnx import helper

    k, n = shape
    tensors = _stored(item, node.input[1])
    # a screened head's MatMulNBits writes the coarse logits its top candidates are rescored from
    output = node.output[0] if item.residual is None else f"{node.name.rsplit('/', 1)[0]}/coarse/output_0"
    made = [
        helper.make_node(
            "MatMulNBits",
            [node.input[0], *(t.name for t in tensors)],
            [output],
            name=f"{node.name}_Q{item.bits}",
            domain="com.microsoft",
            K=k,
            N=n,
            bits=item.bits,
            block_size=item.q.shape[-1],
            accuracy_level=ACCURACY_LEVEL,
        )
    ]
    residual = None
    if item.residual is not None:
        parts = _stored(item.residual, f"{node.input[1]}_residual", rows_of_bytes=True)
        layout = (n, k, item.residual.bits, item.residual.q.shape[-1])
        residual = RowBlocks(parts[0].name, parts[1].name, parts[2].name, *layout)
        rescoring, constants = screened_head_nodes(node.name, node.input[0], output, node.output[0], residual)
        made, tensors = made + rescoring, tensors + parts + constants
    position = list(graph.node).index(node)
    graph.node.remove(node)
    for offset, new in enumerate(made):
        graph.node.insert(position + offset, new)
    return tensors, residual


def _stored(item: Quantized, base: str, rows_of_bytes: bool = False) -> list:
    """``item``'s codes, scales and zero points as MatMulNBits (and GatherBlockQuantized) read them;
    ``rows_of_bytes``: the codes as one row of bytes per matrix row, for a table only gathered from."""
    from onnx import numpy_helper

    codes = np.ascontiguousarray(stored_codes(item.q, item.bits), np.uint8)
    codes = codes.reshape(codes.shape[0], -1) if rows_of_bytes else codes
    return [
        numpy_helper.from_array(codes, f"{base}_Q{item.bits}"),
        numpy_helper.from_array(item.scale.astype(np.float32), f"{base}_scales"),
        numpy_helper.from_array(stored_zero_points(item.zero_point, item.bits), f"{base}_zp"),
    ]


def _replace_initializers(graph, added: list) -> None:
    """Drop the initializers no node reads any more and add ``added``, in one pass (protobuf copies on extend)."""
    used = {name for node in graph.node for name in node.input}
    kept = [item for item in graph.initializer if item.name in used]
    del graph.initializer[:]
    graph.initializer.extend([*kept, *added])


def _quantized_embedding(graph, options: CalibratedOptions, model_dir: Path, residual: RowBlocks | None) -> None:
    """The embedding gathers the quantized LM head's rows (with its ``residual`` when screened) when tied,
    else 8-bit rows of its own table."""
    producers = {output: node for node in graph.node for output in node.output}
    gathers, heads = token_lookups(graph), quantized_lm_heads(graph)
    transpose = producers.get(gathers[0].input[0]) if len(gathers) == 1 else None
    if transpose is not None and transpose.op_type == "Transpose" and len(heads) == 1:
        graph.node.remove(transpose)
        replace_gather(graph, gathers[0], RowBlocks.of(heads[0]), residual)
        _replace_initializers(graph, [])
    else:
        embedding_table_8bit(graph, options.int8_block, model_dir)


def embedding_table_8bit(graph, block: int = INT8_MIN_BLOCK, model_dir: Path | None = None) -> bool:
    """An fp32 embedding table of its own (not the LM head's) becomes 8-bit rows that a
    GatherBlockQuantized reads; False when the graph has none.

    A checkpoint may store the head and the embedding apart even when they hold nearly the same
    matrix (a GGUF with both ``token_embd`` and ``output``): left in fp32 its table is 4 bytes a
    weight, more than every 4-bit layer together on a 0.5B model with a 152k vocabulary. A lookup
    reads one row a token, so 8 bits cost nothing in speed. ``model_dir``: where the table's values
    are when the graph was loaded without them.
    """
    from onnx import TensorProto, numpy_helper

    gathers = token_lookups(graph)
    tables = [item for item in graph.initializer if len(gathers) == 1 and item.name == gathers[0].input[0]]
    if len(tables) != 1 or len(tables[0].dims) != 2 or tables[0].data_type != TensorProto.FLOAT:
        return False
    table = numpy_helper.to_array(tables[0], base_dir=str(model_dir or "")).astype(np.float32)
    item = quantize_rows(table, None, block, 8, search=False)
    rows, hidden = tables[0].dims
    codes, scales, zero_points = _stored(item, tables[0].name)
    layout = RowBlocks(codes.name, scales.name, zero_points.name, rows, hidden, item.bits, block)
    replace_gather(graph, gathers[0], layout)
    graph.initializer.extend([codes, scales, zero_points])
    return True
