"""The next token from a row of logits, for the batched decoder.

The batch runs a plain onnxruntime session, which returns logits, so slmops picks
its tokens here, with the same options as everywhere (:class:`GenerationOptions`).
An onnxruntime-genai ``Generator`` (``Model.stream_generate`` and everything on it)
samples inside onnxruntime-genai instead: greedy answers are the same on both, and
a seed reproduces an answer on the same path, not across the two.
"""

from __future__ import annotations

import numpy as np

from slmops.runtime.options import GenerationOptions

# The most likely tokens sorted first when top-p alone limits a draw (see nucleus).
HEAD = 64
# Every how-many-th logit a threshold for the top tokens is taken from (see _top).
STRIDE = 16
# Tokens summed together when every token may be drawn (see draw).
CHUNK = 1024


class Sampler:
    """Picks the tokens of one answer: the repetition penalty first, then the most likely
    token at temperature 0, else a draw among the top-k tokens holding top-p of the mass.

    Args:
        options: the answer's options; ``seed`` seeds its own random generator, so a
            seeded answer does not depend on the others in the batch.
    """

    def __init__(self, options: GenerationOptions) -> None:
        self.options = options
        self.rng = np.random.default_rng(options.seed)

    def sample(self, logits: np.ndarray, prompt: list[int], tokens: list[int]) -> int:
        """The next token after ``prompt`` and the ``tokens`` generated so far (both penalized when repeated)."""
        options = self.options
        if options.repetition_penalty != 1.0:
            logits = penalize(logits, np.array(prompt + tokens, np.int64), options.repetition_penalty)
        if options.temperature <= 0:
            return int(np.argmax(logits))
        if not 0 < options.top_k < len(logits) and options.top_p >= 1.0:
            return draw(logits, options.temperature, self.rng.random())
        keep, probs = nucleus(logits, options.temperature, options.top_k, options.top_p)
        return int(keep[self.rng.choice(len(keep), p=probs)])


def penalize(logits: np.ndarray, seen: np.ndarray, penalty: float) -> np.ndarray:
    """A copy of ``logits`` with the tokens in ``seen`` made less likely: positive ones divided by
    ``penalty``, negative ones multiplied by it."""
    logits = logits.copy()
    seen = np.unique(seen)
    values = logits[seen]
    logits[seen] = np.where(values > 0, values / penalty, values * penalty)
    return logits


def nucleus(logits: np.ndarray, temperature: float, top_k: int, top_p: float) -> tuple[np.ndarray, np.ndarray]:
    """The tokens worth drawing, most likely first, and their probabilities (summing to 1).

    Args:
        logits: one position's logits.
        temperature: what they are divided by (above 0).
        top_k: keep the k most likely tokens (0, or the vocabulary size or more: all).
        top_p: then the fewest most likely tokens whose probability reaches ``top_p`` (1: all).

    Only the head of the distribution is sorted: the top k, or for top-p alone the first
    :data:`HEAD` tokens, four times more while they hold less than ``top_p``. Sorting a whole
    vocabulary took 1.1 ms a token at 49,152 tokens and 7 ms at 151,936 (Qwen2.5), which
    batched decoding pays once per row and step.
    """
    vocab = len(logits)
    limited = 0 < top_k < vocab
    size = top_k if limited else (min(HEAD, vocab) if top_p < 1.0 else vocab)
    best = float(logits.max())
    # top-p alone is a share of every token's probability: the whole vocabulary's sum (float32 terms, a
    # float64 sum: 0.12 ms at 151,936 tokens where float64 terms took 1.05)
    total = None if limited else _weights(logits, temperature, best).sum(dtype=np.float64)
    while True:
        keep = _largest(logits, size)
        probs = np.exp((logits[keep].astype(np.float64) - best) / temperature)
        probs /= probs.sum() if total is None else total
        if limited or size == vocab or top_p >= 1.0 or probs.sum() >= top_p:
            break
        size = min(4 * size, vocab)
    if top_p < 1.0:
        cut = int(np.searchsorted(np.cumsum(probs), top_p)) + 1
        keep, probs = keep[:cut], probs[:cut]
    return keep, probs / probs.sum()


def draw(logits: np.ndarray, temperature: float, uniform: float) -> int:
    """The token at ``uniform`` (in [0, 1)) of the cumulative distribution of softmax(logits / temperature),
    in vocabulary order: no sort.

    The weights are summed in chunks of :data:`CHUNK`, a chunk is found by its cumulative sum and the
    token within it by the chunk's own: float64 sums of float32 terms, 0.14 ms at 151,936 tokens where
    one float64 cumulative sum over the vocabulary took 1.0 ms. A token of weight 0 (a masked -inf
    logit) is never drawn.
    """
    weights = _weights(logits, temperature)
    whole = len(weights) - len(weights) % CHUNK
    sums = weights[:whole].reshape(-1, CHUNK).sum(axis=1, dtype=np.float64)
    if whole < len(weights):
        sums = np.append(sums, weights[whole:].sum(dtype=np.float64))
    cumulative = np.cumsum(sums)
    target = uniform * cumulative[-1]
    chunk = min(int(np.searchsorted(cumulative, target, side="right")), len(sums) - 1)
    while sums[chunk] == 0:  # past the last chunk with weight, by rounding
        chunk -= 1
    start = chunk * CHUNK
    inside = weights[start : start + CHUNK]
    before = cumulative[chunk] - sums[chunk]
    position = int(np.searchsorted(np.cumsum(inside, dtype=np.float64), target - before, side="right"))
    return start + min(position, int(np.flatnonzero(inside)[-1]))


def _weights(logits: np.ndarray, temperature: float, best: float | None = None) -> np.ndarray:
    """exp((logits - max) / temperature) in the logits' own precision (float32 terms cost a quarter of
    float64's at 151,936 tokens; their sums are taken in float64). ``best``: the max, when known."""
    kind = logits.dtype.type
    return np.exp((logits - (logits.max() if best is None else kind(best))) * kind(1 / temperature))


def _largest(logits: np.ndarray, size: int) -> np.ndarray:
    """The indices of the ``size`` largest ``logits``, largest first."""
    if size < len(logits):
        top = _top(logits, size)
        return top[np.argsort(logits[top], kind="stable")[::-1]]
    return np.argsort(logits, kind="stable")[::-1]


def _top(logits: np.ndarray, size: int) -> np.ndarray:
    """The indices of the ``size`` largest ``logits``, in no order.

    The ``size``-th largest of every :data:`STRIDE`-th logit is no larger than the ``size``-th largest
    of all, so the logits at or above it hold the answer: about ``STRIDE x size`` of them to partition
    instead of the vocabulary (151,936 logits, top 50: 0.23 -> 0.04 ms).
    """
    sample = logits[::STRIDE]
    if len(sample) > size:
        candidates = np.flatnonzero(logits >= np.partition(sample, -size)[-size])
        return candidates[np.argpartition(logits[candidates], -size)[-size:]]
    return np.argpartition(logits, -size)[-size:]
