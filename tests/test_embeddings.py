"""Embedding models: `convert --task embedding`, the runtime's Embedder and POST /v1/embeddings,
checked against transformers' own hidden states on tiny random models (fp32)."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from slmops.convert import convert

TEXTS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog. Hello world, this is a test of a tiny tokenizer.",
    "a",
    "Convert, cache, run, serve",
]


def reference(hf_dir: Path, texts: list[str], pooling: str) -> np.ndarray:
    """transformers' last hidden state of each text alone, pooled and scaled to length 1."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    vectors = []
    for text in texts:
        ids = tokenizer(text, return_tensors="pt").input_ids
        with torch.no_grad():
            hidden = model.model(ids).last_hidden_state[0].numpy()
        vector = hidden.mean(axis=0) if pooling == "mean" else hidden[-1]
        vectors.append(vector / np.linalg.norm(vector))
    return np.array(vectors)


def cosines(a, b) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def qwen2_hf(tiny_model_factory) -> Path:
    return tiny_model_factory("qwen2", tie=True)


@pytest.fixture(scope="module")
def mean_model(tmp_path_factory, qwen2_hf) -> Path:
    """The tiny Qwen2 as an fp32 embedding model (no pooling declared: mean)."""
    output = tmp_path_factory.mktemp("embedding") / "tiny-qwen2-embed"
    convert(qwen2_hf, output, precision="fp32", task="embedding", log_level=0)
    return output


