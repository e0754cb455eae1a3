"""benchmarks/realistic_sizes.py: its model shapes, its medians and ratios, its RESULTS.md section (nothing heavy runs)."""

import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
SMOLLM2_TOKENS = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}


@pytest.fixture
def sizes(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the script imports its sibling scripts by name
    import realistic_sizes

    return realistic_sizes


def test_the_shapes_build_models_with_the_published_parameter_counts(sizes):
    assert [m.name for m in sizes.MODELS] == ["qwen2.5-0.5b", "llama-3.2-1b", "gemma-3-1b"]
    for model in sizes.MODELS:
        count = sizes.parameter_count(model.config_json(SMOLLM2_TOKENS))
        assert count == pytest.approx(model.parameters, rel=0.05), model.name


def test_a_tiny_config_keeps_the_shapes_but_two_layers_and_takes_the_tokenizers_ids(sizes):
    gemma = sizes.MODELS[2]
    config = gemma.config_json(SMOLLM2_TOKENS, layers=2)
    assert config["num_hidden_layers"] == 2 and gemma.config["num_hidden_layers"] == 26  # the table is untouched
    assert config["bos_token_id"] == 1 and config["vocab_size"] == 262144 and config["head_dim"] == 256
    assert config["sliding_window"] == 512 and config["torch_dtype"] == "bfloat16"


def test_the_vocabulary_is_padded_to_the_models_size(sizes, tmp_path):
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}}}))
    sizes.pad_vocabulary(path, 6)
    vocab = json.loads(path.read_text())["model"]["vocab"]
    assert vocab == {"a": 0, "b": 1, "ab": 2, "[PAD3]": 3, "[PAD4]": 4, "[PAD5]": 5}


def fake_round(load: float | None, rss: float, decode: dict, ttft: dict, tokens: int = 128) -> dict:
    return {
        "load_s": load,
        "peak_rss_mb": rss,
        "cases": {"128": {"decode_tps": decode, "ttft_ms": ttft, "tokens": tokens}},
    }


def test_medians_over_rounds_and_the_better_setting_of_each_figure(sizes):
    rounds = [
        fake_round(1.0, 500, {"fa-on": 10, "fa-off": 30}, {"fa-on": 100, "fa-off": 300}),
        fake_round(3.0, 700, {"fa-on": 50, "fa-off": 20}, {"fa-on": 120, "fa-off": 90}),
        fake_round(2.0, 600, {"fa-on": 20, "fa-off": 26}, {"fa-on": 110, "fa-off": 95}, tokens=100),
    ]
    summary = sizes.summarize(rounds)
    assert summary["load_s"] == 2.0 and summary["peak_rss_mb"] == 600
    case = summary["cases"]["128"]
    # decode: medians 20 (on) and 26 (off): off is faster; TTFT: medians 110 (on) and 95 (off): off is quicker
    assert (case["decode_tps"], case["decode_setting"]) == (26, "fa-off")
    assert (case["ttft_ms"], case["ttft_setting"]) == (95, "fa-off")
    assert case["tokens"] == 100  # the shortest generation is what the table must flag


def test_a_contender_without_a_load_time_has_none(sizes):
    assert sizes.summarize([fake_round(None, 1, {"": 1}, {"": 1})])["load_s"] is None


def summaries(ours: float, q4_0: float, q4_k_m: float) -> dict:
    def one(decode: float, ttft: float) -> dict:
        return {"cases": {"128": {"decode_tps": decode, "ttft_ms": ttft}}}

    return {
        "slmops int4 b32": one(ours, 400),
        "llama.cpp Q4_0": one(q4_0, 100),
        "llama.cpp Q4_K_M": one(q4_k_m, 200),
    }


