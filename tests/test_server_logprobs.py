"""logprobs, echo with max_tokens 0, every prompt form, n choices and the parameter policy, through
the official openai client on the tiny fp32 model, in-process (batched, and with batching off).

The log-probabilities are checked against ``slmops eval``'s own (:class:`OnnxLogits` on the
same tokens): the model is fp32 and the numbers come from the same ONNX graph, so they agree
to float rounding whatever the CPU.
"""

import json

import numpy as np
import openai
import pytest
from fastapi.testclient import TestClient

import slmops
from slmops.cache.resolver import resolve
from slmops.evaluate.logits import OnnxLogits
from slmops.runtime import batched
from slmops.server.choices import derived_seed
from slmops.server.logprobs import FLOOR
from tests import in_process

MODEL = "model"  # the tiny ONNX folder's name
HI = [{"role": "user", "content": "Hello world, the quick brown fox"}]
TOL = 2e-4


def serve(folder, **config) -> TestClient:
    return in_process.serve(folder, parallel=4, **config)


@pytest.fixture(scope="module")
def client(tiny_onnx):
    client = serve(tiny_onnx)
    yield client
    client.__exit__(None, None, None)


@pytest.fixture(scope="module")
def unbatched(tiny_onnx):
    client = serve(tiny_onnx, batching=False)
    yield client
    client.__exit__(None, None, None)


@pytest.fixture(scope="module")
def oai(client):
    return openai.OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=client, max_retries=0)


@pytest.fixture(scope="module")
def model(tiny_onnx):
    return slmops.load(tiny_onnx, threads=1)


@pytest.fixture(scope="module")
def scorer(tiny_onnx):
    """What `slmops eval` scores a text with."""
    return OnnxLogits(resolve(str(tiny_onnx)), threads=1)


def eval_logprobs(scorer, ids) -> np.ndarray:
    """Each of ids[1:]'s log-probability, as `slmops eval` computes it."""
    table = scorer.scored(0, np.asarray(ids), 0)
    return np.array([table[index, token] for index, token in enumerate(ids[1:])])


def client_for(http) -> openai.OpenAI:
    return openai.OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=http, max_retries=0)


# ---- logprobs -------------------------------------------------------------------


@pytest.mark.parametrize("path", ["batched", "unbatched"])
def test_answer_logprobs_are_the_models_own_on_both_paths(path, request, model, scorer):
    oai = client_for(request.getfixturevalue("client" if path == "batched" else "unbatched"))
    prompt = model.encode("Hello world, the quick brown fox")
    answer = oai.completions.create(model=MODEL, prompt=prompt, max_tokens=6, temperature=0, logprobs=3)
    choice = answer.choices[0]
    expected = model.generate(prompt, max_tokens=6, temperature=0).tokens
    # The greedy answer's tokens, as the model's own generator picks them (fp32, clear margins).
    assert choice.logprobs.tokens == [_text(model, token) for token in expected]
    found = np.array(choice.logprobs.token_logprobs)
    assert np.allclose(found, eval_logprobs(scorer, prompt + expected)[len(prompt) - 1 :], atol=TOL)
    for token, logprob, top in zip(choice.logprobs.tokens, found, choice.logprobs.top_logprobs):
        assert len(top) == 3 and max(top, key=top.get) == token  # greedy: the chosen one is the likeliest
        assert top[token] == pytest.approx(logprob)
    offsets = choice.logprobs.text_offset
    assert offsets[0] == 0 and offsets == list(np.cumsum([0] + [len(t) for t in choice.logprobs.tokens[:-1]]))


def _text(model, token: int) -> str:
    from slmops.server.logprobs import texts_for

    return texts_for(model).of(token)[0]


