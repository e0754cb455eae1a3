"""A small real benchmark of the embedded SmolLM2 (INT4), in-process, beside the bare Generator."""

import json

import pytest
from click.testing import CliRunner

from slmops.bench.commands import bench
from slmops.bench.schema import validate
from tests.server_process import ServerProcess

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


@pytest.fixture
def served_smollm2(smollm2_int4, slmops_home):
    """A real `slmops serve` process on loopback, stopped after the test."""
    server = ServerProcess(slmops_home, str(smollm2_int4), "--threads", "2").wait_ready()
    try:
        yield server.url, server.process.pid
    finally:
        server.stop()


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
