"""Raw completions open as the Hugging Face tokenizer opens text: with the BOS its post-processor adds.

onnxruntime-genai encodes text without it, and a base Gemma without its BOS answers only noise.
"""

import json
import shutil

import pytest

from slmops.modelfolder.prompt_template import text_prefix_ids
from slmops.runtime import load
from tests import in_process

BOS_TEMPLATE = {
    "type": "TemplateProcessing",
    "single": [{"SpecialToken": {"id": "<|im_start|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
    "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
    "special_tokens": {"<|im_start|>": {"id": "<|im_start|>", "ids": [1], "tokens": ["<|im_start|>"]}},
}


def _tokenizer_folder(tmp_path, post_processor, config=None, vocab=None):
    tokenizer = {"added_tokens": [], "post_processor": post_processor, "model": {"vocab": vocab or {"a": 0}}}
    (tmp_path / "tokenizer.json").write_text(json.dumps(tokenizer), encoding="utf-8")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config or {}), encoding="utf-8")
    return tmp_path


@pytest.mark.parametrize(
    "post_processor, config, expected",
    [
        (BOS_TEMPLATE, {}, [1]),
        ({"type": "Sequence", "processors": [{"type": "ByteLevel"}, BOS_TEMPLATE]}, {}, [1]),  # Llama 3's
        (BOS_TEMPLATE, {"add_bos_token": False}, []),  # the config turns it off, as in transformers
        ({**BOS_TEMPLATE, "single": BOS_TEMPLATE["single"][1:]}, {}, []),  # SmolLM2's: no BOS
        ({"type": "ByteLevel"}, {}, []),
        (None, {}, []),
    ],
)
def test_text_prefix_ids_follow_the_post_processor(tmp_path, post_processor, config, expected):
    assert text_prefix_ids(_tokenizer_folder(tmp_path, post_processor, config)) == expected


def test_a_vocabulary_entry_named_post_processor_is_not_the_post_processor(tmp_path):
    folder = _tokenizer_folder(tmp_path, BOS_TEMPLATE, vocab={"post_processor": 7})
    text = (folder / "tokenizer.json").read_text()
    # the vocabulary first, as a hand-written file may order it
    reordered = json.dumps({"model": json.loads(text)["model"], "post_processor": BOS_TEMPLATE})
    (folder / "tokenizer.json").write_text(reordered, encoding="utf-8")
    assert text_prefix_ids(folder) == [1]


def test_a_raw_completion_gets_the_bos_its_tokenizer_adds(tiny_onnx, tmp_path):
    from fastapi.testclient import TestClient

    from slmops.server import ServerConfig, create_app

    folder = shutil.copytree(tiny_onnx, tmp_path / "tiny-bos")
    tokenizer = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    (folder / "tokenizer.json").write_text(json.dumps({**tokenizer, "post_processor": BOS_TEMPLATE}), "utf-8")
    model = load(folder, threads=1)
    text_ids = model.encode("Hello world")
    assert model.completion_ids("Hello world") == [1, *text_ids]
    assert model.completion_ids("<|im_start|>Hello world") == [1, *text_ids]  # never twice
    assert model.generate("Hello world", max_tokens=2).prompt_tokens == len(text_ids) + 1
    assert model.generate(text_ids, max_tokens=2).prompt_tokens == len(text_ids)  # token ids are taken as given

    with TestClient(create_app(ServerConfig(load_wait=60, parallel=1, threads=1), [str(folder)])) as client:
        in_process.wait_healthy(client)
        body = {"model": "tiny-bos", "prompt": "Hello world", "max_tokens": 2}
        answer = client.post("/v1/completions", json=body)
        assert answer.status_code == 200 and answer.json()["usage"]["prompt_tokens"] == len(text_ids) + 1
