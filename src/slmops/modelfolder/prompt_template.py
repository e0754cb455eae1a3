"""A Foundry-style PromptTemplate derived from a tokenizer's Jinja chat template.

The chat template is rendered for a growing conversation whose message texts are
markers; what each new message adds to the rendered string is that role's piece,
with the marker replaced by ``{Content}``. The newline templates put between turns
becomes the ``separator``; the generation prompt keeps its trailing newline, so the
answer starts with its first word. A BOS token the template writes before the first
turn becomes ``bos``: onnxruntime-genai encodes a prompt without adding one.
"""

from __future__ import annotations

import json
from pathlib import Path

from slmops.modelfolder.inference_model import PLACEHOLDER, Template

_MARK = {"system": "SLMOPSSYSTEMMARK", "user": "SLMOPSUSERMARK", "assistant": "SLMOPSASSISTANTMARK"}


class TemplateError(Exception):
    """The chat template cannot be rendered into per-role pieces."""


def chat_template_of(folder: Path) -> str | None:
    """The chat template a Hugging Face folder ships (chat_template.jinja or tokenizer_config.json)."""
    folder = Path(folder)
    jinja = folder / "chat_template.jinja"
    if jinja.exists():
        return jinja.read_text(encoding="utf-8")
    config = folder / "tokenizer_config.json"
    if config.exists():
        template = json.loads(config.read_text(encoding="utf-8")).get("chat_template")
        if isinstance(template, list):  # named templates: take the default one
            template = next((t["template"] for t in template if t.get("name") == "default"), None)
        return template if isinstance(template, str) else None
    return None


def special_tokens_of(folder: Path) -> dict[str, str]:
    """bos_token / eos_token strings from tokenizer_config.json (they may be dicts there)."""
    path = Path(folder) / "tokenizer_config.json"
    config = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    tokens = {}
    for key in ("bos_token", "eos_token"):
        value = config.get(key)
        tokens[key] = value.get("content", "") if isinstance(value, dict) else (value or "")
    return tokens


def text_prefix_ids(folder: Path) -> list[int]:
    """Token ids the Hugging Face tokenizer puts before any text it encodes (Gemma's and Llama's BOS).

    onnxruntime-genai encodes text without them: a chat template writes its BOS as text, but a
    raw completion has to add them. They come from tokenizer.json's post-processor template;
    ``add_bos_token: false`` in tokenizer_config.json turns them off, as it does in transformers.
    """
    folder = Path(folder)
    config, tokenizer = folder / "tokenizer_config.json", folder / "tokenizer.json"
    if not tokenizer.exists():
        return []
    if config.exists() and json.loads(config.read_text(encoding="utf-8")).get("add_bos_token") is False:
        return []
    return _template_prefix(_post_processor(tokenizer.read_text(encoding="utf-8")))


def _post_processor(text: str) -> object:
    """tokenizer.json's post_processor, read without parsing the whole file (a large vocabulary's
    tokenizer.json takes most of a second to parse); a vocabulary entry of that name maps to a number."""
    import re

    decoder = json.JSONDecoder()
    for match in re.finditer(r'"post_processor"\s*:\s*', text):
        value, _ = decoder.raw_decode(text, match.end())
        if value is None or isinstance(value, dict):
            return value
    return None


def _template_prefix(processor: object) -> list[int]:
    """The special tokens a TemplateProcessing puts before the text (also inside a Sequence)."""
    if not isinstance(processor, dict):
        return []
    if processor.get("type") == "Sequence":
        return next((ids for step in processor.get("processors", []) if (ids := _template_prefix(step))), [])
    if processor.get("type") != "TemplateProcessing":
        return []
    prefix: list[int] = []
    for piece in processor.get("single", []):
        if "SpecialToken" not in piece:
            break
        prefix += processor.get("special_tokens", {}).get(piece["SpecialToken"]["id"], {}).get("ids", [])
    return [int(token) for token in prefix]