def test_chat_logprobs_in_openais_shape_streamed_or_not(oai):
    answer = oai.chat.completions.create(
        model=MODEL, messages=HI, max_tokens=8, temperature=0, logprobs=True, top_logprobs=4
    )
    content = answer.choices[0].logprobs.content
    assert len(content) == answer.usage.completion_tokens or answer.choices[0].finish_reason == "stop"
    joined = b"".join(bytes(entry.bytes) for entry in content).decode("utf-8", "replace")
    assert answer.choices[0].message.content in joined  # the text is the tokens' bytes (whitespace first stripped)
    for entry in content:
        assert len(entry.top_logprobs) == 4 and entry.top_logprobs[0].token == entry.token
        assert entry.logprob == pytest.approx(entry.top_logprobs[0].logprob) and entry.logprob <= 0
    chunks = list(
        oai.chat.completions.create(
            model=MODEL, messages=HI, max_tokens=8, temperature=0, logprobs=True, top_logprobs=4, stream=True
        )
    )
    streamed = [
        entry for chunk in chunks for choice in chunk.choices if choice.logprobs for entry in choice.logprobs.content
    ]
    assert [entry.model_dump() for entry in streamed] == [entry.model_dump() for entry in content]
    plain = oai.chat.completions.create(model=MODEL, messages=HI, max_tokens=8, temperature=0)
    assert plain.choices[0].logprobs is None and plain.choices[0].message.content == answer.choices[0].message.content


def test_streamed_completion_logprobs_join_to_the_whole_answers(oai):
    ask = {"model": MODEL, "prompt": "Hello world", "max_tokens": 6, "temperature": 0, "logprobs": 2, "echo": True}
    whole = oai.completions.create(**ask).choices[0]
    chunks = list(oai.completions.create(**ask, stream=True))
    parts = [choice.logprobs for chunk in chunks for choice in chunk.choices if choice.logprobs]
    joined = {
        key: sum((getattr(part, key) for part in parts), []) for key in ("tokens", "token_logprobs", "text_offset")
    }
    assert joined["tokens"] == whole.logprobs.tokens and joined["text_offset"] == whole.logprobs.text_offset
    assert joined["token_logprobs"] == whole.logprobs.token_logprobs
    assert "".join(choice.text for chunk in chunks for choice in chunk.choices) == whole.text


@pytest.mark.parametrize("path", ["batched", "unbatched"])
def test_logprobs_follow_the_grammar_mask(path, request):
    oai = client_for(request.getfixturevalue("client" if path == "batched" else "unbatched"))
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string", "enum": ["Oslo", "Rome"]}},
        "required": ["city"],
    }
    answer = oai.chat.completions.create(
        model=MODEL,
        messages=HI,
        max_tokens=64,
        temperature=0,
        logprobs=True,
        top_logprobs=20,
        response_format={"type": "json_schema", "json_schema": {"name": "c", "schema": schema}},
    )
    first = answer.choices[0].logprobs.content[0]
    allowed = [entry for entry in first.top_logprobs if entry.logprob > FLOOR]
    # Masked tokens have probability 0: what is left opens the object, and holds all the mass.
    assert allowed and all(entry.token.startswith("{") for entry in allowed)
    assert sum(np.exp(entry.logprob) for entry in allowed) == pytest.approx(1.0, abs=1e-6)
    assert json.loads(answer.choices[0].message.content)["city"] in ("Oslo", "Rome")


def test_top_logprobs_over_20_or_without_logprobs_is_a_400_naming_it(client):
    for body in ({"logprobs": True, "top_logprobs": 21}, {"top_logprobs": 2}):
        response = client.post("/v1/chat/completions", json={"model": MODEL, "messages": HI, **body})
        assert response.status_code == 400 and response.json()["error"]["param"] == "top_logprobs"
    response = client.post("/v1/completions", json={"model": MODEL, "prompt": "x", "logprobs": 21})
    assert response.status_code == 400 and response.json()["error"]["param"] == "logprobs"


# ---- echo and max_tokens 0 ------------------------------------------------------


