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


def log_normalizer(logits: np.ndarray) -> float:
    """``log(sum(exp(logits)))`` of one row: subtracted from a logit, its log-probability."""
    values = np.asarray(logits, np.float32)
    peak = float(np.max(values))
    if not np.isfinite(peak):  # every token masked: nothing has a probability
        return peak
    # exp in float32 (fast on a large vocabulary), summed in float64.
    return peak + float(np.log(np.sum(np.exp(values - peak), dtype=np.float64)))


def next_token(logits: np.ndarray, token: int, top: int) -> TokenLogprob:
    """The log-probability of ``token`` picked from one row of ``logits``, and the ``top`` likeliest tokens.

    Only the normalizer and the few logits reported are computed, never the whole row of
    log-probabilities: this runs once per token per row.
    """
    norm = log_normalizer(logits)
    best: list[tuple[int, float]] = []
    if top > 0:
        count = min(top, len(logits))
        picked = np.argpartition(logits, -count)[-count:]
        picked = picked[np.argsort(-logits[picked], kind="stable")]
        best = [(int(index), float(logits[index]) - norm) for index in picked]
    return TokenLogprob(int(token), float(logits[token]) - norm, best)


def prompt_tokens(logits: np.ndarray, ids: list[int], top: int) -> list[TokenLogprob]:
    """The log-probability of each of ``ids[1:]`` under the logits of the position before it.

    Args:
        logits: ``[len(ids), vocab]``, or more rows: row ``i`` predicts ``ids[i + 1]`` and the
            last row (predicting what follows) is not used.
        ids: the tokens those logits were computed on.
        top: alternatives per position.
    """
    if len(ids) < 2:
        return []
    rows = np.asarray(logits[: len(ids) - 1], np.float32)
    peaks = np.max(rows, axis=-1, keepdims=True)
    norms = peaks[:, 0] + np.log(np.sum(np.exp(rows - peaks), axis=-1, dtype=np.float64))
    chosen = rows[np.arange(len(rows)), ids[1:]]
    best: list[list[tuple[int, float]]] = [[] for _ in rows]
    if top > 0:
        count = min(top, rows.shape[-1])
        picked = np.argpartition(rows, -count, axis=-1)[:, -count:]
        values = np.take_along_axis(rows, picked, axis=-1)
        order = np.argsort(-values, axis=-1, kind="stable")
        picked, values = np.take_along_axis(picked, order, -1), np.take_along_axis(values, order, -1)
        best = [
            [(int(token), float(value) - norm) for token, value in zip(tokens, row)]
            for tokens, row, norm in zip(picked, values, norms)
        ]
    return [
        TokenLogprob(int(token), float(value) - float(norm), alternatives)
        for token, value, norm, alternatives in zip(ids[1:], chosen, norms, best)
    ]
