"""`slmops validate`: the checklist on test-only model doubles built to pass or fail, and on SmolLM2."""

import json
import mmap
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from slmops.errors import UsageError
from slmops.evaluate import edge_cases
from slmops.evaluate.report import validation_markdown
from slmops.evaluate.validate import FAIL, PASS, check_edge_cases, check_lengths, check_memory, validate
from slmops.machine import describe_cpu


@dataclass
class _Result:
    text: str
    completion_tokens: int = 4
    finish_reason: str = "stop"
    ttft_s: float = 0.01
    decode_tokens_per_s: float = 100.0


class GoodDouble:
    """Answers every suite question right, in constant memory, at steady speed."""

    name = "good-double"
    context_length = 2048
    answers = {
        "France": "Paris",
        "Japan": "Tokyo",
        "Italy": "Rome",
        "Kingdom": "London",
        "water": "H2O",
        "spider": "8",
        "week": "7",
        "Romeo": "Shakespeare",
        "hot": "cold",
        "Red Planet": "Mars",
        "Brazil": "Portuguese",
        "fruits": "- apple\n- pear\n- plum",
    }

    def encode(self, text):
        return list(range(len(text.split())))

    def _answer(self, messages):
        if not isinstance(messages, list) or any(not isinstance(m, dict) or "content" not in m for m in messages):
            raise UsageError("messages must be a list of role/content objects")
        last = messages[-1]["content"]
        if last.startswith("Country: "):
            country = last.removeprefix("Country: ")
            return json.dumps({"country": country, "capital": "Paris" if country == "France" else "Tokyo"})
        return next((answer for key, answer in self.answers.items() if key in last), "ok")

    def chat(self, messages, **options):
        if options.get("temperature", 0) < 0:
            raise UsageError("temperature must be 0 or more")
        return _Result(self._answer(messages))

    def stream(self, messages, **options):
        yield self.chat(messages, **options).text

    def generate(self, ids, **options):
        return _Result("x", completion_tokens=options["max_tokens"], ttft_s=0.001 * len(ids))


class LeakyDouble(GoodDouble):
    """Keeps 2 MB per call, the way a cache that never evicts would.

    The pages are mapped afresh, not taken from the heap: earlier tests in the same
    process leave freed heap memory that would hide a small leak from RSS.
    """

    name = "leaky-double"

    def __init__(self):
        self.kept = []

    def chat(self, messages, **options):
        block = mmap.mmap(-1, 2 << 20)
        block.write(bytes(range(256)) * 8192)
        self.kept.append(block)
        return super().chat(messages, **options)


class CrashyDouble(GoodDouble):
    """Crashes on NUL bytes, as a C string boundary would."""

    name = "crashy-double"

    def stream(self, messages, **options):
        if any("\x00" in str(message.get("content", "")) for message in messages if isinstance(message, dict)):
            raise RuntimeError("embedded null byte")
        yield from super().stream(messages, **options)


class SegfaultDouble(GoodDouble):
    """Dies of SIGSEGV on NUL bytes, as a native library reading past a C string would."""

    def stream(self, messages, **options):
        if any("\x00" in str(message.get("content", "")) for message in messages if isinstance(message, dict)):
            os.kill(os.getpid(), signal.SIGSEGV)
        yield from super().stream(messages, **options)


class AbortDouble(GoodDouble):
    """Aborts (SIGABRT) on emoji, as a failed native assertion would."""

    def stream(self, messages, **options):
        if any("😀" in str(message.get("content", "")) for message in messages if isinstance(message, dict)):
            os.abort()
        yield from super().stream(messages, **options)


class BaseDouble(GoodDouble):
    """A base model: no chat template, so it refuses chats as Model does and completes raw text,
    answering the prompt's last line after a space (as a tokenizer's first piece often starts)."""

    name = "base-double"
    has_chat_template = False

    def __init__(self):
        self.prompts = []
        self.stops = {}

    def chat(self, messages, **options):
        raise UsageError("base-double has no chat template (a base model)")

    def generate(self, prompt, **options):
        if not isinstance(prompt, str):  # token ids: item 4's prompts
            return super().generate(prompt, **options)
        self.prompts.append(prompt)
        self.stops[prompt] = options.get("stop")
        last = prompt.rstrip("\n").rsplit("\n", 1)[-1]
        return _Result(" " + self._answer([{"role": "user", "content": last}]))

    def stream_generate(self, prompt, **options):
        if not isinstance(prompt, str):
            raise UsageError("a prompt to complete is text or token ids")
        if options.get("temperature", 0) < 0:
            raise UsageError("temperature must be 0 or more")
        yield _Result(self.generate(prompt, **options).text)


class HangingDouble(GoodDouble):
    """Never finishes a huge max_tokens request."""

    def stream(self, messages, **options):
        if options.get("max_tokens") == 10**9:
            time.sleep(120)
        yield from super().stream(messages, **options)


