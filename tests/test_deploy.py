"""`slmops deploy`: convert -> eval -> validate -> register, and the cache untouched on failure."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

import slmops
from slmops import machine
from slmops.cache import store
from slmops.deploy import pipeline as deploys
from slmops.deploy.choice import CALIBRATED_STEPS, GGUF_EXACT
from slmops.deploy.commands import parse_quantization, usage_lines
from slmops.errors import UsageError
from slmops.machine import describe_cpu
from slmops.modelfolder import draft_cost

PASSING_SUITE = '{"name": "answers", "prompt": "hello", "not_contains": "zzzz-never-said"}\n'
FAILING_SUITE = '{"name": "impossible", "prompt": "hello", "exact": "this exact sentence will not come out"}\n'


def _suite(tmp_path, text):
    path = tmp_path / "suite.jsonl"
    path.write_text(text, encoding="utf-8")
    return path


def _cache_files():
    root = store.location()
    return sorted(str(path.relative_to(root)) for path in root.rglob("*")) if root.exists() else []


def _cheap(tmp_path) -> dict:
    """The fewest windows and answers a deploy takes, no ΔPPL limit, a suite that passes."""
    return dict(windows=1, soak=10, max_ppl_increase=None, suite=_suite(tmp_path, PASSING_SUITE))


def test_deploy_tiny_model_registers_it_with_its_report(tiny_llama, tmp_path):
    lines = []
    result = deploys.deploy(
        tiny_llama,
        name="tiny-int4",
        quantization={},
        echo=lines.append,
        **_cheap(tmp_path),
    )
    entry = store.find("tiny-int4")
    assert entry.valid and str(entry.path) == result.cached_path
    report = json.loads((entry.path / "deploy-report.json").read_text())
    assert [step["status"] for step in report["steps"]][:3] == ["done", "done", "done"]
    assert report["quality"]["figures"]["kld_mean"] > 0
    markdown = (entry.path / "deploy-report.md").read_text()
    assert "| 5 | edge cases and invalid input | PASS |" in markdown
    cpu = describe_cpu().to_json()  # the figures hold for the CPU they were measured on
    assert report["cpu_info"] == report["quality"]["cpu_info"] == report["validation"]["cpu_info"] == cpu
    assert f"CPU: {describe_cpu().summary()}." in markdown
    assert [check["item"] for check in report["validation"]["checks"]] == [1, 2, 3, 4, 5]
    assert any(line.startswith("[5] register") for line in lines)
    kept = json.loads((entry.path / draft_cost.FILENAME).read_text())
    assert kept["cpu"] == machine.key() and kept["position_cost"] > 0 and set(kept["verify_ms"]) >= {"0", "1", "8"}
    assert slmops.load(entry.path, threads=1).position_cost == kept["position_cost"]
    assert not list((deploys.settings.home() / "tmp").iterdir()), "the work folder is removed"
    assert "slmops model run tiny-int4" in "\n".join(usage_lines("tiny-int4"))


def test_deploy_a_base_model_validates_it_on_raw_completions(tiny_base_llama, tmp_path):
    """No chat template: validation completes raw text instead of stopping at the first chat."""
    import slmops

    lines = []
    deploys.deploy(
        tiny_base_llama,
        name="tiny-base",
        quantization={},
        echo=lines.append,
        **_cheap(tmp_path),
    )
    entry = store.find("tiny-base")
    report = json.loads((entry.path / "deploy-report.json").read_text())
    assert report["validation"]["mode"] == "completion" and report["validation"]["passed"]
    assert [check["item"] for check in report["validation"]["checks"]] == [1, 2, 3, 4, 5]
    assert any("(a base model: checked on raw completions)" in line for line in lines)
    markdown = (entry.path / "deploy-report.md").read_text()
    assert "tiny-base is a base model (no chat template): every check ran on raw completions" in markdown
    assert slmops.load("tiny-base").has_chat_template is False
    shown = "\n".join(usage_lines("tiny-base", base_model=True))  # what `slmops deploy` prints at the end
    assert "/v1/completions" in shown and "/v1/chat/completions" not in shown


def test_failed_validation_stops_and_leaves_the_cache_unchanged(tiny_llama, tmp_path):
    before = _cache_files()
    with pytest.raises(deploys.DeployFailed, match=r"stopped at 'validate.*item 1 domain answers.*cache is unchanged"):
        deploys.deploy(
            tiny_llama,
            name="tiny-bad",
            quantization={},
            skip_eval=True,
            soak=10,
            suite=_suite(tmp_path, FAILING_SUITE),
            echo=lambda line: None,
        )
    assert _cache_files() == before
    saved = list((deploys.settings.home() / "reports").glob("deploy-tiny-bad-*.json"))
    assert len(saved) == 1 and json.loads(saved[0].read_text())["steps"][-1]["status"] == "failed"


def test_existing_name_is_refused_before_any_work(tiny_llama, tmp_path, monkeypatch):
    deploys.deploy(
        tiny_llama,
        name="tiny-twice",
        quantization={},
        skip_eval=True,
        soak=10,
        suite=_suite(tmp_path, PASSING_SUITE),
        echo=lambda line: None,
    )
    monkeypatch.setattr(deploys, "build", lambda *args: pytest.fail("converted although the name is taken"))
    with pytest.raises(UsageError, match="already in the cache.*--force"):
        deploys.deploy(tiny_llama, name="TINY-twice", echo=lambda line: None)


def test_parse_quantization():
    assert parse_quantization("best", "int4") is None  # chosen on this CPU
    assert parse_quantization("int4-hqq-b32", "int4") == "int4-hqq-b32"
    assert parse_quantization("builder", "int4") == {}
    assert parse_quantization("algo=rtn,block_size=16,is_symmetric=false", "int4") == {
        "algo": "rtn",
        "block_size": 16,
        "is_symmetric": False,
    }
    with pytest.raises(UsageError, match="KEY=VALUE"):
        parse_quantization("k_quant", "int4")


@pytest.mark.parametrize(
    ("settings", "said"),
    [
        ({"block_size": 7}, "block_size: 7 is not supported; supported: 16, 32, 64, 128, 256"),
        ({"algo": "k_quant", "int8_share": 0.5}, "int8_share is a setting of algo=calibrated, not of algo=k_quant"),
    ],
)
def test_bad_quantization_settings_stop_the_deploy_in_one_line_before_any_work(tiny_llama, monkeypatch, settings, said):
    monkeypatch.setattr(deploys, "build", lambda *args: pytest.fail("built with settings that cannot work"))
    before = _cache_files()
    with pytest.raises(UsageError) as stopped:
        deploys.deploy(tiny_llama, name="tiny-bad", quantization=settings, echo=lambda line: None)
    assert str(stopped.value) == said and _cache_files() == before


def test_deploy_killed_mid_way_leaves_the_cache_unchanged(tiny_llama, tmp_path):
    before = _cache_files()
    command = [
        sys.executable,
        "-m",
        "slmops",
        "deploy",
        str(tiny_llama),
        "--name",
        "tiny-killed",
        "--quantization",
        "builder",
        "--skip-eval",
        "--soak",
        "2000",
        "--suite",
        str(_suite(tmp_path, PASSING_SUITE)),
    ]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1")
    )
    try:
        deadline = time.monotonic() + 180
        for line in process.stdout:  # kill it while it validates: after conversion, before registering
            if re.match(r"\[\d\] validate", line) or time.monotonic() > deadline:
                break
        time.sleep(1.0)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait(30)
    assert re.match(r"\[\d\] validate", line), line
    assert _cache_files() == before
    work = deploys.settings.home() / "tmp"
    assert len(list(work.iterdir())) == 1, "the killed deploy's work folder is left behind"
    fresh = deploys._work_folder()  # the next deploy clears folders of dead deploys
    assert list(work.iterdir()) == [fresh]


@pytest.mark.slow
def test_deploy_smollm2_end_to_end(capsys, monkeypatch):
    from click.testing import CliRunner

    from slmops.cli import cli
    from slmops.convert import calibration_text

    # The calibrated build fits in graph order on 8 of its 64 calibration windows: the full fit is two FP32
    # passes over 32,768 tokens, ~6 of this test's ~10 minutes on 2 cores, and the same code at 8 windows
    # (`python3 dev.py demo` runs it in full).
    windows = calibration_text.calibration_windows
    monkeypatch.setattr(
        calibration_text, "calibration_windows", lambda folder, n, tokens: windows(folder, min(n, 8), tokens)
    )

    result = CliRunner().invoke(cli, ["deploy", "--name", "smollm2-135m-instruct", "--windows", "1", "--soak", "10"])
    assert result.exit_code == 0, result.output
    assert "slmops serve smollm2-135m-instruct" in result.output and "curl http://127.0.0.1:" in result.output
    entry = store.find("smollm2-135m-instruct")
    report = json.loads((entry.path / "deploy-report.json").read_text())
    assert report["variant"] == report["choice"]["pick"] and report["quality"]["figures"]["same_top_pct"] > 50
    # the embedded GGUF is Q4_1: its exact blocks are a candidate beside the requantized one, at the layout
    # this CPU's kernels chose
    [calibrated] = {row["candidate"] for row in report["choice"]["rows"]} - {GGUF_EXACT, "int8"}
    block = next(block for block, steps in CALIBRATED_STEPS.items() if steps[0] == calibrated)
    assert report["choice"]["layout"].startswith(f"4-bit blocks of {block} ")
    # Greedy: the deployed defaults sample (temperature 0.7), and a sampled answer once missed Paris.
    answer = slmops.load("smollm2-135m-instruct").chat(
        [{"role": "user", "content": "What is the capital of France?"}], max_tokens=24, temperature=0
    )
    assert "Paris" in answer.text or "France" in answer.text  # which words, the CPU's kernels decide


def test_deploy_builds_the_hqq_variant_from_the_fp32_export(tiny_llama, tmp_path):
    result = deploys.deploy(
        tiny_llama,
        name="tiny-hqq",
        quantization="int4-hqq-b32-lm_head-fp32",
        echo=lambda line: None,
        **_cheap(tmp_path),
    )
    entry = store.find("tiny-hqq")
    assert result.variant == "int4-hqq-b32-lm_head-fp32" and entry.inference_model.Name == "tiny-hqq"
    assert json.loads((entry.path / "conversion.json").read_text())["quantization"]["algo"] == "hqq"
    assert 0 < result.quality["figures"]["kld_mean"] < 1


def test_a_deploy_built_the_same_way_before_is_copied_not_built_again(tiny_llama, tmp_path, monkeypatch):
    first = deploys.deploy(tiny_llama, name="tiny-first", quantization={}, echo=lambda line: None, **_cheap(tmp_path))
    built: list[str] = []
    build = deploys.build
    monkeypatch.setattr(deploys, "build", lambda variant, *args: built.append(variant.name) or build(variant, *args))
    lines: list[str] = []
    again = deploys.deploy(tiny_llama, name="tiny-again", quantization={}, echo=lines.append, **_cheap(tmp_path))
    assert built == [] and again.build == first.build and again.build["source_sha256"]
    shown = "\n".join(lines)
    assert "the export of tiny-first in the cache, built from the same source with the same settings" in shown
    assert "scored when tiny-first was deployed" in shown
    old, new = store.find("tiny-first").path, store.find("tiny-again").path
    assert (old / "model.onnx.data").read_bytes() == (new / "model.onnx.data").read_bytes()
    assert again.quality["figures"] == first.quality["figures"] and again.quality["model"] != first.quality["model"]
    assert store.find("tiny-again").inference_model.Name == "tiny-again" and (new / draft_cost.FILENAME).exists()
    assert store.find("tiny-first").valid, "the earlier model is left as it was"

    # other eval windows: the same export, scored again
    more = deploys.deploy(
        tiny_llama,
        name="tiny-first",
        quantization={},
        force=True,
        echo=lambda line: None,
        **{**_cheap(tmp_path), "windows": 2},
    )
    assert built == [] and more.quality["windows"] == 2 and "scored when" not in more.steps[2]["summary"]

    # built by other libraries than the installed ones: built again
    for entry in ("tiny-first", "tiny-again"):
        path = store.find(entry).path / "deploy-report.json"
        report = json.loads(path.read_text())
        report["build"]["versions"]["onnxruntime"] = "0.0.1"
        path.write_text(json.dumps(report))
    deploys.deploy(tiny_llama, name="tiny-third", quantization={}, echo=lambda line: None, **_cheap(tmp_path))
    assert built == ["int4"]


def test_a_source_that_is_not_a_model_stops_the_deploy_in_one_line_before_any_work(tmp_path):
    from slmops.errors import SlmopsError

    broken = tmp_path / "broken.gguf"
    broken.write_text("{", encoding="utf-8")
    before = _cache_files()
    with pytest.raises(SlmopsError) as stopped:
        deploys.deploy(broken, name="tiny-broken", echo=lambda line: None)
    assert str(stopped.value) == f"{broken} is not a GGUF file; pass a .gguf file or a Hugging Face model folder."
    assert _cache_files() == before and not list((deploys.settings.home() / "tmp").iterdir())


def test_the_calibrated_build_says_what_it_is_doing(tiny_llama, tmp_path):
    lines: list[str] = []
    deploys.deploy(
        tiny_llama, name="tiny-calibrated", quantization="int4-calibrated-b64", echo=lines.append, **_cheap(tmp_path)
    )
    step = lines.index(next(line for line in lines if line.startswith("[1] convert")))
    said = lines[step + 1 : lines.index(next(line for line in lines if line.startswith("[2]")))]
    assert any(line.startswith("    calibrating on ") for line in said), said
    assert said[-1].startswith("    done in ")
