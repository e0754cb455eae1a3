"""Which MatMuls of a calibrated INT4 export keep 8 bits: the ones whose 8 bits measurably buy most.

Keeping every MLP down projection at 8 bits (a fixed rule) halves SmolLM2's ΔPPL, but layers
differ: some 4-bit matrices cost the model far more than others of the same kind. Here each
candidate is scored on calibration text (never on what `slmops eval` scores) by the KL divergence
of the next-token distribution from the FP32 graph's with that one MatMul at 4 bits and every
other weight FP32: what its 8 bits would win back (their rounding error is 1/16 of 4 bits', their
divergence about 1/256). The share of weights allowed at 8 bits then goes to the largest gains per
extra byte. Scored against every other MatMul at 4 bits instead, the others' errors masked and
cancelled each candidate's (a third of SmolLM2's gains came out negative) and the choice was worse:
SmolLM2 b64 in order, KLD 0.0436 -> 0.0409 and top-1 89.2% -> 89.7% on 16,352 held-out tokens with
this scoring, off the 4-bit grid 0.0464 -> 0.0423 (docs/quality.md).

One onnxruntime session serves every measurement: the FP32 graph with its MatMul weights turned
into inputs, fed the dequantized weights of each assignment. Activations stay fp32 there (the
export's kernel rounds them to int8), which shifts every candidate alike.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

import numpy as np


class LazyWeights(Mapping[str, np.ndarray]):
    """Weights by name, each made when it is read and not kept: one matrix in memory at a time."""

    def __init__(self, names: list[str], make: Callable[[str], np.ndarray]) -> None:
        self.names, self.make = names, make

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self.names:
            raise KeyError(name)
        return self.make(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)


def probe_session(model, weight_names: list[str]):
    """An onnxruntime session of ``model`` (an FP32 decoder graph) that reads ``weight_names`` as inputs."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from slmops.convert.graph_file import calibration_options

    graph = model.graph
    fed = set(weight_names)
    shapes = {item.name: list(item.dims) for item in graph.initializer if item.name in fed}
    inputs = [*graph.input, *(helper.make_tensor_value_info(name, TensorProto.FLOAT, shapes[name]) for name in fed)]
    outputs = [item for item in graph.output if item.name == "logits"]
    kept = [item for item in graph.initializer if item.name not in fed]
    probe = helper.make_graph(graph.node, "sensitivity-probe", inputs, outputs, kept)
    made = helper.make_model(probe, opset_imports=model.opset_import, ir_version=model.ir_version)
    return ort.InferenceSession(made.SerializeToString(), calibration_options(), providers=["CPUExecutionProvider"])


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


class Divergence:
    """Mean KL(FP32 ‖ assignment) of the next-token distribution over the calibration windows."""

    def __init__(self, session, feeds: list[dict], reference: Mapping[str, np.ndarray]):
        self.session, self.feeds = session, feeds
        self.reference_logp = [self._logp(window, reference) for window in feeds]
        self.reference_p = [np.exp(logp) for logp in self.reference_logp]  # once, not once a candidate

    def _logp(self, window: dict, weights: Mapping[str, np.ndarray]) -> np.ndarray:
        logits = self.session.run(["logits"], {**window, **weights})[0]
        return log_softmax(logits.reshape(-1, logits.shape[-1]).astype(np.float64))

    def __call__(self, weights: dict[str, np.ndarray]) -> float:
        total = 0.0
        for window, reference, p in zip(self.feeds, self.reference_logp, self.reference_p, strict=True):
            logp = self._logp(window, weights)
            total += float((p * (reference - logp)).sum(-1).mean())
        return total / len(self.feeds)


def int8_gains(
    divergence: Callable[[dict[str, np.ndarray]], float],
    fp32: Mapping[str, np.ndarray],
    four: Mapping[str, np.ndarray],
    echo=lambda line: None,
) -> dict[str, float]:
    """For each weight in ``four``: the divergence with that one at 4 bits and every weight of ``fp32`` beside it."""
    echo(f"scoring {len(four)} candidates at 4 bits, each beside the FP32 weights")
    return {name: divergence({**fp32, name: weight}) for name, weight in four.items()}


def choose_int8(gains: dict[str, float], sizes: dict[str, int], share: float) -> list[str]:
    """The largest gains per weight until ``share`` of the candidates' weights is chosen (positive gains only)."""
    budget = share * sum(sizes[name] for name in gains)
    chosen, used = [], 0
    for name in sorted(gains, key=lambda name: gains[name] / sizes[name], reverse=True):
        if gains[name] <= 0:
            break
        if used + sizes[name] <= budget:
            chosen.append(name)
            used += sizes[name]
    return chosen
