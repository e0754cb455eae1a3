"""Requests while a model loads: a bounded wait, then 503 `model_loading`; /health readiness.

The load is held on an event (a patched ``Model.from_folder``), so every state is
reached by the test itself, never by a sleep. The model is a tiny random llama.
"""

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient

from slmops.runtime.model import Model
from slmops.server import ServerConfig, create_app

NAME = "tiny-loading"
BODY = {"model": NAME, "prompt": "hello", "max_tokens": 3, "temperature": 0}
WAIT_S = 30.0  # bound on every wait in here: a broken release must fail the test, not hang it


class HeldLoad:
    """Model.from_folder, held until ``release()``; counts the loads and can fail them."""

    def __init__(self, monkeypatch) -> None:
        self.entered, self.released, self.calls, self.error = threading.Event(), threading.Event(), 0, None
        real = Model.from_folder

        def held(*args, **kwargs):
            self.calls += 1
            self.entered.set()
            assert self.released.wait(WAIT_S), "the test never released the load"
            if self.error:
                raise self.error
            return real(*args, **kwargs)

        monkeypatch.setattr(Model, "from_folder", staticmethod(held))

    def release(self) -> None:
        self.released.set()


@pytest.fixture
def held(monkeypatch):
    hold = HeldLoad(monkeypatch)
    yield hold
    hold.release()  # never leave a load thread blocked behind a failed assertion


@pytest.fixture
def cached(tiny_onnx):
    from slmops.cache import store

    store.add(tiny_onnx, name=NAME, link=True)
    return NAME


def app_with(load_wait: float, *models: str):
    return create_app(ServerConfig(load_wait=load_wait, parallel=2, threads=1), list(models))


def wait_until_ready(client: TestClient) -> dict:
    for _ in range(int(WAIT_S / 0.05)):
        answer = client.get("/health")
        if answer.status_code == 200:
            return answer.json()
        threading.Event().wait(0.05)
    raise AssertionError(f"not ready: {answer.json()}")


def metric(client: TestClient, name: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise KeyError(name)


def test_health_says_loading_until_the_startup_model_is_loaded(tiny_onnx, held):
    with TestClient(app_with(0.2, str(tiny_onnx))) as client:
        assert held.entered.wait(WAIT_S)
        health = client.get("/health")
        assert health.status_code == 503 and health.json()["status"] == "loading"
        assert health.json()["loading"] == ["model"] and health.json()["loaded"] == []
        assert metric(client, "slmops_loading_models") == 1 and metric(client, "slmops_loaded_models") == 0

        early = client.post("/v1/completions", json={**BODY, "model": "model"})
        assert early.status_code == 503 and early.headers["Retry-After"] == "2"
        assert early.json()["error"]["code"] == "model_loading" and early.json()["error"]["param"] == "model"

        held.release()
        assert wait_until_ready(client)["loaded"] == ["model"]
        answer = client.post("/v1/completions", json={**BODY, "model": "model"})
        assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] == 3
        assert metric(client, "slmops_loading_models") == 0 and metric(client, "slmops_loaded_models") == 1
    assert held.calls == 1


def test_concurrent_requests_share_one_load_and_each_waits_only_load_wait(cached, held):
    with TestClient(app_with(0.3)) as client:
        assert client.get("/health").status_code == 200  # nothing named at start-up: ready at once
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda _: client.post("/v1/completions", json=BODY), range(4)))
        assert [a.status_code for a in answers] == [503] * 4
        assert {a.json()["error"]["code"] for a in answers} == {"model_loading"}
        health = client.get("/health").json()
        assert health["status"] == "ok" and health["loading"] == [NAME]  # a lazy load leaves the service ready

        held.release()
        assert client.get(f"/openai/load/{NAME}").json()["loaded"]  # waits for the load under way
        assert client.post("/v1/completions", json=BODY).status_code == 200
    assert held.calls == 1


def test_a_request_within_load_wait_is_answered_when_the_load_ends(cached, held):
    with TestClient(app_with(WAIT_S)) as client, ThreadPoolExecutor(1) as pool:
        pending = pool.submit(client.post, "/v1/completions", json=BODY)
        assert held.entered.wait(WAIT_S)
        assert not pending.done()
        held.release()
        answer = pending.result(WAIT_S)
        assert answer.status_code == 200 and answer.json()["model"] == NAME


def test_the_management_load_waits_past_load_wait(cached, held):
    with TestClient(app_with(0.05)) as client, ThreadPoolExecutor(1) as pool:
        pending = pool.submit(client.get, f"/openai/load/{NAME}", params={"ttl": 60})
        assert held.entered.wait(WAIT_S)
        assert client.post("/v1/completions", json=BODY).status_code == 503
        held.release()
        loaded = pending.result(WAIT_S)
        assert loaded.status_code == 200 and loaded.json() == {"name": NAME, "loaded": True, "ttl": 60}


def test_a_failed_startup_load_is_reported_and_retried_on_request(tiny_onnx, held):
    held.error = MemoryError("no room for the weights")
    with TestClient(app_with(WAIT_S, str(tiny_onnx))) as client:
        held.release()
        for _ in range(int(WAIT_S / 0.05)):
            health = client.get("/health")
            if health.json()["status"] != "loading":
                break
            threading.Event().wait(0.05)
        assert health.status_code == 503 and health.json()["status"] == "failed"
        assert "no room for the weights" in health.json()["failed"]["model"]

        held.error = None
        assert client.post("/v1/completions", json={**BODY, "model": "model"}).status_code == 200
        assert client.get("/health").json()["status"] == "ok"
    assert held.calls == 2


def test_an_unknown_startup_model_fails_the_start():
    with pytest.raises(Exception, match="no-such-model"):
        with TestClient(app_with(1.0, "no-such-model")):
            pass
