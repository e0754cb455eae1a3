"""`slmops sweep` on a tiny random model: the table, the reports and the pick."""

import json
import statistics

import pytest

from slmops.errors import UsageError
from slmops.evaluate.sweep import Row, pick, speed_only, sweep
from slmops.machine import describe_cpu


def _row(name, precision, size, dppl, rate=1.0, speed=100.0):
    return Row(
        name, precision, "", size, delta_ppl_pct=dppl, pass_rate=rate, decode_tokens_per_s=speed, kld_mean=dppl / 100
    )


def test_pick_takes_the_smallest_within_limits_and_says_why():
    rows = [
        _row("fp32", "fp32", 500, 0.0),
        _row("int8", "int8", 250, 0.6),
        _row("int4", "int4", 86, 35.0),
        _row("int4-good", "int4", 130, 4.0, rate=0.8),
    ]
    name, reason = pick(rows, max_ppl_increase=5.0, min_pass=0.9)
    assert name == "int8"
    assert "int4 (ΔPPL +35.0%)" in reason and "int4-good (pass rate 80%)" in reason
    assert pick(rows, max_ppl_increase=5.0, min_pass=0.7)[0] == "int4-good"
    assert pick([_row("int4", "int4", 86, 35.0)], 5.0, 0.9)[0] is None
    # a small, accurate INT4 that decodes slower than FP32 is refused for it
    slow = [*rows, _row("int4-slow", "int4", 190, 0.0, speed=8.0)]
    name, reason = pick(slow, max_ppl_increase=5.0, min_pass=0.9)
    assert name == "int8" and "int4-slow (8 tokens/s, slower than fp32's 100)" in reason


def test_sweep_tiny_model_writes_table_json_markdown_and_plot(tiny_llama, tmp_path):
    suite = tmp_path / "suite.jsonl"
    suite.write_text('{"prompt": "hello", "not_contains": "zzzz-never"}\n')
    result = sweep(
        tiny_llama,
        tmp_path / "out",
        precisions=["int4", "fp32"],
        int4_variants=("int4", "int4-hqq-b32"),
        windows=1,
        suite=suite,
        max_ppl_increase=1000.0,
        speed_rounds=2,
    )
    names = [row.name for row in result.rows]
    assert names == ["fp32", "int4", "int4-hqq-b32"], [row.error for row in result.rows]
    assert all(row.error is None for row in result.rows), [row.error for row in result.rows]
    fp32, int4 = result.rows[0], result.rows[1]
    assert fp32.delta_ppl_pct == 0.0 and int4.kld_mean > 0 and int4.size_mb < fp32.size_mb
    assert int4.decode_tokens_per_s > 0 and int4.peak_rss_mb > 0 and int4.pass_rate == 1.0
    # limits are wide open: the pick is the smallest row that decodes no slower than fp32
    fast = [row for row in result.rows if row.decode_tokens_per_s >= fp32.decode_tokens_per_s]
    assert result.pick == min(fast, key=lambda row: row.size_mb).name and result.best_int4 in names
    data = json.loads(result.json_path.read_text())
    assert data["rows"][1]["name"] == "int4"
    assert "| int4-hqq-b32 |" in result.markdown_path.read_text()
    assert result.plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    cpu = describe_cpu()  # the speed columns hold for this CPU
    assert data["cpu_info"] == cpu.to_json() and f"CPU: {cpu.summary()}." in result.markdown_path.read_text()
    # Speed: every model once per round, each figure the median of its rounds.
    assert result.speed_rounds == 2 and all(len(row.speed_samples) == 2 for row in result.rows)
    assert int4.decode_tokens_per_s == statistics.median(s["decode_tokens_per_s"] for s in int4.speed_samples)
    assert len(result.load_average) == 3 and "median of 2 interleaved rounds" in result.markdown_path.read_text()

    again = speed_only(tmp_path / "out", rounds=1)
    assert [row.name for row in again.rows] == names and all(len(row.speed_samples) == 1 for row in again.rows)
    assert [row.kld_mean for row in again.rows] == [row.kld_mean for row in result.rows]  # quality kept as measured
    assert json.loads(result.json_path.read_text())["speed_rounds"] == 1


def test_speed_only_needs_an_earlier_sweep(tmp_path):
    with pytest.raises(UsageError, match="run `slmops sweep"):
        speed_only(tmp_path / "nothing")
