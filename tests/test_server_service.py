"""The service as a process: API key, SIGTERM during load, busy port, `slmops service` and `model load|unload`."""

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import openai
import pytest

from slmops import client
from tests.server_process import ServerProcess, free_port

KEY = "test-key-4f1c"
HI = [{"role": "user", "content": "Tell me about the sea."}]


def slmops(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "slmops", *args], capture_output=True, text=True, timeout=timeout, env=dict(os.environ)
    )


@pytest.mark.slow
def test_api_key_then_sigterm_during_load(tmp_path, smollm2_int4):
    server = ServerProcess(tmp_path / "home", str(smollm2_int4), "--api-key", KEY, "--grace", "30").wait_ready()
    try:
        name = smollm2_int4.name
        assert httpx.get(server.url + "/v1/models").status_code == 401
        wrong = httpx.get(server.url + "/v1/models", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.json()["error"]["type"] == "authentication_error"
        assert httpx.get(server.url + "/health").status_code == 200
        keyed = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)
        assert [m.id for m in keyed.models.list().data] == [name]
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=server.url + "/v1", api_key="bad", max_retries=0).models.list()
        results = asyncio.run(_streams_then_sigterm(server, name))
    finally:
        code = server.stop()
    assert code == 0
    assert all(events[-1] == "data: [DONE]" for events in results)
    finishes = [json.loads(events[-2][6:])["choices"][0]["finish_reason"] for events in results]
    assert set(finishes) <= {"stop", "length"}, finishes  # finished within the grace period, not cut


async def _streams_then_sigterm(server, name):
    headers = {"Authorization": f"Bearer {KEY}"}
    body = {"model": name, "messages": HI, "max_tokens": 40, "temperature": 0, "stream": True}

    async def one(http, started):
        async with http.stream("POST", "/v1/chat/completions", json=body) as answer:
            lines = []
            async for line in answer.aiter_lines():
                if line:
                    lines.append(line)
                    started.set()
            return lines

    async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=120) as http:
        started = asyncio.Event()
        tasks = [asyncio.create_task(one(http, started)) for _ in range(4)]
        await asyncio.wait_for(started.wait(), 60)
        server.process.send_signal(signal.SIGTERM)
        results = await asyncio.wait_for(asyncio.gather(*tasks), 90)
    await asyncio.to_thread(server.process.wait, 60)
    return results


def test_serve_on_a_busy_port_is_a_one_line_error():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        result = slmops("serve", "--port", str(port))
    assert result.returncode != 0
    assert result.stderr.strip() == f"Error: Port {port} on 127.0.0.1 is busy; pick another with --port."


def test_service_start_status_stop(slmops_home):
    port = free_port()
    assert "not running" in slmops("service", "status").stdout
    assert "not running" in slmops("service", "stop").stdout
    try:
        started = slmops("service", "start", "--port", str(port))
        assert started.returncode == 0, started.stderr
        assert f"http://127.0.0.1:{port}/v1" in started.stdout
        again = slmops("service", "start", "--port", str(port))
        assert again.returncode == 0 and "Already running" in again.stdout
        status = slmops("service", "status").stdout
        assert f"http://127.0.0.1:{port}/v1" in status and "pid:" in status and "loaded models: none" in status
        assert client.loaded_models() == []
        pid = client.read_state()["pid"]
    finally:
        stopped = slmops("service", "stop")
    assert stopped.stdout.strip() == "Stopped."
    assert client.read_state() is None and not _alive(pid)
    assert (slmops_home / "logs" / "service.log").exists()


@pytest.mark.slow
def test_model_load_and_unload_through_the_service(slmops_home, smollm2_int4):
    from slmops.cache import store

    store.add(smollm2_int4, name="svc-model", link=True)
    try:
        assert slmops("service", "start", "--port", str(free_port())).returncode == 0
        loaded = slmops("model", "load", "svc-model")
        assert loaded.returncode == 0, loaded.stderr
        assert client.loaded_models() == ["svc-model"]
        assert "svc-model" in slmops("service", "status").stdout
        assert slmops("model", "unload", "svc-model").returncode == 0
        assert client.loaded_models() == []
        missing = slmops("model", "load", "no-such-model")
        assert missing.returncode != 0 and missing.stderr.startswith("Error: ") and "no-such-model" in missing.stderr
    finally:
        slmops("service", "stop")


def _alive(pid: int) -> bool:
    time.sleep(0.1)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return not open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z"


def test_service_start_reports_a_model_that_cannot_load(slmops_home, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "genai_config.json").write_text('{"model": {"type": "llama", "decoder": {"filename": "missing.onnx"}}}')
    started = time.monotonic()
    try:
        result = slmops("service", "start", str(broken), "--port", str(free_port()))
    finally:
        slmops("service", "stop")
    assert result.returncode != 0 and time.monotonic() - started < 60
    error = result.stderr.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("Error: The service could not load its models (broken")
    assert client.read_state() is None
