"""Chat messages as every prompt builder of slmops reads them: one rule for roles and content.

A message is a dict, or an object with ``role`` and ``content`` (a pydantic request
model). Its content is text: a string, None (no text), or a list of text parts
``{"type": "text", "text": ...}`` joined in order. Any other part (an image, audio, a
file) or content of another type is refused with an error naming the message, so a
request is never answered as if part of it had been read.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from slmops.errors import UsageError

# Each role a chat may hold, and the PromptTemplate turn that renders it.
ROLES = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
    "tool": "tool",
    "function": "tool",
    "ipython": "tool",
}


def normalize(messages: Iterable[Any], allow_empty: bool = False) -> list[dict]:
    """Messages as plain ``{"role": ..., "content": text}`` dicts.

    Args:
        messages: dicts or objects with ``role`` and ``content``.
        allow_empty: an empty list is valid (a template rendered with no turns).

    Raises:
        UsageError: ``messages`` is text or empty, or a message has an unknown role
            or content that is not text.
    """
    if isinstance(messages, (str, bytes)):
        raise UsageError("messages must be a list of {'role': ..., 'content': ...}; use generate() for plain text.")
    result = [
        {"role": _role(message, index), "content": content_text(_get(message, "content"), index)}
        for index, message in enumerate(messages)
    ]
    if not result and not allow_empty:
        raise UsageError("messages is empty; give at least one user message.")
    return result


def content_text(content: Any, index: int = 0) -> str:
    """The text of a message's content (see the module's rule); ``index`` names it in errors."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(_part_text(part, index) for part in content)
    raise UsageError(
        f"messages[{index}] content must be text (a string or a list of text parts), got {type(content).__name__}."
    )


def _part_text(part: Any, index: int) -> str:
    kind = _get(part, "type")
    text = _get(part, "text")
    # A part without a type is read as text when it has text: hand-written lists often omit it.
    if kind not in ("text", None) or not isinstance(text, str):
        what = f"a part of type {kind!r}" if kind not in ("text", None) else "a part with no text"
        raise UsageError(f"messages[{index}] content has {what}; this model reads text only: send text parts.")
    return text


def _role(message: Any, index: int) -> str:
    role = _get(message, "role")
    if role not in ROLES:
        raise UsageError(f"Unknown message role {role!r} in messages[{index}]; use system, user, assistant or tool.")
    return role


def _get(item: Any, key: str) -> Any:
    return item.get(key) if isinstance(item, dict) else getattr(item, key, None)