@pytest.fixture(scope="module")
def last_model(tmp_path_factory, tiny_llama) -> tuple[Path, Path]:
    """The tiny Llama with a sentence-transformers Pooling config saying last-token (a Qwen3-Embedding's)."""
    root = tmp_path_factory.mktemp("embedding-last")
    source = root / "llama-st"
    shutil.copytree(tiny_llama, source)
    (source / "modules.json").write_text(
        json.dumps([{"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}])
    )
    (source / "1_Pooling").mkdir()
    (source / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_lasttoken": True}))
    # and, like Qwen3-Embedding's, a tokenizer that ends every text with <|endoftext|>
    tokenizer = json.loads((source / "tokenizer.json").read_text())
    tokenizer["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [{"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}}],
        "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 0}}],
        "special_tokens": {"<|endoftext|>": {"id": "<|endoftext|>", "ids": [0], "tokens": ["<|endoftext|>"]}},
    }
    (source / "tokenizer.json").write_text(json.dumps(tokenizer))
    output = root / "tiny-llama-embed"
    convert(source, output, precision="fp32", task="embedding", log_level=0)
    return source, output


# ---- convert --------------------------------------------------------------------------------


def test_embedding_folder_outputs_hidden_states_and_says_how_to_pool(mean_model, last_model):
    import onnxruntime as ort

    outputs = [item.name for item in ort.InferenceSession(str(mean_model / "model.onnx")).get_outputs()]
    assert "hidden_states" in outputs and "logits" not in outputs
    info = json.loads((mean_model / "inference_model.json").read_text())
    assert info["Task"] == "embedding" and "PromptTemplate" not in info
    assert info["Embedding"] == {"pooling": "mean", "normalize": True, "dimensions": 64, "output": "hidden_states"}
    report = json.loads((mean_model / "conversion.json").read_text())
    assert report["builder_options"]["exclude_lm_head"] == "true"
    assert json.loads((last_model[1] / "inference_model.json").read_text())["Embedding"]["pooling"] == "last"


def test_pooling_flag_overrides_the_declared_pooling_and_needs_the_task(last_model, tmp_path):
    from slmops.errors import UsageError

    report = convert(last_model[0], tmp_path / "mean", precision="fp32", task="embedding", pooling="mean", log_level=0)
    assert json.loads((tmp_path / "mean" / "inference_model.json").read_text())["Embedding"]["pooling"] == "mean"
    assert any("--pooling mean overrides the last pooling" in note for note in report.notes)
    with pytest.raises(UsageError, match="--task embedding"):
        convert(last_model[0], tmp_path / "x", precision="fp32", pooling="last")
    with pytest.raises(UsageError, match="task 'rerank'"):
        convert(last_model[0], tmp_path / "x", precision="fp32", task="rerank")
    assert not (tmp_path / "x").exists()


def test_gguf_header_pooling_type_is_read():
    from slmops.convert.embedding import _declared_pooling
    from slmops.convert.gguf_file import GGUFFile
    from slmops.convert.sources import Source

    header = GGUFFile(path=Path("x.gguf"), metadata={"general.architecture": "qwen3", "qwen3.pooling_type": 3})
    assert _declared_pooling(Source("gguf", Path("x.gguf"), {}, gguf=header))[0] == "last"
    header.metadata["qwen3.pooling_type"] = 1
    assert _declared_pooling(Source("gguf", Path("x.gguf"), {}, gguf=header))[0] == "mean"


def test_gguf_source_converts_to_an_int4_embedding_model(tiny_model_factory, tmp_path):
    from slmops.runtime.embed import load_embedder
    from tests.test_convert_inputs import write_gguf

    source = tiny_model_factory("llama", tie=False)
    gguf = write_gguf(source, tmp_path / "tiny.gguf")
    report = convert(gguf, tmp_path / "gguf-embed", precision="int4", task="embedding", log_level=0)
    assert report.source_kind == "gguf"
    vectors = np.array(load_embedder(tmp_path / "gguf-embed").embed(TEXTS[:2]))
    # int4 weights: close to the fp32 model, not equal
    assert cosines(vectors, reference(source, TEXTS[:2], "mean")).min() > 0.9


def test_lora_adapter_converts_to_an_embedding_model_of_the_merged_weights(tiny_llama, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from slmops.runtime.embed import load_embedder

    base = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    torch.manual_seed(1)
    peft_model = get_peft_model(
        base, LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    peft_model.save_pretrained(tmp_path / "adapter")
    merged = tmp_path / "merged"
    peft_model.merge_and_unload().save_pretrained(merged)
    for item in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_llama / item, merged / item)

    report = convert(
        tmp_path / "adapter", tmp_path / "lora-embed", precision="fp32", base=tiny_llama, task="embedding", log_level=0
    )
    assert report.source_kind == "adapter"
    vectors = load_embedder(tmp_path / "lora-embed").embed(TEXTS)
    assert cosines(vectors, reference(merged, TEXTS, "mean")).min() >= 0.999
    assert cosines(vectors, reference(tiny_llama, TEXTS, "mean")).min() < 0.999  # the adapter changes them


def test_a_backbone_without_lm_head_converts_as_an_embedding_model_only(tiny_model_factory, tmp_path):
    """As embedding checkpoints ship (Qwen3-Embedding's): Qwen3Model keys without `model.`, no LM head."""
    from transformers import AutoModelForCausalLM

    from slmops.errors import UsageError
    from slmops.runtime.embed import load_embedder

    causal = tiny_model_factory("qwen3", tie=False)
    backbone = tmp_path / "backbone"
    AutoModelForCausalLM.from_pretrained(causal).model.save_pretrained(backbone)
    for item in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(causal / item, backbone / item)
    assert json.loads((backbone / "config.json").read_text())["architectures"] == ["Qwen3Model"]
    with pytest.raises(UsageError, match="without its LM head.*--task embedding"):
        convert(backbone, tmp_path / "text", precision="fp32")
    convert(backbone, tmp_path / "embed", precision="fp32", task="embedding", log_level=0)
    vectors = load_embedder(tmp_path / "embed").embed(TEXTS)
    assert cosines(vectors, reference(causal, TEXTS, "mean")).min() >= 0.999


def test_cli_convert_task_embedding(qwen2_hf, tmp_path):
    from click.testing import CliRunner

    from slmops.cli import cli

    output = tmp_path / "cli-embed"
    args = ["convert", str(qwen2_hf), "-o", str(output), "--precision", "fp32", "--task", "embedding"]
    result = CliRunner().invoke(cli, [*args, "--pooling", "last", "--log-level", "0"])
    assert result.exit_code == 0, result.output
    assert json.loads((output / "inference_model.json").read_text())["Embedding"]["pooling"] == "last"


# ---- runtime --------------------------------------------------------------------------------


def test_mean_pooled_vectors_match_transformers(mean_model, qwen2_hf):
    import slmops

    embedder = slmops.load(mean_model)
    vectors = np.array(embedder.embed(TEXTS))  # one padded batch of four lengths
    assert vectors.shape == (4, 64)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    assert cosines(vectors, reference(qwen2_hf, TEXTS, "mean")).min() >= 0.999
    assert cosines(vectors, reference(qwen2_hf, TEXTS, "last")).min() < 0.99  # the pooling matters


def test_last_token_vectors_match_transformers(last_model):
    from slmops.runtime.embed import load_embedder

    source, folder = last_model
    embedder = load_embedder(folder)
    assert all(ids[-1] == 0 for ids in embedder.encode(TEXTS))  # the EOS the tokenizer appends is pooled
    assert embedder.encode(TEXTS) == _token_ids(source, TEXTS)
    vectors = embedder.embed(TEXTS)
    assert cosines(vectors, reference(source, TEXTS, "last")).min() >= 0.999


def test_batch_order_and_one_text(mean_model):
    from slmops.runtime.embed import load_embedder

    embedder = load_embedder(mean_model)
    together = np.array(embedder.embed(TEXTS))
    alone = np.array([embedder.embed(text)[0] for text in TEXTS])
    assert np.allclose(together, alone, atol=1e-5)
    ids = embedder.encode(TEXTS)
    assert np.allclose(embedder.embed(ids), together, atol=1e-6)


def test_dimensions_truncate_and_renormalise(mean_model):
    from slmops.errors import UsageError
    from slmops.runtime.embed import load_embedder

    embedder = load_embedder(mean_model)
    full = np.array(embedder.embed(TEXTS))
    short = np.array(embedder.embed(TEXTS, dimensions=16))
    assert short.shape == (4, 16) and np.allclose(np.linalg.norm(short, axis=1), 1, atol=1e-5)
    assert np.allclose(short, full[:, :16] / np.linalg.norm(full[:, :16], axis=1, keepdims=True), atol=1e-6)
    with pytest.raises(UsageError, match="between 1 and 64"):
        embedder.embed(TEXTS, dimensions=65)
    with pytest.raises(UsageError, match="input 1 is empty"):
        embedder.embed(["x", ""])
    with pytest.raises(UsageError, match="token id 512"):
        embedder.embed([[1, 2], [512]])


def test_chatting_with_an_embedding_model_is_a_clear_error(mean_model):
    from slmops.errors import UsageError
    from slmops.runtime import load

    with pytest.raises(UsageError, match="is an embedding model: it makes vectors, not text"):
        load(mean_model)


def test_model_info_and_cache_ls_show_an_embedding_model(mean_model):
    from click.testing import CliRunner

    from slmops.cli import cli

    runner = CliRunner()
    assert runner.invoke(cli, ["cache", "add", str(mean_model), "--name", "tiny-embed"]).exit_code == 0
    listing = runner.invoke(cli, ["cache", "ls"])
    assert listing.exit_code == 0 and "tiny-embed" in listing.output
    info = runner.invoke(cli, ["model", "info", "tiny-embed"])
    assert info.exit_code == 0 and "embedding (mean pooling, 64 dimensions" in info.output
    run = runner.invoke(cli, ["model", "run", "tiny-embed", "-p", "hi"])
    assert run.exit_code != 0 and "is an embedding model" in str(run.exception)


# ---- server ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def service(mean_model, tiny_onnx):
    from fastapi.testclient import TestClient

    from slmops.server.app import create_app
    from slmops.server.config import ServerConfig

    config = ServerConfig(load_wait=60, parallel=1, threads=1, batching=False)
    # named at start-up like `slmops serve MODEL...`: the embedding model loads on its first request
    with TestClient(create_app(config, [str(tiny_onnx), str(mean_model)])) as client:
        yield client


@pytest.fixture(scope="module")
def oai(service):
    import openai

    return openai.OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=service, max_retries=0)


def test_openai_client_gets_the_runtime_vectors_as_floats_and_base64(oai, mean_model, qwen2_hf):
    expected = reference(qwen2_hf, TEXTS, "mean")
    as_floats = oai.embeddings.create(model="tiny-qwen2-embed", input=TEXTS, encoding_format="float")
    assert [item.index for item in as_floats.data] == [0, 1, 2, 3]
    assert cosines([item.embedding for item in as_floats.data], expected).min() >= 0.999
    as_base64 = oai.embeddings.create(model="tiny-qwen2-embed", input=TEXTS)  # the client asks for base64
    assert np.allclose([item.embedding for item in as_base64.data], [item.embedding for item in as_floats.data])
    assert (
        as_floats.usage.prompt_tokens
        == as_floats.usage.total_tokens
        == sum(len(ids) for ids in _token_ids(qwen2_hf, TEXTS))
    )
    assert as_floats.model == "tiny-qwen2-embed"


def test_dimensions_and_token_id_inputs(oai, qwen2_hf):
    short = oai.embeddings.create(model="tiny-qwen2-embed", input="Hello world", dimensions=8)
    vector = np.array(short.data[0].embedding)
    assert vector.shape == (8,) and abs(np.linalg.norm(vector) - 1) < 1e-5
    ids = _token_ids(qwen2_hf, TEXTS[:2])
    one = oai.embeddings.create(model="tiny-qwen2-embed", input=ids[0], encoding_format="float")
    many = oai.embeddings.create(model="tiny-qwen2-embed", input=ids, encoding_format="float")
    text = oai.embeddings.create(model="tiny-qwen2-embed", input=TEXTS[:2], encoding_format="float")
    assert len(one.data) == 1 and len(many.data) == 2
    assert np.allclose(one.data[0].embedding, text.data[0].embedding, atol=1e-6)
    assert np.allclose([d.embedding for d in many.data], [d.embedding for d in text.data], atol=1e-6)
    assert many.usage.prompt_tokens == len(ids[0]) + len(ids[1])


def test_exactly_openais_fields_are_accepted_and_an_unknown_one_is_refused(oai):
    import openai

    every = oai.embeddings.create(
        model="tiny-qwen2-embed", input=["Hello"], encoding_format="float", dimensions=8, user="someone"
    )
    assert len(every.data[0].embedding) == 8
    with pytest.raises(openai.BadRequestError) as caught:
        oai.embeddings.create(model="tiny-qwen2-embed", input="Hello", extra_body={"truncate": True})
    assert caught.value.body["param"] == "truncate" and caught.value.body["code"] == "unsupported_parameter"


def test_base64_is_little_endian_float32(service):
    body = {"model": "tiny-qwen2-embed", "input": ["Hello world"], "encoding_format": "base64"}
    encoded = service.post("/v1/embeddings", json=body).json()["data"][0]["embedding"]
    floats = service.post("/v1/embeddings", json=body | {"encoding_format": "float"}).json()["data"][0]["embedding"]
    assert np.array_equal(np.frombuffer(base64.b64decode(encoded), "<f4"), np.array(floats, np.float32))


@pytest.mark.parametrize(
    ("body", "status", "param", "words"),
    [
        ({"input": "x", "dimensions": 65}, 400, "dimensions", "at most 64"),
        ({"input": "x", "dimensions": 0}, 400, "dimensions", "greater than or equal to 1"),
        ({"input": []}, 400, "input", ""),
        ({"input": ""}, 400, "input", ""),
        ({"input": [[1, 2], [9999]]}, 400, "input", "token id 9999"),
        ({"input": "x", "encoding_format": "int8"}, 400, "encoding_format", ""),
        ({"input": "x", "model": "nope"}, 404, "model", ""),
        ({"input": "x", "model": "model"}, 400, "model", "is a text model, not an embedding model"),
        ({"input": "x", "normalize": False}, 400, "normalize", "Unsupported parameter normalize"),
        ({"input": "x", "pooling": "cls"}, 400, "pooling", "Unsupported parameter pooling"),
    ],
)
def test_bad_requests_are_clear_400s(service, body, status, param, words):
    answer = service.post("/v1/embeddings", json={"model": "tiny-qwen2-embed", **body})
    error = answer.json()["error"]
    assert answer.status_code == status, error
    assert error["param"] == param and words in error["message"]


def test_an_embedding_model_named_at_start_up_leaves_the_service_ready(service):
    import time

    for _ in range(600):  # the text model loads in the background
        health = service.get("/health")
        if health.status_code == 200:
            break
        time.sleep(0.1)
    assert health.json()["status"] == "ok", health.json()


def test_asking_an_embedding_model_to_chat_is_a_400(service):
    body = {"model": "tiny-qwen2-embed", "messages": [{"role": "user", "content": "hi"}]}
    answer = service.post("/v1/chat/completions", json=body)
    assert answer.status_code == 400
    assert "is an embedding model" in answer.json()["error"]["message"]
    completion = service.post("/v1/completions", json={"model": "tiny-qwen2-embed", "prompt": "hi"})
    assert completion.status_code == 400


def _token_ids(hf_dir: Path, texts: list[str]) -> list[list[int]]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    return [tokenizer(text).input_ids for text in texts]
