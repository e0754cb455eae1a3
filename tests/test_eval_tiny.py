"""`slmops eval` on tiny random models: a model against itself, and its INT4 export against it."""

import json

import pytest

from slmops.evaluate.quality import evaluate_quality
from slmops.machine import describe_cpu
from tests.tiny import TRAINING_TEXT


@pytest.fixture(scope="module")
def tiny_exports(tiny_llama, tmp_path_factory):
    from slmops.convert import convert

    root = tmp_path_factory.mktemp("tiny-exports")
    convert(tiny_llama, root / "fp32", precision="fp32", log_level=0)
    convert(tiny_llama, root / "int4", precision="int4", log_level=0)
    text = root / "text.txt"
    text.write_text(TRAINING_TEXT * 12, encoding="utf-8")
    return root / "fp32", root / "int4", text


def test_a_model_against_itself_has_zero_divergence(tiny_exports):
    fp32, _, text = tiny_exports
    report = evaluate_quality(fp32, reference=fp32, text=text, window=64, windows=4, show_progress=False)
    figures = report.figures
    assert figures.kld_mean == pytest.approx(0.0, abs=1e-6)
    assert figures.same_top_pct == 100.0
    assert figures.delta_ppl_pct == pytest.approx(0.0, abs=1e-4)
    assert report.windows == 4 and figures.tokens == 63 + 3 * 32


def test_int4_export_diverges_from_fp32(tiny_exports):
    fp32, int4, text = tiny_exports
    figures = evaluate_quality(int4, reference=fp32, text=text, window=64, windows=4, show_progress=False).figures
    assert figures.kld_mean > 1e-4
    assert figures.dp_rms_pct > 0


def test_torch_reference_matches_the_fp32_export(tiny_exports, tiny_llama):
    fp32, _, text = tiny_exports
    figures = evaluate_quality(fp32, reference=tiny_llama, text=text, window=64, windows=2, show_progress=False).figures
    assert figures.kld_mean < 1e-4 and figures.same_top_pct > 99


def test_saved_logits_give_the_same_figures_as_the_live_reference(tiny_exports, tmp_path):
    fp32, int4, text = tiny_exports
    live = evaluate_quality(
        int4, reference=fp32, text=text, window=64, windows=3, save_logits=tmp_path / "ref", show_progress=False
    ).figures
    saved = evaluate_quality(int4, reference=tmp_path / "ref", text=text, show_progress=False).figures
    assert saved.tokens == live.tokens
    assert saved.kld_mean == pytest.approx(live.kld_mean, rel=0.02, abs=1e-4)
    assert saved.delta_ppl_pct == pytest.approx(live.delta_ppl_pct, abs=0.05)


def test_eval_cli_prints_table_and_writes_json_and_markdown(tiny_exports, tmp_path):
    from click.testing import CliRunner

    from slmops.cli import cli

    fp32, int4, text = tiny_exports
    suite = tmp_path / "suite.jsonl"
    suite.write_text('{"prompt": "hello", "not_contains": "zzzz-never"}\n')
    args = [
        "eval",
        str(int4),
        "--reference",
        str(fp32),
        "--text",
        str(text),
        "--window",
        "64",
        "--windows",
        "2",
        "--suite",
        str(suite),
        "--json",
        str(tmp_path / "e.json"),
        "--markdown",
        str(tmp_path / "e.md"),
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "mean KLD" in result.output
    data = json.loads((tmp_path / "e.json").read_text())
    assert data["quality"]["figures"]["kld_mean"] > 0 and data["suite"]["pass_rate"] == 1.0
    assert "| ΔPPL |" in (tmp_path / "e.md").read_text()
    assert data["cpu_info"] == data["quality"]["cpu_info"] == describe_cpu().to_json()
    assert f"CPU: {describe_cpu().summary()}." in (tmp_path / "e.md").read_text()
