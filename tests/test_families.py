"""One contract for every architecture family users bring, on tiny random models.

For each family of tests/families.py and both config.json shapes (as transformers 5
writes it, and as transformers 4 wrote the checkpoints on the hub): the HF folder
converts at fp32; slmops' runtime decodes the same 16 greedy tokens as torch; the chat
prompt slmops renders is the text and the token ids of
``tokenizer.apply_chat_template(..., add_generation_prompt=True)``; and ``serve``
answers a chat request for the model. The families whose build slmops adjusts for the
builder (convert/builder_fixes.py) also predict like torch at int8, and what it cannot
adjust stops with a one-line error.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.families import FAMILIES, STYLES, Family

STEPS = 16
USER = [{"role": "user", "content": "Hello world, this is a test of a tiny model."}]
HISTORY = [
    {"role": "user", "content": "Příliš žluťoučký kůň?"},
    {"role": "assistant", "content": "你好，世界。 😀"},
    {"role": "user", "content": "def main(): return 42"},
]
SYSTEM = [{"role": "system", "content": "Be brief."}]


@dataclass
class Converted:
    """A family's HF folder, its fp32 conversion, and torch's answer to the chat prompt."""

    family: Family
    source: Path
    output: Path
    prompt_ids: list[int]
    expected: list[int]  # torch's first STEPS greedy tokens after prompt_ids


def chats(family: Family) -> list[list[dict]]:
    """The conversations the template must render alike: a single turn and a history."""
    history = SYSTEM + HISTORY if family.accepts_system else HISTORY
    return [USER, history]


def torch_greedy(folder: Path, prompt_ids: list[int]) -> list[int]:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ids = torch.tensor([prompt_ids])
    with torch.no_grad():
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),  # a prompt token equal to pad_token_id is still a token
            max_new_tokens=STEPS,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )
    return out[0, len(prompt_ids) :].tolist()


def hf_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


@pytest.fixture(scope="module", params=[(name, style) for name in FAMILIES for style in STYLES], ids="-".join)
def converted(request, tmp_path_factory) -> Converted:
    from slmops.convert import convert

    name, style = request.param
    family = FAMILIES[name]
    root = tmp_path_factory.mktemp(f"{name}-{style}")
    source = family.build(root / "hf", style)
    convert(source, root / "onnx", precision="fp32", log_level=0)
    prompt_ids = hf_tokenizer(source).apply_chat_template(
        chats(family)[-1], add_generation_prompt=True, return_dict=False
    )
    return Converted(family, source, root / "onnx", prompt_ids, torch_greedy(source, prompt_ids))


def test_greedy_tokens_match_torch(converted):
    import slmops

    model = slmops.load(converted.output)
    responses = model.stream_generate(converted.prompt_ids, max_tokens=STEPS, temperature=0, repetition_penalty=1.0)
    tokens = [response.token for response in responses]
    assert tokens == converted.expected


@pytest.mark.parametrize("name", FAMILIES)
def test_a_transformers_4_config_is_read_as_the_same_model(name, tmp_path):
    family = FAMILIES[name]
    folders = {style: family.build(tmp_path / style, style) for style in STYLES}
    written = json.loads((folders["tf4"] / "config.json").read_text(encoding="utf-8"))
    assert "rope_parameters" not in written and "rope_theta" in written
    prompt_ids = hf_tokenizer(folders["tf5"]).apply_chat_template(
        chats(family)[-1], add_generation_prompt=True, return_dict=False
    )
    answers = {style: torch_greedy(folder, prompt_ids) for style, folder in folders.items()}
    assert answers["tf4"] == answers["tf5"]
    # The contract below compares tokens, so the answer must be worth comparing: varied, never cut short.
    assert len(set(answers["tf5"])) >= 8
    stops = hf_tokenizer(folders["tf5"]).convert_tokens_to_ids([family.tokens.eos, *family.tokens.stops])
    assert not set(stops) & set(answers["tf5"])


def test_chat_prompt_matches_apply_chat_template(converted):
    import slmops

    model = slmops.load(converted.output)
    tokenizer = hf_tokenizer(converted.source)
    for messages in chats(converted.family):
        assert model.render(messages) == tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False
        )
        assert model.prompt_ids(messages) == tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_dict=False
        )


def test_a_raw_text_encodes_as_transformers_encodes_it(converted):
    """A completion's prompt starts with the BOS the tokenizer puts before a text (Gemma, Llama 3,
    Mistral), which onnxruntime-genai's encoder leaves out; models without one get none."""
    import slmops

    model = slmops.load(converted.output)
    text = "The capital of France is"
    assert model.completion_ids(text) == hf_tokenizer(converted.source)(text)["input_ids"]


