"""PromptTemplate derived from the chat templates small models ship."""

from __future__ import annotations

import pytest

from slmops.modelfolder.inference_model import InferenceModel
from slmops.modelfolder.prompt_template import TemplateError, derive

CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
GEMMA = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)
PHI3 = (
    "{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)

CASES = {
    "chatml": (
        CHATML,
        "<|im_start|>",
        "<|im_end|>",
        {
            "system": "<|im_start|>system\n{Content}<|im_end|>",
            "user": "<|im_start|>user\n{Content}<|im_end|>",
            "assistant": "<|im_start|>assistant\n{Content}<|im_end|>",
            "prompt": "<|im_start|>user\n{Content}<|im_end|>\n<|im_start|>assistant\n",
        },
    ),
    "llama3": (
        LLAMA3,
        "<|begin_of_text|>",
        "<|eot_id|>",
        {
            "system": "<|start_header_id|>system<|end_header_id|>\n\n{Content}<|eot_id|>",
            "user": "<|start_header_id|>user<|end_header_id|>\n\n{Content}<|eot_id|>",
            "assistant": "<|start_header_id|>assistant<|end_header_id|>\n\n{Content}<|eot_id|>",
            "prompt": "<|start_header_id|>user<|end_header_id|>\n\n{Content}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
            "bos": "<|begin_of_text|>",
        },
    ),
    "gemma": (
        GEMMA,
        "<bos>",
        "<eos>",
        {
            "user": "<start_of_turn>user\n{Content}<end_of_turn>",
            "assistant": "<start_of_turn>model\n{Content}<end_of_turn>",
            "prompt": "<start_of_turn>user\n{Content}<end_of_turn>\n<start_of_turn>model\n",
            "bos": "<bos>",
        },
    ),
    "phi3": (
        PHI3,
        "<s>",
        "<|endoftext|>",
        {
            "system": "<|system|>\n{Content}<|end|>",
            "user": "<|user|>\n{Content}<|end|>",
            "assistant": "<|assistant|>\n{Content}<|end|>",
            "prompt": "<|user|>\n{Content}<|end|>\n<|assistant|>\n",
        },
    ),
}


@pytest.mark.parametrize("name", CASES)
def test_derived_pieces(name):
    chat_template, bos, eos, expected = CASES[name]
    template = derive(chat_template, bos, eos)
    assert template.model_dump(exclude_none=True, exclude={"separator"}) == expected


@pytest.mark.parametrize("name", CASES)
def test_rendering_a_conversation_matches_the_chat_template(name):
    import jinja2

    chat_template, bos, eos, _ = CASES[name]
    template = derive(chat_template, bos, eos)
    messages = [
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "What is 2+2?"},
    ]
    if name != "gemma":
        messages.insert(0, {"role": "system", "content": "Be brief."})
    expected = (
        jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
        .from_string(chat_template)
        .render(
            messages=messages, add_generation_prompt=True, bos_token=bos, eos_token=eos, raise_exception=lambda m: 1 / 0
        )
    )
    # The BOS the template writes stays: onnxruntime-genai's tokenizer adds none.
    assert InferenceModel(Name="m", PromptTemplate=template).render(messages) == expected


def test_mission_example_is_what_chatml_gives_up_to_the_final_newline():
    # MISSION.md's inference_model.json ends the prompt at "assistant"; slmops keeps the newline
    # the model was trained with, and every other piece is identical.
    template = derive(CHATML, "<|im_start|>", "<|im_end|>")
    assert template.prompt.rstrip("\n") == "<|im_start|>user\n{Content}<|im_end|>\n<|im_start|>assistant"
    assert template.user == "<|im_start|>user\n{Content}<|im_end|>"


def test_template_without_user_turns_is_refused():
    with pytest.raises(TemplateError):
        derive("{% for m in messages %}{{ m['role'] }}{% endfor %}")


def test_invalid_jinja_is_refused():
    with pytest.raises(TemplateError, match="not valid Jinja"):
        derive("{% for m in messages %}")