def derive(chat_template: str, bos_token: str = "", eos_token: str = "") -> Template:
    """The PromptTemplate equivalent to `chat_template` for plain text conversations.

    Raises:
        TemplateError: the template cannot be expressed per role; the result is checked by
            rendering a conversation both ways.
    """
    render = _renderer(chat_template, bos_token, eos_token)
    system_text = _try(render, [_message("system")], False)
    history = [_message("system")] if system_text is not None else []
    turns = [history + [_message("user")], history + [_message("user"), _message("assistant")]]
    last = turns[1] + [_message("user")]
    closed = [render(messages, False) for messages in (*turns, last)]
    # Some templates (Phi-3) end every render that has no generation prompt with EOS.
    writes_eos = bool(eos_token) and "eos_token" in chat_template
    tail = eos_token if writes_eos and all(text.endswith(eos_token) for text in closed) else ""
    after_user, after_assistant, without_prompt = (text[: len(text) - len(tail)] for text in closed)
    with_prompt = render(last, True)
    start = (system_text or "")[: len(system_text or "") - len(tail)] if system_text else ""
    if not (
        after_user.startswith(start)
        and after_assistant.startswith(after_user)
        and with_prompt.startswith(without_prompt)
    ):
        raise TemplateError("the chat template does not render turns one after another")
    pieces = {
        "system": start or None,
        "user": after_user[len(start) :],
        "assistant": after_assistant[len(after_user) :],
    }
    # Only a BOS the template writes itself is moved out of the turns; some vocabularies reuse a
    # turn marker as BOS.
    bos = bos_token if "bos_token" in chat_template and with_prompt.startswith(bos_token) else ""
    template = _assemble(pieces, with_prompt[len(without_prompt) :], bos)
    template.bos = bos or None
    _check_round_trip(template, with_prompt, last)
    return template


def _check_round_trip(template: Template, expected: str, messages: list[dict]) -> None:
    plain = [{"role": m["role"], "content": m["content"]} for m in messages]
    rendered = template.render(plain, add_generation_prompt=True)
    if rendered != expected:
        raise TemplateError("the derived PromptTemplate renders conversations differently from the chat template")


def _assemble(pieces: dict[str, str | None], generation: str, bos_token: str) -> Template:
    turns = {role: _strip_bos(text, bos_token) for role, text in pieces.items() if text}
    separator = _common_trailing_newlines(list(turns.values()))
    fields = {role: _placeholder(text[: len(text) - len(separator)], role) for role, text in turns.items()}
    if PLACEHOLDER not in fields.get("user", ""):
        raise TemplateError("the chat template drops the user's message")
    fields["prompt"] = fields["user"] + separator + generation
    return Template(**fields, separator=separator)


def _placeholder(text: str, role: str) -> str:
    return text.replace(_MARK[role], PLACEHOLDER)


def _strip_bos(text: str, bos_token: str) -> str:
    return text[len(bos_token) :] if bos_token and text.startswith(bos_token) else text


def _common_trailing_newlines(texts: list[str]) -> str:
    suffixes = [text[len(text.rstrip("\n")) :] for text in texts]
    return min(suffixes, key=len) if suffixes else ""


def _message(role: str) -> dict:
    return {"role": role, "content": _MARK[role]}


def _try(render, messages: list[dict], add_generation_prompt: bool) -> str | None:
    try:
        text = render(messages, add_generation_prompt)
    except TemplateError:
        return None  # e.g. Gemma: its template rejects a system role
    return text if _MARK["system"] in text else None


def _renderer(chat_template: str, bos_token: str, eos_token: str):
    from datetime import datetime

    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = lambda value, indent=None: json.dumps(value, indent=indent, ensure_ascii=False)
    env.globals.update(raise_exception=raise_exception, strftime_now=lambda fmt: datetime.now().strftime(fmt))
    try:
        compiled = env.from_string(chat_template)
    except jinja2.TemplateError as exc:
        raise TemplateError(f"the chat template is not valid Jinja: {exc}") from exc

    def render(messages: list[dict], add_generation_prompt: bool) -> str:
        try:
            return compiled.render(
                messages=messages, add_generation_prompt=add_generation_prompt, bos_token=bos_token, eos_token=eos_token
            )
        except jinja2.TemplateError as exc:
            raise TemplateError(str(exc)) from exc

    return render