def test_a_good_model_passes_all_five_items():
    report = validate(GoodDouble(), soak=20, show_progress=False)
    assert [check.item for check in report.checks] == [1, 2, 3, 4, 5]
    assert [check.status for check in report.checks] == [PASS] * 5, [c.summary for c in report.checks]
    assert report.passed and report.suite.pass_rate == 1.0
    assert report.mode == "chat"  # a double without has_chat_template is a chat model


def test_a_leaking_model_fails_item_3():
    check = check_memory(LeakyDouble(), soak=20, show_progress=False)
    assert check.status == FAIL
    assert check.evidence["slope_bytes_per_generation"] > 1.5 * 2**20


def test_a_model_that_crashes_on_nul_fails_item_5():
    check = check_edge_cases(CrashyDouble())
    assert check.status == FAIL
    assert "control characters and NUL: crash: RuntimeError" in check.summary


def test_a_hanging_edge_case_is_reported_not_waited_for():
    started = time.monotonic()
    check = check_edge_cases(HangingDouble(), timeout_s=3)
    assert check.status == FAIL and "huge max_tokens: hang: no result after 3 s" in check.summary
    outcomes = {outcome["case"]: outcome for outcome in check.evidence["cases"]}
    assert outcomes["negative temperature"]["ok"]  # the cases after the hang still ran, in a new child
    assert outcomes["negative temperature"]["process"] != outcomes["huge max_tokens"]["process"]
    assert time.monotonic() - started < 60


@pytest.mark.parametrize(
    "double, case, signal_name",
    [
        (SegfaultDouble, "control characters and NUL", "SIGSEGV"),
        (AbortDouble, "emoji, CJK and RTL text", "SIGABRT"),
    ],
)
def test_a_model_that_kills_its_process_fails_item_5_naming_the_case(double, case, signal_name):
    check = check_edge_cases(double(), timeout_s=30)
    assert check.status == FAIL
    assert f"{case}: crash: the process killed by {signal_name}" in check.summary
    outcomes = check.evidence["cases"]
    assert [outcome["case"] for outcome in outcomes] == [case.name for case in edge_cases.cases(double())]
    assert [outcome["case"] for outcome in outcomes if not outcome["ok"]] == [case]
    assert all(isinstance(outcome["process"], int) for outcome in outcomes)


def test_a_model_only_this_process_can_make_runs_its_cases_in_process():
    class Local(GoodDouble):
        pass

    check = check_edge_cases(Local())
    assert check.status == PASS and {o["process"] for o in check.evidence["cases"]} == {"in-process"}


def test_validate_fails_items_1_and_2_when_the_suite_fails(tmp_path):
    suite = tmp_path / "suite.jsonl"
    suite.write_text('{"prompt": "France?", "regex": "^Lyon$"}\n{"prompt": "Japan?", "contains": "Tokyo"}\n')
    report = validate(GoodDouble(), suite=suite, soak=10, show_progress=False)
    statuses = {check.item: check.status for check in report.checks}
    assert statuses[1] == FAIL and statuses[2] == FAIL and not report.passed


def test_slow_ttft_growth_fails_item_4():
    class Quadratic(GoodDouble):
        def generate(self, ids, **options):
            return _Result("x", completion_tokens=options["max_tokens"], ttft_s=1e-5 * len(ids) ** 2)

    check = check_lengths(Quadratic(), (32, 512))
    assert check.status == FAIL and "worse than linear" in check.summary


