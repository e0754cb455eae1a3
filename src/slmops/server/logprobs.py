"""Log-probabilities in OpenAI's shapes: chat's ``logprobs.content`` and the legacy completions lists.

The runtime reports token ids (:class:`~slmops.runtime.logprobs.TokenLogprob`); here they
become the text and bytes of each token. Bytes come from the model's ``tokenizer.json``
through llguidance, which knows each token's exact bytes (a byte-level BPE piece or a
SentencePiece byte token is often half a character); a token whose bytes are not UTF-8
on their own is named ``bytes:\\xe4\\xbd`` as OpenAI names it, so top-logprob keys stay
distinct.
"""

from __future__ import annotations

import logging
import threading
import weakref
from pathlib import Path
from typing import TYPE_CHECKING

from slmops.runtime.logprobs import TokenLogprob

if TYPE_CHECKING:
    from slmops.runtime.model import Model

log = logging.getLogger("slmops.server")
# JSON has no -inf: a token a grammar forbade is reported as this unlikely, as OpenAI does.
FLOOR = -9999.0


class TokenTexts:
    """The bytes and display text of a model's tokens."""

    def __init__(self, model: Model) -> None:
        self.model = model
        self.cache: dict[int, tuple[str, list[int]]] = {}
        self.decode_bytes = _byte_decoder(model)

    def of(self, token: int) -> tuple[str, list[int]]:
        """The token's text and its UTF-8 bytes."""
        if token not in self.cache:
            raw = self._bytes(token)
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                text = "bytes:" + "".join(f"\\x{byte:02x}" for byte in raw)
            self.cache[token] = (text, list(raw))
        return self.cache[token]

    def _bytes(self, token: int) -> bytes:
        if self.decode_bytes is not None:
            return self.decode_bytes([token])
        return self.model.decode([token]).encode("utf-8")


_TEXTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def texts_for(model: Model) -> TokenTexts:
    """The model's :class:`TokenTexts`, built once (building reads its whole vocabulary)."""
    with _LOCK:
        texts = _TEXTS.get(model)
        if texts is None:
            texts = _TEXTS[model] = TokenTexts(model)
        return texts


def _byte_decoder(model: Model):
    try:
        import llguidance

        text = (Path(model.path) / "tokenizer.json").read_text(encoding="utf-8")
        vocab = model.genai_config["model"]["vocab_size"]
        return llguidance.LLTokenizer(text, n_vocab=vocab).decode_bytes
    except Exception as exc:  # no tokenizer.json, or one llguidance cannot read: decode each token
        log.warning("%s: token bytes come from decoding each token: %s", getattr(model, "name", "model"), exc)
        return None


def _value(logprob: float) -> float:
    return logprob if logprob > FLOOR else FLOOR


# ---- chat ----------------------------------------------------------------------


def chat_entry(entry: TokenLogprob, texts: TokenTexts) -> dict:
    """One token of ``choices[].logprobs.content``."""
    return {
        **_chat_token(entry.token, entry.logprob, texts),
        "top_logprobs": [_chat_token(token, logprob, texts) for token, logprob in entry.top],
    }


def _chat_token(token: int, logprob: float, texts: TokenTexts) -> dict:
    text, raw = texts.of(token)
    return {"token": text, "logprob": _value(logprob), "bytes": raw}


def chat_logprobs(entries: list[TokenLogprob], texts: TokenTexts) -> dict:
    """A chat choice's ``logprobs``."""
    return {"content": [chat_entry(entry, texts) for entry in entries], "refusal": None}


# ---- legacy completions -----------------------------------------------------------


class LegacyLogprobs:
    """The legacy ``logprobs`` of a text completion, built token by token.

    ``text_offset`` is where each token's text starts in the choice's ``text``, counting
    the characters of the tokens before it. ``top_logprobs`` holds the ``top`` likeliest
    tokens and the chosen one (so up to ``top + 1`` entries), as OpenAI's legacy API does.
    """

    def __init__(self, texts: TokenTexts) -> None:
        self.texts = texts
        self.offset = 0

    def add(self, entries: list[TokenLogprob | None], tokens: list[int] | None = None, hidden: int = 0) -> dict:
        """The lists for the next tokens; an entry of None (the prompt's first token) has no log-probability.

        ``tokens`` gives the token ids when an entry is None; the first ``hidden`` tokens are not
        in the text (a BOS the tokenizer added to an echoed prompt), so they take no characters.
        """
        body: dict[str, list] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        for index, entry in enumerate(entries):
            token = entry.token if entry is not None else (tokens or [])[index]
            text, _ = self.texts.of(token)
            body["tokens"].append(text)
            body["text_offset"].append(self.offset)
            self.offset += len(text) if index >= hidden else 0
            if entry is None:
                body["token_logprobs"].append(None)
                body["top_logprobs"].append(None)
                continue
            body["token_logprobs"].append(_value(entry.logprob))
            top = {self.texts.of(token)[0]: _value(logprob) for token, logprob in entry.top}
            top.setdefault(text, _value(entry.logprob))
            body["top_logprobs"].append(top)
        return body


def join(parts: list[dict]) -> dict:
    """Legacy logprobs of consecutive pieces as one."""
    keys = ("tokens", "token_logprobs", "top_logprobs", "text_offset")
    return {key: [item for part in parts for item in part[key]] for key in keys}


def prompt_entries(ids: list[int], scores: list[TokenLogprob] | None) -> list[TokenLogprob | None]:
    """The prompt's entries: none for its first token, then each token's score."""
    return [None, *(scores or [])][: len(ids)] if ids else []
