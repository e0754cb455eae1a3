"""Grammars for rows of the batch: an llguidance matcher per sequence and its token masks.

onnxruntime-genai applies its guidance only inside its own generator, so rows of
the batched decoder carry their own matcher. The llguidance tokenizer is built
from the model's ``tokenizer.json`` (no transformers on the serve path), once
per model; the masks of all guided rows of a step are filled together, in
llguidance's own threads, while the model computes the step's logits.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from slmops.errors import UsageError

if TYPE_CHECKING:
    from llguidance import LLMatcher


class Vocabulary(Protocol):
    """What :class:`Grammars` reads of a model (a :class:`slmops.runtime.Model`, which uses
    grammars itself: this module does not import it)."""

    @property
    def path(self) -> Path: ...

    @property
    def genai_config(self) -> Mapping[str, Any]: ...

    @property
    def stop_token_ids(self) -> Iterable[int]: ...


log = logging.getLogger("slmops.server")

COMPILERS = {
    "json_schema": "grammar_from_json_schema",
    "lark_grammar": "grammar_from_lark",
    "regex": "grammar_from_regex",
}


def grammars_for(model: Vocabulary) -> Grammars | None:
    """Grammars for ``model``, or None when llguidance cannot read its tokenizer: its grammars then
    run in onnxruntime-genai's own step (a generator's guidance, one token a step)."""
    try:
        return Grammars(model)
    except Exception as exc:  # no tokenizer.json, a tokenizer llguidance does not read, no llguidance
        log.warning("%s: slmops cannot follow grammars itself: %s", getattr(model, "name", "model"), exc)
        return None


class GrammarError(UsageError):
    """A grammar (JSON schema, Lark or regex) that llguidance cannot compile."""


class Grammars:
    """Matchers for one model's vocabulary, and the executor that fills many masks at once.

    Args:
        model: a loaded :class:`slmops.runtime.Model`.
        threads: threads llguidance fills masks with.
    """

    def __init__(self, model: Vocabulary, threads: int = 1) -> None:
        import llguidance

        self.vocab = model.genai_config["model"]["vocab_size"]
        text = (Path(model.path) / "tokenizer.json").read_text(encoding="utf-8")
        # The answer may end at any of the model's stop tokens once the grammar allows it.
        self.tokenizer = llguidance.LLTokenizer(text, n_vocab=self.vocab, eos_token=sorted(model.stop_token_ids))
        self.executor = llguidance.LLExecutor(num_threads=threads)
        self.words = (self.vocab + 31) // 32

    def matcher(self, guidance: tuple[str, str]) -> LLMatcher:
        """A fresh matcher for ``guidance`` (``(type, data)`` as onnxruntime-genai takes it).

        Raises:
            GrammarError: the grammar does not compile.
        """
        import llguidance

        kind, data = guidance
        if kind not in COMPILERS:
            raise GrammarError(f"Unknown grammar type {kind!r}; use one of {', '.join(COMPILERS)}.")
        try:
            grammar = getattr(llguidance.LLMatcher, COMPILERS[kind])(data)
        except ValueError as exc:
            raise GrammarError(f"The grammar is not valid: {exc}") from None
        matcher = llguidance.LLMatcher(self.tokenizer, grammar, log_level=0)
        if matcher.is_error():
            raise GrammarError(f"The grammar cannot be compiled: {matcher.get_error()}")
        return matcher

    def masks(self, rows: int) -> np.ndarray:
        """A bitmask buffer for ``rows`` rows (bit ``t`` of a row set: token ``t`` allowed)."""
        return np.full((rows, self.words), -1, np.int32)

    def fill(self, matchers: list[tuple[LLMatcher, int]], masks: np.ndarray) -> None:
        """Write the next-token mask of each ``(matcher, row)`` into ``masks[row]``."""
        if matchers:
            self.executor.unsafe_compute_mask_ptr(matchers, masks.ctypes.data, masks.shape[1] * 4, masks.shape[0])

    def draft_masks(self, matcher: LLMatcher, draft: list[int]) -> np.ndarray:
        """The masks of the next token and of the token after each of ``draft``'s, which the
        grammar must accept (:meth:`cut`); ``matcher`` is left where it was."""
        masks = self.masks(1 + len(draft))
        self.executor.unsafe_compute_mask_ptr_with_draft_token(
            [(matcher, 0, draft)], masks.ctypes.data, masks.shape[1] * 4, masks.shape[0]
        )
        return masks

    @staticmethod
    def cut(matcher: LLMatcher, draft: list[int]) -> list[int]:
        """``draft`` up to its first token the grammar would refuse."""
        return draft[: matcher.validate_tokens(draft)] if draft else draft

    @staticmethod
    def forced(matcher: LLMatcher) -> list[int]:
        """The tokens the grammar allows nothing but, next (a JSON schema's keys, its punctuation)."""
        return matcher.compute_ff_tokens()

    def apply_rows(self, logits: np.ndarray, masks: np.ndarray) -> None:
        """Set every token ``masks[i]`` forbids to -inf in ``logits[i]``, in place."""
        allowed = np.unpackbits(masks.view(np.uint8), axis=1, bitorder="little")[:, : logits.shape[1]]
        logits[allowed == 0] = -np.inf

    def apply(self, logits: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """``logits`` with every token the mask forbids at -inf."""
        allowed = np.unpackbits(mask.view(np.uint8), bitorder="little")[: len(logits)].astype(bool)
        return np.where(allowed, logits, -np.inf).astype(logits.dtype, copy=False)
