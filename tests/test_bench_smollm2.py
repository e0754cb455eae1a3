"""A small real benchmark of the embedded SmolLM2 (INT4), in-process, beside the bare Generator."""

import json
import os
import socket
import subprocess
import sys
import time

import httpx
import pytest
from click.testing import CliRunner

from slmops.bench.commands import bench
from slmops.bench.schema import validate

pytestmark = pytest.mark.slow


def test_real_run_produces_every_figure_plausibly_ordered(smollm2_int4, tmp_path):
    out, chart = tmp_path / "run.json", tmp_path / "run.png"
    result = CliRunner().invoke(
        bench,
        [
            str(smollm2_int4),
            "--raw",
            "--threads",
            "2",
            "--prompt-lengths",
            "64,256",
            "--output-lengths",
            "16",
            "--reps",
            "2",
            "--json",
            str(out),
            "--plot",
            str(chart),
            "--markdown",
            str(tmp_path / "run.md"),
        ],
    )
    assert result.exit_code == 0, result.output
    document = json.loads(out.read_text())
    validate(document)
    assert [t["kind"] for t in document["targets"]] == ["slmops", "raw"]
    assert all(t["threads"] == 2 and t["load_s"] > 0 and t["weight_bytes"] > 10**7 for t in document["targets"])
    assert document["memory_bandwidth_gb_s"] > 0.5
    assert document["system"]["libraries"]["onnxruntime-genai"].startswith("0.")
    for case in document["cases"]:
        s = case["stats"]
        assert s["failed"] == 0 and s["requests"] == 2
        assert s["prompt_tokens"] == case["prompt_tokens"]  # exact prompt lengths
        assert s["output_tokens_mean"] == 16
        assert 0 < s["ttft_ms"]["median"] < s["e2el_ms"]["median"]
        # prefill processes tokens in parallel: more tokens per second than decode
        assert s["prefill_tps"]["median"] > s["decode_tps"]["median"] > 1
        assert s["itl_ms"]["count"] == 2 * 15
        assert case["rss_peak_mb"] >= case["rss_steady_mb"] > 50
        assert case["cpu_percent"] > 10 and case["roofline_pct"] > 0
    assert {(r["prompt_tokens"], r["reference"]) for r in document["ratios"]} == {
        (64, "raw-ort-genai t=2"),
        (256, "raw-ort-genai t=2"),
    }
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| slmops t=2 | 256 |" in (tmp_path / "run.md").read_text()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def served_smollm2(smollm2_int4, slmops_home):
    """A real `slmops serve` process on loopback, stopped after the test."""
    port = _free_port()
    env = dict(os.environ, SLMOPS_HOME=str(slmops_home))
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "slmops",
            "serve",
            str(smollm2_int4),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--threads",
            "2",
            "--log-level",
            "warning",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert process.poll() is None, process.stderr.read().decode()[-2000:]
            try:
                if httpx.get(url + "/v1/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        else:
            pytest.fail("slmops serve did not answer within 90 s")
        yield url, process.pid
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_url_run_against_slmops_serve(served_smollm2, tmp_path):
    url, pid = served_smollm2
    out = tmp_path / "serve.json"
    result = CliRunner().invoke(
        bench,
        [
            "--url",
            url,
            "--prompt-lengths",
            "32",
            "--output-lengths",
            "8",
            "--concurrency",
            "1,2",
            "--reps",
            "1",
            "--warmup",
            "1",
            "--no-roofline",
            "--json",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    document = json.loads(out.read_text())
    validate(document)
    assert document["targets"][0]["pid"] == pid  # found by its port: RSS and CPU are the server's
    single, double = document["cases"]
    assert (single["concurrency"], double["concurrency"]) == (1, 2)
    for case in document["cases"]:
        s = case["stats"]
        assert s["failed"] == 0 and s["output_tokens_mean"] > 1
        assert s["prompt_tokens"] >= 32  # the server adds its chat template
        assert 0 < s["ttft_ms"]["median"] < s["e2el_ms"]["median"]
        assert case["rss_peak_mb"] > 50 and case["cpu_percent"] > 5
    assert double["stats"]["requests"] == 2 and double["queue_delay_ms"] is not None
