"""Log-probabilities of tokens, from the logits a token was picked from.

Both decode loops (the batched decoder's rows and an onnxruntime-genai generator) hand a
row of logits here when a request asked for log-probabilities: the chosen token's
log-probability and the ``top`` most likely alternatives, as token ids. The logits are
the model's, after a grammar's mask (a masked token has probability 0) and before the
sampling options (temperature, top-k, top-p, repetition penalty), so the numbers are the
model's own distribution, the same ones ``slmops eval`` scores a text with.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

MAX_TOP = 20  # alternatives per token, as OpenAI allows


@dataclass
class TokenLogprob:
    """One token's log-probability and the most likely tokens at its position.

    Attributes:
        token: the token id.
        logprob: its natural-log probability (``-inf`` for a token a grammar forbade).
        top: up to :data:`MAX_TOP` ``(token id, log-probability)`` pairs, most likely first.
    """

    token: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Natural-log probabilities over the last axis, in float64 (fp16 logits lose nothing)."""
    values = np.asarray(logits, np.float64)
    peak = np.max(values, axis=-1, keepdims=True)
    peak = np.where(np.isfinite(peak), peak, 0.0)
    shifted = values - peak
    with np.errstate(divide="ignore"):
        return shifted - np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True))


def scored(logprobs: np.ndarray, token: int, top: int) -> TokenLogprob:
    """``token``'s entry in one row of log-probabilities, with the ``top`` most likely tokens."""
    best: list[tuple[int, float]] = []
    if top > 0:
        count = min(top, len(logprobs))
        picked = np.argpartition(logprobs, -count)[-count:]
        picked = picked[np.argsort(-logprobs[picked], kind="stable")]
        best = [(int(index), float(logprobs[index])) for index in picked]
    return TokenLogprob(int(token), float(logprobs[token]), best)


def next_token(logits: np.ndarray, token: int, top: int) -> TokenLogprob:
    """The log-probability of ``token`` picked from one row of ``logits``."""
    return scored(log_softmax(logits), token, top)


def prompt_tokens(logits: np.ndarray, ids: list[int], top: int) -> list[TokenLogprob]:
    """The log-probability of each of ``ids[1:]`` under the logits of the position before it.

    Args:
        logits: ``[len(ids), vocab]``, or more rows: row ``i`` predicts ``ids[i + 1]`` and the
            last row (predicting what follows) is not used.
        ids: the tokens those logits were computed on.
        top: alternatives per position.
    """
    # Row by row: a whole chunk in float64 would take hundreds of MB on a large vocabulary.
    return [next_token(logits[index], token, top) for index, token in enumerate(ids[1:])]
