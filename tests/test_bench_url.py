"""`slmops bench --url` against a small fake OpenAI server on loopback (bounded, no model)."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from click.testing import CliRunner

from slmops.bench.commands import bench
from slmops.bench.schema import validate
from slmops.bench.targets import Prompt, UrlTarget

TOKEN_GAP_S = 0.004
FIRST_TOKEN_S = 0.02


class FakeOpenAI(BaseHTTPRequestHandler):
    """Streams ``max_tokens`` one-word chunks, then a usage block, like an OpenAI server."""

    bodies: list = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        payload = json.dumps({"object": "list", "data": [{"id": "fake-model", "object": "model"}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeOpenAI.bodies.append(body)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        self._send({"choices": [{"index": 0, "delta": {"role": "assistant"}}]})
        time.sleep(FIRST_TOKEN_S)
        for i in range(body["max_tokens"]):
            self._send({"choices": [{"index": 0, "delta": {"content": f" w{i}"}}]})
            time.sleep(TOKEN_GAP_S)
        words = len(body["messages"][0]["content"].split())
        self._send({"choices": [], "usage": {"prompt_tokens": words + 5, "completion_tokens": body["max_tokens"]}})
        self.wfile.write(b"data: [DONE]\n\n")

    def _send(self, chunk):
        self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
        self.wfile.flush()


@pytest.fixture
def fake_server():
    FakeOpenAI.bodies = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeOpenAI)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def test_url_target_times_each_chunk(fake_server):
    target = UrlTarget(fake_server + "/v1")
    target.load()
    assert target.model == "fake-model" and target.pid is not None  # this test process listens
    r = target.request(Prompt(text="", tokens=4, cut="one two three four"), 6)
    assert r.ok and r.output_tokens == 6 and r.prompt_tokens == 9
    assert FIRST_TOKEN_S * 0.9 <= r.ttft < r.e2el
    # chunks may arrive bunched on a busy machine, but the gaps add up to the decode time
    assert sum(r.itls) == pytest.approx(r.chunk_times[-1] - r.chunk_times[0])
    assert sum(r.itls) >= 5 * TOKEN_GAP_S * 0.5
    sent = FakeOpenAI.bodies[-1]
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    assert sent["messages"] == [{"role": "user", "content": "one two three four"}]


def test_url_target_reports_http_errors():
    target = UrlTarget("http://127.0.0.1:9")  # nothing listens on the discard port
    with pytest.raises(Exception, match="Cannot reach"):
        target.load()
    target.model = "x"
    r = target.request(Prompt(text="", tokens=1, cut="hi"), 2)
    assert not r.ok and r.error


def test_bench_url_sweeps_concurrency(fake_server, tmp_path):
    out = tmp_path / "url.json"
    result = CliRunner().invoke(
        bench,
        [
            "--url",
            fake_server,
            "--prompt-lengths",
            "16,32",
            "--output-lengths",
            "8",
            "--concurrency",
            "1,4",
            "--reps",
            "2",
            "--warmup",
            "0",
            "--no-roofline",
            "--json",
            str(out),
            "--goodput",
            "ttft:5000",
        ],
    )
    assert result.exit_code == 0, result.output
    document = json.loads(out.read_text())
    validate(document)
    cases = {(c["prompt_tokens"], c["concurrency"]): c for c in document["cases"]}
    assert set(cases) == {(16, 1), (32, 1), (16, 4), (32, 4)}
    four = cases[(16, 4)]
    assert four["stats"]["requests"] == 8 and four["stats"]["failed"] == 0
    assert four["stats"]["output_throughput"] > cases[(16, 1)]["stats"]["output_throughput"]
    assert four["queue_delay_ms"] is not None and cases[(16, 1)]["queue_delay_ms"] is None
    assert four["stats"]["goodput"] == pytest.approx(four["stats"]["request_throughput"])
    assert four["rss_peak_mb"] > 0  # the fake server runs in this process: found by its port
    assert document["targets"][0]["kind"] == "url" and document["targets"][0]["label"] == "url fake-model"