def test_validate_cli_writes_reports_and_exits_1_on_failure(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from slmops.cli import cli

    monkeypatch.setattr("slmops.runtime.load", lambda name: LeakyDouble())
    out = tmp_path / "report.json"
    result = CliRunner().invoke(
        cli, ["validate", "anything", "--soak", "20", "--json", str(out), "--markdown", str(tmp_path / "r.md")]
    )
    assert result.exit_code == 1, result.output
    data = json.loads(out.read_text())
    assert data["passed"] is False and data["checks"][2]["status"] == "FAIL"
    markdown = (tmp_path / "r.md").read_text()
    assert "| 3 | memory | FAIL |" in markdown
    # item 4's speeds hold for this CPU: the report names it, flags included
    cpu = describe_cpu()
    assert data["cpu_info"] == cpu.to_json() and data["cpu_info"]["label"] == cpu.label
    assert f"CPU: {cpu.summary()}." in markdown


@pytest.mark.slow
def test_validate_smollm2_int4_end_to_end(smollm2_int4, tmp_path):
    report = validate(smollm2_int4, soak=12, lengths=(16, 128), show_progress=False)
    assert [check.item for check in report.checks] == [1, 2, 3, 4, 5]
    by_item = {check.item: check for check in report.checks}
    # The builder's default INT4 loses answers the FP32 model gets right: item 1 reports it either way.
    assert by_item[1].status == (PASS if report.suite.pass_rate >= 0.9 else FAIL)
    assert report.suite.total == 14 and report.suite.passed >= 3, report.suite.failures()
    assert by_item[5].status == PASS, by_item[5].summary
    assert by_item[3].status != FAIL and by_item[4].evidence["lengths"][0]["decode_ms_per_token"] > 0
    assert "prompt over the context length" in json.dumps(by_item[5].evidence)


def test_an_advisory_suite_warns_instead_of_failing(tmp_path):
    suite = tmp_path / "suite.jsonl"
    suite.write_text('{"prompt": "France?", "regex": "^Lyon$"}\n')
    report = validate(GoodDouble(), suite=suite, soak=10, advisory_suite=True, show_progress=False)
    assert [check.status for check in report.checks[:2]] == ["WARN", "WARN"] and report.passed
    assert "not your domain" in report.checks[0].summary


def test_a_base_model_is_checked_on_raw_completions():
    model = BaseDouble()
    report = validate(model, soak=10, show_progress=False)
    assert report.mode == "completion" and report.to_json()["mode"] == "completion"
    # item 3 reads this test process's RSS: over 8 generations the allocator's own drift can reach
    # its WARN slope (+170 KB a generation, seen once in a full run), never its FAIL rise
    statuses = {check.item: check.status for check in report.checks}
    assert statuses.pop(3) != FAIL and list(statuses.values()) == [PASS] * 4, [c.summary for c in report.checks]
    assert report.suite.pass_rate == 1.0
    # a one-message case is given verbatim; a few-shot conversation as its lines, the answer the next one
    assert "What is the capital of France?" in model.prompts
    few_shot = (
        'You answer only with JSON.\nCountry: Italy\n{"country": "Italy", "capital": "Rome"}\nCountry: Spain\n'
        '{"country": "Spain", "capital": "Madrid"}\nCountry: Japan\n'
    )
    assert model.stops[few_shot] == ("\n",)  # its answer is the next line
    assert model.stops["What is the capital of France?"] is None  # the model's own stops hold
    assert {"Hello!", "Count to three."} <= set(model.prompts)  # the soak completed text too
    assert all(not result.answer.startswith(" ") for result in report.suite.results)
    cases = {outcome["case"]: outcome for outcome in report.checks[4].evidence["cases"]}
    assert list(cases) == [case.name for case in edge_cases.cases(model)]
    assert cases["chat request to a base model"]["outcome"].startswith("clear error: base-double has no chat template")
    assert cases["prompt that is not text"]["outcome"].startswith("clear error")
    markdown = validation_markdown(report)
    assert markdown.count("base model") == 1 and "every check ran on raw completions" in markdown


def test_a_base_model_edge_cases_are_raw_prompts():
    chat_names = [case.name for case in edge_cases.cases(GoodDouble())]
    raw = edge_cases.cases(BaseDouble())
    assert [case.name for case in raw[:7]] == chat_names[:7]
    assert [case.raw for case in raw] == [True] * 9 + [False]
    assert raw[0].request == "" and raw[4].request == "hello\x00world\x01\x07\x1b[31m\x7f"


def test_a_tiny_base_model_validates_on_raw_completions(tiny_onnx, tmp_path):
    """A real onnxruntime-genai model without a chat template: all five items run, none on a chat."""
    import shutil

    from slmops.runtime import load
    from tests.tiny import strip_chat_template

    folder = strip_chat_template(Path(shutil.copytree(tiny_onnx, tmp_path / "tiny-base")))
    model = load(folder, threads=1)
    assert model.has_chat_template is False
    suite = tmp_path / "suite.jsonl"
    suite.write_text(
        '{"prompt": "hello", "not_contains": "zzzz-never-said"}\n'
        '{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, '
        '{"role": "user", "content": "c"}], "regex": "(?s).*"}\n'
    )
    report = validate(model, suite=suite, soak=10, lengths=(16, 64), edge_timeout_s=60, show_progress=False)
    by_item = {check.item: check for check in report.checks}
    assert list(by_item) == [1, 2, 3, 4, 5] and report.mode == "completion"
    assert by_item[1].status == by_item[2].status == PASS, report.suite.failures()
    assert by_item[3].status != FAIL and by_item[4].evidence["lengths"][0]["prompt_tokens"] == 16
    assert by_item[5].status == PASS, by_item[5].summary
    outcomes = {outcome["case"]: outcome["outcome"] for outcome in by_item[5].evidence["cases"]}
    assert outcomes["chat request to a base model"].startswith("clear error: tiny-base has no chat template")
    assert outcomes["chat messages as the prompt"].startswith("clear error: A prompt to complete is text")
    assert outcomes["prompt over the context length"].startswith("clear error: The prompt is")
    assert outcomes["empty prompt"].startswith("answered")
