"""Base models in the checks: no chat template, so they are asked raw text to complete.

A model without a chat template (``has_chat_template`` False, e.g. a base GGUF) refuses
chats on purpose; validate, the suites and the speed measurement then give it text to
continue instead, and their reports say so once (``mode``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from slmops.modelfolder.messages import normalize

CHAT, COMPLETION = "chat", "completion"


def mode_of(model) -> str:
    """``completion`` for a base model, else ``chat``.

    A test double without ``has_chat_template`` counts as a chat model.
    """
    return COMPLETION if getattr(model, "has_chat_template", True) is False else CHAT


def conversation_prompt(messages: Iterable[Any]) -> tuple[str, tuple[str, ...]]:
    """A suite case's conversation as the text a base model continues, and where its answer ends.

    One message (a single prompt, the usual case) is given as it is and the answer runs to
    its end, so a suite written for a base model ("The capital of France is") completes its
    own words. A longer conversation keeps every message, one line each, and ends on a line
    break: a base model learns a task from examples in its text, so the earlier turns
    (few-shot answers, a system instruction) are what makes it answer in their format, which
    the last user message alone would lose. Its answer is then the next line: it ends at a
    line break, where a base model would otherwise go on to write the next turns itself.

    Raises:
        UsageError: a message has an unknown role or content that is not text.
    """
    lines = [message["content"] for message in normalize(messages)]
    if len(lines) == 1:
        return lines[0], ()
    return "\n".join(lines) + "\n", ("\n",)
