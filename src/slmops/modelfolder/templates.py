"""Prompt templates for the chat formats small models are trained on.

`slmops cache add` writes one of these into a new `inference_model.json` when
the folder has none, picked from the special tokens the tokenizer knows. A
model whose format is not recognised gets no PromptTemplate, and the runtime
then uses the tokenizer's own chat template.
"""

from __future__ import annotations

import json
from pathlib import Path

from slmops.modelfolder import prompt_template
from slmops.modelfolder.inference_model import PLACEHOLDER, Template


def _family(turn: str, separator: str = "", **roles: str) -> Template:
    """The template of a chat format whose turns all follow one pattern.

    ``turn`` holds ``{role}``, replaced by the format's own name for each role
    (``roles``: ``assistant="model"``, say). The generation prompt is the user turn,
    ``separator``, then the assistant's header. Each header below ends with the newline
    the models were trained on, so the answer starts with its first word, not a newline.
    """
    filled = {role: turn.replace("{role}", name) for role, name in roles.items()}
    header = filled["assistant"].split(PLACEHOLDER, 1)[0]
    return Template(**filled, prompt=filled["user"] + separator + header)


KNOWN_TEMPLATES: dict[str, Template] = {
    "chatml": _family(
        "<|im_start|>{role}\n{Content}<|im_end|>",
        separator="\n",
        system="system",
        user="user",
        assistant="assistant",
        tool="tool",
    ),
    "llama3": _family(
        "<|start_header_id|>{role}<|end_header_id|>\n\n{Content}<|eot_id|>",
        system="system",
        user="user",
        assistant="assistant",
        tool="ipython",
    ),
    "gemma": _family("<start_of_turn>{role}\n{Content}<end_of_turn>\n", user="user", assistant="model"),
    "phi3": _family("<|{role}|>\n{Content}<|end|>\n", system="system", user="user", assistant="assistant"),
}

# Checked in order: the first family whose tokens all appear wins.
MARKERS = [
    ("chatml", ("<|im_start|>", "<|im_end|>")),
    ("llama3", ("<|start_header_id|>", "<|eot_id|>")),
    ("gemma", ("<start_of_turn>", "<end_of_turn>")),
    ("phi3", ("<|user|>", "<|assistant|>", "<|end|>")),
]


def template_for(folder: Path) -> Template | None:
    """The PromptTemplate for a model folder, or None to use the tokenizer's chat template."""
    derived = _from_converter(folder)
    if derived is not None:
        return derived
    family = detect_family(folder)
    return KNOWN_TEMPLATES[family].model_copy() if family else None


def detect_family(folder: Path) -> str | None:
    """chatml, llama3, gemma or phi3, from the chat template or the tokenizer's special tokens."""
    for text in (_chat_template_text(folder), _special_tokens_text(folder)):
        for family, tokens in MARKERS:
            if text and all(token in text for token in tokens):
                return family
    return None


def _from_converter(folder: Path) -> Template | None:
    # Deriving renders the Jinja chat template; jinja2 comes only with the convert extra,
    # so without it (or for a template that cannot be split) the built-in guess runs.
    try:
        chat_template = prompt_template.chat_template_of(folder)
        if not chat_template:
            return None
        return prompt_template.derive(chat_template, **prompt_template.special_tokens_of(folder))
    except Exception:
        return None


def _chat_template_text(folder: Path) -> str:
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8", errors="replace")
    config = _read_json(folder / "tokenizer_config.json")
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": ..., "template": ...}]
        template = " ".join(str(item.get("template", "")) for item in template if isinstance(item, dict))
    return template if isinstance(template, str) else ""


def _special_tokens_text(folder: Path) -> str:
    tokens = [item.get("content", "") for item in _read_json(folder / "tokenizer.json").get("added_tokens", [])]
    config = _read_json(folder / "tokenizer_config.json")
    tokens += [str(item.get("content", "")) for item in config.get("added_tokens_decoder", {}).values()]
    return " ".join(token for token in tokens if isinstance(token, str))


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
