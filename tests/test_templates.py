"""PromptTemplate rendering: exact prompt strings for multi-turn chats."""

from __future__ import annotations

import json

import jinja2
import pytest

from slmops.errors import UsageError
from slmops.modelfolder.inference_model import InferenceModel, Template
from slmops.modelfolder.templates import KNOWN_TEMPLATES, detect_family, template_for
from tests.tiny import CHATML_TEMPLATE

HISTORY = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi!"},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "Capital of France?"},
]

# As users write them in inference_model.json (the ChatML one is the documented example).
CHATML = {
    "system": "<|im_start|>system\n{Content}<|im_end|>",
    "user": "<|im_start|>user\n{Content}<|im_end|>",
    "assistant": "<|im_start|>assistant\n{Content}<|im_end|>",
    "prompt": "<|im_start|>user\n{Content}<|im_end|>\n<|im_start|>assistant",
}
LLAMA3 = {
    "system": "<|start_header_id|>system<|end_header_id|>\n\n{Content}<|eot_id|>",
    "user": "<|start_header_id|>user<|end_header_id|>\n\n{Content}<|eot_id|>",
    "assistant": "<|start_header_id|>assistant<|end_header_id|>\n\n{Content}<|eot_id|>",
    "prompt": "<|start_header_id|>user<|end_header_id|>\n\n{Content}<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n",
}
GEMMA = {
    "user": "<start_of_turn>user\n{Content}<end_of_turn>\n",
    "assistant": "<start_of_turn>model\n{Content}<end_of_turn>\n",
    "prompt": "<start_of_turn>user\n{Content}<end_of_turn>\n<start_of_turn>model\n",
}

