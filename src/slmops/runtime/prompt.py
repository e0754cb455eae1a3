"""Chat messages -> prompt text, and the marker that ends an assistant turn.

A model's ``inference_model.json`` PromptTemplate wins (the user wrote it for this
model); without one, the chat template shipped with the tokenizer is applied by
onnxruntime-genai itself, so no Python template engine is needed on this path.
"""

from __future__ import annotations

import json

from slmops.errors import SlmopsError


def render(messages: list[dict], inference_model, tokenizer) -> str:
    """The prompt text for ``messages``: PromptTemplate if the model has one, else its chat template."""
    if inference_model is not None:
        text = inference_model.render(messages)
        if text is not None:
            return text
    try:
        return tokenizer.apply_chat_template(json.dumps(messages, ensure_ascii=False), add_generation_prompt=True)
    except Exception as exc:  # onnxruntime-genai raises plain RuntimeErrors
        raise SlmopsError(
            f"This model has no usable chat template ({exc}); add a PromptTemplate to its "
            "inference_model.json, or use generate() with raw text."
        ) from exc


def end_marker(inference_model) -> str | None:
    """The text that closes an assistant turn in the PromptTemplate (``<|im_end|>`` in ChatML)."""
    template = getattr(inference_model, "PromptTemplate", None) if inference_model is not None else None
    assistant = getattr(template, "assistant", None) or ""
    if "{Content}" not in assistant:
        return None
    return assistant.split("{Content}", 1)[1].strip() or None