@pytest.mark.parametrize("chunk", [None, 5])
def test_echo_with_max_tokens_0_scores_a_continuation_as_slmops_eval_does(chunk, oai, model, scorer, monkeypatch):
    if chunk:  # a prompt prefilled in several pieces scores the same
        monkeypatch.setattr(batched, "PREFILL_CHUNK", chunk)
    context, continuation = model.encode("The quick brown fox"), model.encode(" jumps over the lazy dog")
    ids = context + continuation
    # The request lm-evaluation-harness sends to score a continuation.
    answer = oai.completions.create(model=MODEL, prompt=[ids], echo=True, logprobs=1, max_tokens=0)
    logprobs = answer.choices[0].logprobs
    assert answer.choices[0].finish_reason == "length" and answer.usage.completion_tokens == 0
    assert answer.usage.prompt_tokens == len(ids) and len(logprobs.tokens) == len(ids)
    assert logprobs.token_logprobs[0] is None and logprobs.top_logprobs[0] is None
    expected = eval_logprobs(scorer, ids)
    assert np.allclose(logprobs.token_logprobs[1:], expected, atol=TOL)
    score = sum(logprobs.token_logprobs[len(context) :])
    assert score == pytest.approx(float(expected[len(context) - 1 :].sum()), abs=1e-3)
    assert all(1 <= len(top) <= 2 for top in logprobs.top_logprobs[1:])
    assert answer.choices[0].text == model.decode(ids)


def test_the_loglikelihood_request_of_lm_evaluation_harness(client, model, scorer):
    # lm-evaluation-harness's local-completions: a batch of token-id prompts, echo, one token generated
    # and dropped ([ctxlen:-1]), greedy when each token's logprob is the top of its position.
    pairs = [("The quick brown", " fox jumps"), ("Hello", " world, this is")]
    prompts = [model.encode(context) + model.encode(rest) for context, rest in pairs]
    greedy_answer = model.generate(model.encode("Hello"), max_tokens=3, temperature=0, repetition_penalty=1.0)
    pairs.append(("Hello", ""))
    prompts.append(model.encode("Hello") + greedy_answer.tokens)  # a continuation greedy by construction
    verdicts = []
    body = {
        "model": MODEL,
        "prompt": prompts,
        "temperature": 0,
        "max_tokens": 1,
        "logprobs": 1,
        "seed": 1234,
        "echo": True,
    }
    choices = sorted(client.post("/v1/completions", json=body).json()["choices"], key=lambda choice: choice["index"])
    for choice, ids, (context, _) in zip(choices, prompts, pairs):
        start = len(model.encode(context))
        found, tops = choice["logprobs"]["token_logprobs"][start:-1], choice["logprobs"]["top_logprobs"][start:-1]
        expected = eval_logprobs(scorer, ids)[start - 1 :]
        assert sum(found) == pytest.approx(float(expected.sum()), abs=1e-3)
        table = scorer.scored(0, np.asarray(ids), 0)
        greedy = all(int(np.argmax(table[index])) == ids[index + 1] for index in range(start - 1, len(ids) - 1))
        assert all(value == max(top.values()) for value, top in zip(found, tops)) == greedy
        verdicts.append(greedy)
    assert verdicts[-1] and not all(verdicts)


def test_echo_scores_match_with_batching_off(unbatched, model, scorer):
    ids = model.encode("Hello world, this is a test")
    answer = client_for(unbatched).completions.create(model=MODEL, prompt=ids, echo=True, logprobs=0, max_tokens=0)
    assert np.allclose(answer.choices[0].logprobs.token_logprobs[1:], eval_logprobs(scorer, ids), atol=TOL)