def test_serve_answers_a_chat(converted):
    from fastapi.testclient import TestClient

    import slmops
    from slmops.cache import store
    from slmops.server import ServerConfig, create_app

    name = f"{converted.family.name}-test"
    store.add(converted.output, name=name, link=True)
    body = {"model": name, "messages": chats(converted.family)[-1], "max_tokens": STEPS, "temperature": 0}
    with TestClient(create_app(ServerConfig(parallel=1, threads=1))) as client:
        answer = client.post("/v1/chat/completions", json={**body, "repetition_penalty": 1.0})
    assert answer.status_code == 200, answer.text
    reply = answer.json()
    message = reply["choices"][0]["message"]
    assert message["role"] == "assistant" and reply["choices"][0]["finish_reason"] == "length"
    assert reply["usage"]["prompt_tokens"] == len(converted.prompt_ids)
    assert reply["usage"]["completion_tokens"] == STEPS
    # The library's answer to the same chat: the server adds nothing to the prompt or the text.
    library = slmops.load(converted.output).chat(
        body["messages"], max_tokens=STEPS, temperature=0, repetition_penalty=1.0
    )
    assert message["content"] == library.text


def test_gemma3_with_scaled_global_rope_is_refused_in_one_line(tmp_path):
    # Gemma-3-4B's text layers scale the global rope; the builder would scale the local one too.
    from slmops.convert import convert
    from slmops.errors import UnsupportedArchitecture

    base = FAMILIES["gemma3"]
    rope = {**base.config["rope_parameters"], "full_attention": {"rope_type": "linear", "factor": 8.0}}
    source = dataclasses.replace(base, config={**base.config, "rope_parameters": rope}).build(tmp_path / "hf")
    with pytest.raises(
        UnsupportedArchitecture, match="^Gemma 3 with 'linear' rope scaling on its global layers"
    ) as error:
        convert(source, tmp_path / "out", precision="fp32", log_level=0)
    assert "\n" not in str(error.value)
    assert [path.name for path in tmp_path.iterdir()] == ["hf"]


def test_a_config_the_builder_cannot_read_is_a_one_line_error(tiny_llama, tmp_path, monkeypatch):
    import onnxruntime_genai.models.builder as builder

    from slmops.convert import convert
    from slmops.errors import ConversionError

    def unreadable(*args, **kwargs):
        raise KeyError("rope_type")

    monkeypatch.setattr(builder, "create_model", unreadable)
    with pytest.raises(ConversionError, match="cannot read this model's config \\(KeyError: 'rope_type'\\)"):
        convert(tiny_llama, tmp_path / "out", precision="fp32", log_level=0)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["smollm3", "gemma3", "phi3", "phi4", "olmo"])
def test_families_slmops_fixes_for_the_builder_also_quantize(name, tmp_path):
    # The fixes edit the graph the builder quantizes in int8/int4: the quantized model must still
    # predict like torch. Tiny random weights make int4 too noisy to judge, so int8.
    import numpy as np
    import onnxruntime_genai as og
    import torch
    from transformers import AutoModelForCausalLM

    from slmops.convert import convert

    family = FAMILIES[name]
    source = family.build(tmp_path / "hf")
    ids = hf_tokenizer(source).apply_chat_template(chats(family)[-1], add_generation_prompt=True, return_dict=False)
    convert(source, tmp_path / "int8", precision="int8", log_level=0)
    with torch.no_grad():
        expected = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)(torch.tensor([ids])).logits[0]
    model = og.Model(str(tmp_path / "int8"))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + 1)
    generator = og.Generator(model, params)
    generator.append_tokens(ids)
    logits = np.array(generator.get_output("logits"))[0]
    assert (logits.argmax(-1) == expected.numpy().argmax(-1)).mean() >= 0.85
    assert np.corrcoef(logits.ravel(), expected.numpy().ravel())[0, 1] > 0.99
