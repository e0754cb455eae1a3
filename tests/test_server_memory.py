"""What a served model holds: the generator's copy of the weights loads only when a request needs it.

On the tiny fp32 model, in-process; every check is what was loaded, never an RSS.
"""

import threading

import pytest
from fastapi.testclient import TestClient

import slmops
from slmops.memory import return_large_buffers
from slmops.runtime.model import Model
from tests import in_process

MODEL = "model"  # the tiny ONNX folder's name


def serve(folder, **config) -> TestClient:
    return in_process.serve(folder, parallel=2, **config)


def loaded_model(client: TestClient) -> Model:
    return client.app.state.registry.loaded[MODEL].model


def ask(client: TestClient, max_tokens: int) -> dict:
    body = {"model": MODEL, "prompt": "the quick brown fox", "max_tokens": max_tokens, "temperature": 0}
    answer = client.post("/v1/completions", json=body)
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_a_batched_model_loads_its_generator_only_for_what_a_row_cannot_hold(tiny_onnx, monkeypatch):
    loaders = []
    load = Model._load_generator

    def recorded(self):
        loaders.append(threading.current_thread().name)
        return load(self)

    monkeypatch.setattr(Model, "_load_generator", recorded)
    client = serve(tiny_onnx, max_seq_len=256)
    try:
        model = loaded_model(client)
        assert not model.generator_loaded
        ask(client, 8)  # fits a row of 256 tokens
        assert not model.generator_loaded
        longer = ask(client, 300)  # prompt + 300 tokens does not: a generator of its own
        assert model.generator_loaded
        assert longer["usage"]["completion_tokens"] >= 1
        assert loaders == [f"slmops-scheduler-{MODEL}"]  # not on the event loop: other requests go on
        ask(client, 300)
        assert len(loaders) == 1
    finally:
        client.__exit__(None, None, None)


def test_without_batching_the_generator_loads_with_the_model(tiny_onnx):
    client = serve(tiny_onnx, batching=False)
    try:
        assert loaded_model(client).generator_loaded
    finally:
        client.__exit__(None, None, None)


def test_a_deferred_generator_answers_as_one_loaded_at_once(tiny_onnx):
    eager = slmops.load(tiny_onnx, threads=1)
    deferred = Model.from_folder(eager.folder, threads=1, defer_generator=True)
    assert not deferred.generator_loaded
    assert deferred.encode("hello there") == eager.encode("hello there")
    options = {"temperature": 0, "max_tokens": 6}
    assert deferred.generate("hello there", **options).text == eager.generate("hello there", **options).text
    assert deferred.generator_loaded


@pytest.mark.parametrize("threshold", [1 << 20, 256 << 10])
def test_large_buffers_go_back_to_the_system_on_glibc(threshold):
    assert return_large_buffers(threshold)


def test_the_start_up_line_says_the_weights_load_once(tiny_onnx, caplog):
    with caplog.at_level("INFO", logger="slmops.server"):
        client = serve(tiny_onnx, max_seq_len=256)
        client.__exit__(None, None, None)
    line = next(record.getMessage() for record in caplog.records if "reserved:" in record.getMessage())
    assert "(once; a second copy loads if a request needs a generator of its own)" in line
    assert "KV cache 2 rows x 256 tokens" in line