def test_ratios_against_each_quant_and_the_faster_one(sizes):
    ratios = sizes.ratios(summaries(ours=90, q4_0=60, q4_k_m=45))["slmops int4 b32"]["128"]
    assert ratios["decode_vs_llama.cpp Q4_0"] == pytest.approx(1.5)
    assert ratios["decode_vs_llama.cpp Q4_K_M"] == pytest.approx(2.0)
    assert ratios["faster_llama_cpp"] == "llama.cpp Q4_0" and ratios["decode_vs_faster"] == pytest.approx(1.5)
    assert ratios["ttft_vs_quicker"] == pytest.approx(4.0)  # against Q4_0's 100 ms
    swapped = sizes.ratios(summaries(ours=90, q4_0=45, q4_k_m=60))["slmops int4 b32"]["128"]
    assert swapped["faster_llama_cpp"] == "llama.cpp Q4_K_M"


def document(sizes, tokens: int = 128) -> dict:
    contenders = summaries(ours=90, q4_0=60, q4_k_m=45)
    for summary in contenders.values():
        summary.update(load_s=0.5, peak_rss_mb=300.0, size_mib=250.0, conversion_s=20.0)
        summary["cases"]["128"]["tokens"] = tokens
    return {
        "date": "2026-11-29T12:00:00+00:00",
        "cpu_info": {"label": "X (Zen 4 class), AVX-512 VNNI", "model": "X", "flags": ["avx512f"]},
        "settings": {"threads": 2, "rounds": 3, "contexts": [128], "new_tokens": 128, "tiny": False},
        "models": {
            "qwen2.5-0.5b": {"parameters": 494_032_768, "contenders": contenders, "ratios": sizes.ratios(contenders)}
        },
    }


def test_the_section_names_the_cpu_and_says_where_the_goal_holds(sizes):
    section = sizes.markdown_section(document(sizes))
    assert section[0] == "<!-- realistic sizes: X (Zen 4 class), AVX-512 VNNI -->" and section[-1] == sizes.SECTION_END
    assert section[1] == "## Realistic sizes: X (Zen 4 class), AVX-512 VNNI"
    assert "flags: avx512f" in section[3]
    text = "\n".join(section)
    assert "| qwen2.5-0.5b | 494M | slmops int4 b32 | 250 | 0.50 | 300 | 90.0 | 400 |" in text
    assert "| qwen2.5-0.5b | slmops int4 b32 | 128 | 1.50 | 2.00 | 1.50 (Q4_0) | 4.00 | yes |" in text


def test_a_short_generation_is_flagged_in_the_table(sizes):
    rows = sizes.contender_rows(document(sizes, tokens=40))
    assert rows[0][6] == "90.0 (40 tok)"


def test_the_section_goes_after_everything_else_and_a_rerun_replaces_only_it(sizes):
    results = "# results\n\n<!-- cpu: A -->\n## A\n<!-- end cpu -->\n"
    first = sizes.merge_section(results, "A", ["<!-- realistic sizes: A -->", "one", sizes.SECTION_END])
    assert first == results + "\n<!-- realistic sizes: A -->\none\n<!-- end realistic sizes -->\n"
    other = sizes.merge_section(first, "B", ["<!-- realistic sizes: B -->", "b", sizes.SECTION_END])
    again = sizes.merge_section(other, "A", ["<!-- realistic sizes: A -->", "two", sizes.SECTION_END])
    assert again == other.replace("\none\n", "\ntwo\n")
    assert sizes.merge_section("", "A", ["x"]) == "x\n"


def test_the_watcher_reads_a_childs_peak_memory_and_its_output(sizes):
    code = "import time; block = bytearray(200 * 2**20); print('done'); time.sleep(0.3)"
    stdout, peak_mb = sizes.run_watched([sys.executable, "-c", code])
    assert stdout == "done\n" and peak_mb >= 200


def test_a_failing_child_stops_with_its_last_words(sizes):
    with pytest.raises(RuntimeError, match="exited with 3:\nbroken"):
        sizes.run_watched([sys.executable, "-c", "import sys; print('broken', file=sys.stderr); sys.exit(3)"])
