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
        keep, probs = nucleus(logits.astype(np.float64) / options.temperature, options.top_k, options.top_p)
        return int(keep[self.rng.choice(len(keep), p=probs)])


def penalize(logits: np.ndarray, seen: np.ndarray, penalty: float) -> np.ndarray:
    """A copy of ``logits`` with the tokens in ``seen`` made less likely: positive ones divided by
    ``penalty``, negative ones multiplied by it."""
    logits = logits.copy()
    seen = np.unique(seen)
    values = logits[seen]
    logits[seen] = np.where(values > 0, values / penalty, values * penalty)
    return logits


def nucleus(scaled: np.ndarray, top_k: int, top_p: float) -> tuple[np.ndarray, np.ndarray]:
    """The tokens worth drawing, most likely first, and their probabilities (summing to 1).

    Args:
        scaled: logits divided by the temperature.
        top_k: keep the k most likely tokens (0, or the vocabulary size or more: all).
        top_p: then the fewest most likely tokens whose probability reaches ``top_p`` (1: all).
    """
    if 0 < top_k < len(scaled):
        top = np.argpartition(scaled, -top_k)[-top_k:]
        keep = top[np.argsort(scaled[top])[::-1]]
    else:
        keep = np.argsort(scaled)[::-1]
    probs = np.exp(scaled[keep] - scaled[keep[0]])
    probs /= probs.sum()
    if top_p < 1.0:
        cut = int(np.searchsorted(np.cumsum(probs), top_p)) + 1
        keep, probs = keep[:cut], probs[:cut] / probs[:cut].sum()
    return keep, probs