def test_text_offsets_point_into_the_echoed_text_past_an_added_bos(tiny_onnx, tmp_path):
    import shutil

    from tests.test_raw_completion import BOS_TEMPLATE

    folder = shutil.copytree(tiny_onnx, tmp_path / "tiny-bos")
    tokenizer = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    (folder / "tokenizer.json").write_text(json.dumps({**tokenizer, "post_processor": BOS_TEMPLATE}), "utf-8")
    http = serve(folder)
    try:
        text = "Hello world, the quick brown fox"
        answer = client_for(http).completions.create(model="tiny-bos", prompt=text, echo=True, logprobs=1, max_tokens=3)
    finally:
        http.__exit__(None, None, None)
    choice = answer.choices[0]
    tokens, offsets = choice.logprobs.tokens, choice.logprobs.text_offset
    assert tokens[0] == "<|im_start|>" and offsets[:2] == [0, 0]  # the BOS is not in the text
    for token, offset in zip(tokens[1:], offsets[1:]):
        assert choice.text[offset:].startswith(token) or token.startswith("bytes:"), (token, offset)


def test_echo_without_logprobs_returns_the_prompt_text(oai):
    answer = oai.completions.create(model=MODEL, prompt="Hello world", echo=True, max_tokens=0)
    assert answer.choices[0].text == "Hello world" and answer.choices[0].logprobs is None
    chunks = list(oai.completions.create(model=MODEL, prompt="Hello world", echo=True, max_tokens=0, stream=True))
    assert "".join(choice.text for chunk in chunks for choice in chunk.choices) == "Hello world"


# ---- prompts and n ----------------------------------------------------------------


def test_every_prompt_form_is_a_choice_and_token_ids_skip_the_tokenizer(oai, client, model):
    ids = model.encode("Hello world")
    forms = {"text": "Hello world", "texts": ["Hello", "world", "fox"], "ids": ids, "id lists": [ids, [5, 6, 7]]}
    counts = {"text": 1, "texts": 3, "ids": 1, "id lists": 2}
    for name, prompt in forms.items():
        answer = oai.completions.create(model=MODEL, prompt=prompt, max_tokens=2, temperature=0)
        assert [choice.index for choice in answer.choices] == list(range(counts[name])), name
    answer = oai.completions.create(model=MODEL, prompt=[ids, [5, 6, 7]], max_tokens=2, temperature=0, echo=True)
    assert answer.usage.prompt_tokens == len(ids) + 3  # taken as given: no BOS added
    assert answer.choices[1].text.startswith(model.decode([5, 6, 7]))
    single = oai.completions.create(model=MODEL, prompt=ids, max_tokens=2, temperature=0)
    assert (
        single.choices[0].text
        == oai.completions.create(model=MODEL, prompt="Hello world", max_tokens=2, temperature=0).choices[0].text
    )
    response = client.post("/v1/completions", json={"model": MODEL, "prompt": [[1, 2], [3, 512]]})
    assert response.status_code == 400 and response.json()["error"]["param"] == "prompt"
    assert "512" in response.json()["error"]["message"]


def test_n_choices_have_distinct_reproducible_seeds_and_usage_counts_them_all(oai):
    ask = {"model": MODEL, "messages": HI, "max_tokens": 8, "temperature": 1.0, "seed": 11}
    three = oai.chat.completions.create(**ask, n=3)
    texts = [choice.message.content for choice in three.choices]
    assert [choice.index for choice in three.choices] == [0, 1, 2] and len(set(texts)) > 1
    assert [choice.message.content for choice in oai.chat.completions.create(**ask, n=3).choices] == texts
    # Choice i is the answer of its derived seed; choice 0's seed is the request's own.
    alone = [oai.chat.completions.create(**ask | {"seed": derived_seed(11, index)}) for index in range(3)]
    assert [one.choices[0].message.content for one in alone] == texts
    assert three.usage.prompt_tokens == alone[0].usage.prompt_tokens
    assert three.usage.completion_tokens == sum(one.usage.completion_tokens for one in alone)
    chunks = list(oai.chat.completions.create(**ask, n=3, stream=True, stream_options={"include_usage": True}))
    streamed = {index: "" for index in range(3)}
    for chunk in chunks:
        for choice in chunk.choices:
            streamed[choice.index] += choice.delta.content or ""
    assert [streamed[index] for index in range(3)] == texts
    # Cached tokens follow the prefix cache's state, which the first request changed.
    usage = chunks[-1].usage
    assert (usage.prompt_tokens, usage.completion_tokens) == (three.usage.prompt_tokens, three.usage.completion_tokens)
    assert (
        usage.prompt_tokens_details is not None and 0 < usage.prompt_tokens_details.cached_tokens <= usage.prompt_tokens
    )


