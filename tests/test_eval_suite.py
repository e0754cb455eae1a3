"""Suite files: each matcher passing and failing, and clear errors for bad lines."""

import json
from dataclasses import dataclass

import pytest

from slmops.errors import UsageError
from slmops.evaluate.suite import Case, check, load_suite, run_suite


@pytest.mark.parametrize(
    "expectation, good, bad",
    [
        ({"contains": "Paris"}, "The capital is paris.", "It is Lyon."),
        ({"contains": ["Paris", "France"]}, "Paris, France", "Paris, Texas"),
        ({"not_contains": "sorry"}, "Here you go.", "Sorry, I cannot."),
        ({"regex": r"^\d{3}-\d{4}$"}, "555-1234", "call 555-1234 now"),
        ({"exact": "yes"}, "  yes\n", "yes."),
        (
            {"json_schema": {"type": "object", "required": ["a"], "properties": {"a": {"type": "integer"}}}},
            '```json\n{"a": 1}\n```',
            '{"a": "one"}',
        ),
    ],
)
def test_each_matcher_passes_and_fails(expectation, good, bad):
    case = Case(prompt="q", **expectation)
    assert check(case, good) == []
    assert check(case, bad) != []


def test_json_schema_reports_answers_that_are_not_json():
    case = Case(prompt="q", json_schema={"type": "object"})
    assert check(case, "not json at all") == ["is not JSON (Expecting value)"]


def test_max_tokens_fails_an_answer_cut_by_the_limit():
    case = Case(prompt="q", max_tokens=8)
    assert check(case, "a long answer", completion_tokens=8, finish_reason="length") == ["did not end within 8 tokens"]
    assert check(case, "short", completion_tokens=3, finish_reason="stop") == []


def _write(tmp_path, lines):
    path = tmp_path / "suite.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_malformed_json_line_names_its_line_number(tmp_path):
    path = _write(tmp_path, ['{"prompt": "a", "contains": "x"}', "", '{"prompt": "b", contains: "y"}'])
    with pytest.raises(UsageError, match=r"line 3: not valid JSON"):
        load_suite(path)


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"prompt": "a", "contain": "x"}', r"line 1: unknown key 'contain'"),
        ('{"contains": "x"}', r"line 1: give exactly one of `prompt` or `messages`"),
        ('{"prompt": "a", "regex": "("}', r"line 1: regex: regex does not compile"),
        ('{"prompt": "a", "max_tokens": 0}', r"line 1: max_tokens"),
        ('{"prompt": "a", "json_schema": {"type": 5}}', r"line 1: json_schema: json_schema is not a valid schema"),
    ],
)
def test_invalid_cases_are_refused_with_the_reason(tmp_path, line, message):
    with pytest.raises(UsageError, match=message):
        load_suite(_write(tmp_path, [line]))


def test_shipped_example_suite_parses():
    from slmops.evaluate.validate import default_suite

    cases = load_suite(default_suite())
    assert len(cases) >= 8
    assert any(case.json_schema for case in cases) and any(case.regex for case in cases)


@dataclass
class _Answer:
    text: str
    completion_tokens: int = 3
    finish_reason: str = "stop"


class _Parrot:
    """Answers with the last user message, upper-cased."""

    def __init__(self):
        self.calls = []

    def chat(self, messages, **options):
        self.calls.append((messages, options))
        return _Answer(messages[-1]["content"].upper())


def test_run_suite_reports_pass_rate_and_each_failure_with_its_answer(tmp_path):
    path = _write(
        tmp_path,
        [
            json.dumps({"name": "echo", "prompt": "paris", "contains": "PARIS"}),
            json.dumps({"prompt": "lyon", "system": "be brief", "contains": "PARIS", "max_tokens": 5}),
        ],
    )
    parrot = _Parrot()
    report = run_suite(parrot, load_suite(path), show_progress=False)
    assert (report.total, report.passed, report.pass_rate) == (2, 1, 0.5)
    failure = report.failures()[0]
    assert failure.name == "line 2" and failure.answer == "LYON" and "does not contain 'PARIS'" in failure.failures[0]
    messages, options = parrot.calls[1]
    assert messages[0] == {"role": "system", "content": "be brief"} and options["max_tokens"] == 5
