"""Prompts of exact token lengths, cut from real text.

The shipped text (``slmops/data/bench_prompts.txt``) is prose written for slmops
and released with it under the project's MIT licence. ``--prompts FILE.jsonl``
replaces it with the user's own texts, one ``{"prompt": "..."}`` per line.
Each repetition starts at a different paragraph, so no two requests of a case
share a prefix that a server could cache.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from slmops.bench.targets import Prompt
from slmops.errors import UsageError

CHARS_PER_TOKEN = 4.7  # the shipped text with SmolLM2's tokenizer; only sizes the cut


def shipped_paragraphs() -> list[str]:
    text = resources.files("slmops.data").joinpath("bench_prompts.txt").read_text(encoding="utf-8")
    return [p.strip() for p in text.split("\n\n") if p.strip()]


def load_paragraphs(path: str | Path | None) -> list[str]:
    """The user's JSONL texts (key ``prompt`` or ``text``), or the shipped text."""
    if path is None:
        return shipped_paragraphs()
    texts = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise UsageError(f"Cannot read --prompts {path}: {exc.strerror}.") from exc
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            texts.append(item["prompt"] if "prompt" in item else item["text"])
        except (ValueError, KeyError, TypeError) as exc:
            raise UsageError(f"{path}:{number}: expected a JSON object with a 'prompt' string.") from exc
    if not texts:
        raise UsageError(f"{path} holds no prompt; write one JSON object per line.")
    return texts


class PromptSource:
    """Makes a prompt of ``tokens`` tokens, starting at paragraph ``variant``.

    Args:
        paragraphs: the texts to cut from, used in order and wrapped around.
        encode, decode: a tokenizer to cut text at an exact token count; without
            one (a URL target with no local model) the cut is estimated from characters.
    """

    def __init__(self, paragraphs: list[str], encode=None, decode=None):
        self.paragraphs = paragraphs
        self.encode, self.decode = encode, decode

    def text(self, tokens: int, variant: int = 0) -> str:
        wanted = int(tokens * CHARS_PER_TOKEN * 1.5) + 200
        parts, size, i = [], 0, variant
        while size < wanted:
            paragraph = self.paragraphs[i % len(self.paragraphs)]
            parts.append(paragraph)
            size += len(paragraph) + 2
            i += 1
        return "\n\n".join(parts)

    def prompt(self, tokens: int, variant: int = 0) -> Prompt:
        """A prompt of exactly ``tokens`` tokens when a tokenizer is known, else about that many."""
        text = self.text(tokens, variant)
        if self.encode is None or self.decode is None:
            return Prompt(text=text, tokens=tokens, cut=text[: int(tokens * CHARS_PER_TOKEN)])
        ids = self.encode(text)
        if len(ids) < tokens:
            raise UsageError(f"The prompt text has only {len(ids)} tokens, fewer than {tokens}.")
        return Prompt(text=text, tokens=tokens, cut=self.decode(ids[:tokens]))