def test_n_times_prompts_on_completions(oai):
    answer = oai.completions.create(model=MODEL, prompt=["Hello", "fox"], n=2, max_tokens=3, temperature=1, seed=3)
    assert [choice.index for choice in answer.choices] == [0, 1, 2, 3]
    hello = oai.completions.create(model=MODEL, prompt="Hello", n=2, max_tokens=3, temperature=1, seed=3)
    assert [choice.text for choice in hello.choices] == [choice.text for choice in answer.choices[:2]]
    chunks = list(
        oai.completions.create(
            model=MODEL,
            prompt=["Hello", "fox"],
            n=2,
            max_tokens=3,
            temperature=1,
            seed=3,
            stream=True,
            stream_options={"include_usage": True},
            logprobs=0,
        )
    )
    texts = {index: "" for index in range(4)}
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] += choice.text
    assert [texts[index] for index in range(4)] == [choice.text for choice in answer.choices]
    streamed = chunks[-1].usage
    counts = ("prompt_tokens", "completion_tokens", "total_tokens")
    assert [getattr(streamed, key) for key in counts] == [getattr(answer.usage, key) for key in counts]
    # how many prompt tokens the prefix cache held depends on what the server answered before
    assert streamed.prompt_tokens_details is not None
    assert 0 <= streamed.prompt_tokens_details.cached_tokens <= streamed.prompt_tokens


# ---- the parameter policy -----------------------------------------------------------


@pytest.mark.parametrize(
    "route, field, value",
    [
        ("chat", "frequency_penalty", 0.5),
        ("chat", "presence_penalty", -0.5),
        ("chat", "logit_bias", {"5": 10}),
        ("chat", "functions", [{"name": "f"}]),
        ("chat", "modalities", ["text", "audio"]),
        ("chat", "audio", {"voice": "alloy", "format": "wav"}),
        ("text", "best_of", 3),
        ("text", "suffix", "end"),
        ("text", "frequency_penalty", 1),
    ],
)
def test_a_parameter_that_would_change_the_answer_is_a_400_naming_it(client, route, field, value):
    body = {"model": MODEL, "max_tokens": 2, field: value}
    body |= {"messages": HI} if route == "chat" else {"prompt": "Hello"}
    response = client.post("/v1/chat/completions" if route == "chat" else "/v1/completions", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == field and field in response.json()["error"]["message"]


def test_parameters_that_cannot_change_the_answer_are_accepted(oai):
    neutral = {
        "user": "u1",
        "metadata": {"k": "v"},
        "store": False,
        "service_tier": "auto",
        "parallel_tool_calls": True,
        "frequency_penalty": 0,
        "presence_penalty": 0,
        "logit_bias": {},
        "modalities": ["text"],
    }
    base = oai.chat.completions.create(model=MODEL, messages=HI, max_tokens=4, temperature=0)
    same = oai.chat.completions.create(model=MODEL, messages=HI, max_tokens=4, temperature=0, **neutral)
    assert same.choices[0].message.content == base.choices[0].message.content
    text = oai.completions.create(model=MODEL, prompt="Hi", max_tokens=2, best_of=1, suffix="", user="u")
    assert text.choices[0].text is not None


def test_docs_list_every_parameter_of_both_endpoints():
    from pathlib import Path

    from slmops.server.protocol import ChatRequest, CompletionRequest

    text = (Path(__file__).resolve().parent.parent / "docs" / "server.md").read_text(encoding="utf-8")
    tables = text[text.index("## Parameters") : text.index("## Log-probabilities")]
    fields = set(ChatRequest.model_fields) | set(CompletionRequest.model_fields)
    assert not sorted(name for name in fields if f"`{name}`" not in tables)