# The same formats as Jinja chat templates, the way model tokenizers ship them.
LLAMA3_JINJA = (
    "{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + m['content']"
    " + '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
GEMMA_JINJA = (
    "{% set ns = namespace(system='') %}{% for m in messages %}{% if m['role'] == 'system' %}"
    "{% set ns.system = m['content'] + '\\n\\n' %}{% else %}{% set role = 'model' if m['role'] == 'assistant'"
    " else 'user' %}{{ '<start_of_turn>' + role + '\\n' + (ns.system if role == 'user' else '') + m['content']"
    " + '<end_of_turn>\\n' }}{% if role == 'user' %}{% set ns.system = '' %}{% endif %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)


def model(template: dict | None) -> InferenceModel:
    return InferenceModel.model_validate({"Name": "m", **({"PromptTemplate": template} if template else {})})


def jinja(template: str, messages: list[dict], add_generation_prompt: bool = True) -> str:
    return (
        jinja2.Environment()
        .from_string(template)
        .render(messages=messages, add_generation_prompt=add_generation_prompt)
    )


def test_chatml_documented_example_multi_turn():
    assert model(CHATML).render(HISTORY) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nHi!<|im_end|>\n"
        "<|im_start|>assistant\nHello.<|im_end|>\n"
        "<|im_start|>user\nCapital of France?<|im_end|>\n"
        "<|im_start|>assistant"
    )


def test_llama3_multi_turn():
    assert model(LLAMA3).render(HISTORY) == (
        "<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHello.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nCapital of France?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def test_gemma_multi_turn_puts_the_system_text_in_the_first_user_turn():
    assert model(GEMMA).render(HISTORY) == (
        "<start_of_turn>user\nBe brief.\n\nHi!<end_of_turn>\n"
        "<start_of_turn>model\nHello.<end_of_turn>\n"
        "<start_of_turn>user\nCapital of France?<end_of_turn>\n"
        "<start_of_turn>model\n"
    )


@pytest.mark.parametrize(
    "family, chat_template", [("chatml", CHATML_TEMPLATE), ("llama3", LLAMA3_JINJA), ("gemma", GEMMA_JINJA)]
)
@pytest.mark.parametrize("turns", [1, 2, 4])
def test_built_in_templates_match_the_jinja_chat_templates(family, chat_template, turns):
    messages = HISTORY[-turns:] if turns < 4 else HISTORY
    template = KNOWN_TEMPLATES[family]
    assert template.render(messages) == jinja(chat_template, messages)
    assert template.render(messages, add_generation_prompt=False) == jinja(chat_template, messages, False)


def test_separator_is_inferred_from_prompt_or_given_explicitly():
    assert Template(**CHATML).inferred_separator() == "\n"
    assert Template(**LLAMA3).inferred_separator() == ""
    assert Template(**GEMMA).inferred_separator() == ""
    assert Template(**{**CHATML, "separator": "\n\n"}).render(HISTORY[1:3], add_generation_prompt=False) == (
        "<|im_start|>user\nHi!<|im_end|>\n\n<|im_start|>assistant\nHello.<|im_end|>\n\n"
    )


def test_tool_turns_and_the_tool_placeholder():
    template = {**CHATML, "tool": "<|im_start|>tool\n{Tool}<|im_end|>"}
    messages = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": '{"name": "weather"}'},
        {"role": "tool", "content": "sunny"},
    ]
    assert model(template).render(messages) == (
        "<|im_start|>user\nWeather?<|im_end|>\n"
        '<|im_start|>assistant\n{"name": "weather"}<|im_end|>\n'
        "<|im_start|>tool\nsunny<|im_end|>\n"
        "<|im_start|>assistant\n"  # a turn that is not the user's ends with the assistant's header
    )
    # Without a tool template, a tool result is shown as a user turn.
    assert model(CHATML).render(messages[2:], add_generation_prompt=False) == "<|im_start|>user\nsunny<|im_end|>\n"


def test_history_without_user_template_and_foundry_prompt_only_style():
    foundry_llama = {
        "assistant": "{Content}",
        "prompt": "<|start_header_id|>user<|end_header_id|>\n\n{Content}"
        "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
    }
    assert model(foundry_llama).render(HISTORY[1:]) == (
        "<|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
        "Hello."
        "<|start_header_id|>user<|end_header_id|>\n\nCapital of France?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def test_message_text_is_never_read_as_a_placeholder():
    text = "{Content} {Tool} {0} {{x}} \\n ünïcødé 😀"
    assert model(CHATML).render([{"role": "user", "content": text}]) == (
        f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant"
    )


def test_message_forms_and_errors():
    parts = [
        {"role": "developer", "content": [{"type": "text", "text": "Be "}, {"type": "text", "text": "brief."}]},
        {"role": "user", "content": None},
    ]
    assert model(CHATML).render(parts) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n<|im_end|>\n<|im_start|>assistant"
    )
    assert model(GEMMA).render([{"role": "system", "content": "Only a system text."}], False) == (
        "<start_of_turn>user\nOnly a system text.<end_of_turn>\n"
    )
    with pytest.raises(UsageError, match="Unknown message role 'robot'"):
        model(CHATML).render([{"role": "robot", "content": "x"}])
    with pytest.raises(UsageError, match="must be text"):
        model(CHATML).render([{"role": "user", "content": 42}])


IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
AUDIO = {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}


@pytest.mark.parametrize(
    "content, text",
    [
        ("plain", "plain"),
        (None, ""),
        ([], ""),
        ([{"type": "text", "text": "Hi "}, {"text": "there"}], "Hi there"),  # a part with no type is text
    ],
)
def test_one_content_rule_reads_text_the_same_on_both_paths(content, text):
    from slmops.modelfolder.messages import normalize

    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": content}]
    assert normalize(messages)[1] == {"role": "user", "content": text}
    assert model(CHATML).render(messages) == model(CHATML).render([messages[0], {"role": "user", "content": text}])


@pytest.mark.parametrize(
    "content, error",
    [
        (
            [{"type": "text", "text": "Look:"}, IMAGE],
            r"messages\[1\] content has a part of type 'image_url'; .*text only",
        ),
        ([AUDIO], r"messages\[1\] content has a part of type 'input_audio'"),
        ([{"type": "text", "text": 7}], r"messages\[1\] content has a part with no text"),
        (["bare string part"], r"messages\[1\] content has a part with no text"),
        ({"text": "a dict, not a list"}, r"messages\[1\] content must be text .* got dict"),
    ],
)
def test_one_content_rule_refuses_what_is_not_text_naming_the_message(content, error):
    """The HTTP API turns these UsageErrors into 400s: a request is never half read."""
    from slmops.modelfolder.messages import normalize

    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": content}]
    for path in (normalize, model(CHATML).render):
        with pytest.raises(UsageError, match=error) as raised:
            path(messages)
        assert "\n" not in str(raised.value)


def test_no_template_means_the_tokenizer_template_is_used():
    for template in (None, {"assistant": "{Content}"}, {"system": "<s>{Content}</s>"}):
        info = model(template)
        assert info.has_template is False and info.render(HISTORY) is None
    assert model(CHATML).has_template and model({"user": "{Content}"}).has_template


def test_generation_defaults():
    info = InferenceModel.model_validate(
        {
            "Name": "m",
            "ModelConfig": {
                "max_length": 2048,
                "temperature": 0.7,
                "top_p": 0.9,
                "top_k": 40,
                "repetition_penalty": 1.1,
                "vendor_key": "kept",
            },
        }
    )
    assert info.generation_defaults() == {
        "max_length": 2048,
        "temperature": 0.7,
        "top_p": 0.9,
        "top_k": 40,
        "repetition_penalty": 1.1,
    }
    assert model(CHATML).generation_defaults() == {}


@pytest.mark.parametrize(
    "family, chat_template, tokens",
    [
        ("chatml", CHATML_TEMPLATE, []),
        ("llama3", LLAMA3_JINJA, []),
        ("gemma", GEMMA_JINJA, []),
        ("phi3", None, ["<|user|>", "<|assistant|>", "<|end|>", "<|system|>"]),
        (None, None, ["<s>", "</s>"]),
    ],
)
def test_chat_format_detection_for_cache_add(tmp_path, family, chat_template, tokens):
    if chat_template:
        (tmp_path / "chat_template.jinja").write_text(chat_template)
    (tmp_path / "tokenizer.json").write_text(json.dumps({"added_tokens": [{"content": t} for t in tokens]}))
    assert detect_family(tmp_path) == family
    derived = template_for(tmp_path)
    if family is None:
        assert derived is None
    elif chat_template:  # whichever derives it (the converter or the built-in table), prompts must match
        assert derived.render(HISTORY) == jinja(chat_template, HISTORY)
    else:
        assert derived == KNOWN_TEMPLATES[family]
