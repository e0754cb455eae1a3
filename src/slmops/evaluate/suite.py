"""Domain test suites: one JSON case a line, the answer checked by simple matchers.

A case gives the conversation (``prompt`` with an optional ``system``, or ``messages``)
and what the answer must satisfy::

    {"name": "capital", "prompt": "What is the capital of France?", "contains": "Paris"}
    {"prompt": "Reply with JSON {\"ok\": true}", "json_schema": {"type": "object", "required": ["ok"]}}

Matchers: ``contains`` / ``not_contains`` (a string or a list; case-insensitive),
``regex`` (Python syntax, searched anywhere), ``exact`` (the whole answer, spaces
trimmed), ``json_schema`` (the answer parses as JSON and validates), ``max_tokens`` (the
answer is complete within that many tokens; also its generation budget).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from slmops.errors import UsageError, first_problem
from slmops.evaluate.completion import COMPLETION, conversation_prompt, mode_of
from slmops.evaluate.progress import progress_bar

DEFAULT_MAX_TOKENS = 128
STRUCTURAL = ("json_schema", "regex")


class Case(BaseModel):
    """One line of a suite."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, description="A label for the report; default: the line number.")
    prompt: str | None = Field(None, description="The user's message (or give `messages`).")
    system: str | None = Field(None, description="A system message put before the conversation.")
    messages: list[dict[str, Any]] | None = Field(None, description="A whole conversation, OpenAI style.")
    contains: str | list[str] | None = Field(None, description="Text(s) the answer must contain (case-insensitive).")
    not_contains: str | list[str] | None = Field(
        None, description="Text(s) the answer must not contain (case-insensitive)."
    )
    regex: str | None = Field(None, description="A Python regular expression the answer must match somewhere.")
    exact: str | None = Field(None, description="The whole expected answer, leading and trailing spaces ignored.")
    json_schema: dict[str, Any] | None = Field(None, description="The answer must be JSON valid against this schema.")
    max_tokens: int | None = Field(None, gt=0, description="The answer must end within this many tokens.")

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"regex does not compile: {exc}") from exc
        return value

    @field_validator("json_schema")
    @classmethod
    def _schema(cls, value: dict | None) -> dict | None:
        if value is not None:
            import jsonschema

            try:
                jsonschema.validators.validator_for(value).check_schema(value)
            except jsonschema.SchemaError as exc:
                raise ValueError(f"json_schema is not a valid schema: {exc.message}") from exc
        return value

    @model_validator(mode="after")
    def _one_conversation(self) -> Case:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of `prompt` or `messages`")
        return self

    def conversation(self) -> list[dict]:
        messages = list(self.messages) if self.messages is not None else [{"role": "user", "content": self.prompt}]
        return ([{"role": "system", "content": self.system}] if self.system else []) + messages

    def structural(self) -> bool:
        return any(getattr(self, key) is not None for key in STRUCTURAL)


@dataclass
class CaseResult:
    name: str
    passed: bool
    failures: list[str]
    answer: str
    structural: bool
    seconds: float


@dataclass
class SuiteReport:
    """Pass rate of a suite, and each failure with the answer that failed."""

    suite: str
    total: int
    passed: int
    results: list[CaseResult] = field(default_factory=list)

    @property
    def pass_rate(self) -> float:
        return self.passed / self.total if self.total else 0.0

    def failures(self) -> list[CaseResult]:
        return [result for result in self.results if not result.passed]

    def to_json(self) -> dict:
        return {**asdict(self), "pass_rate": self.pass_rate}


def load_suite(path: str | Path) -> list[Case]:
    """Parse a suite file; a bad line stops with its line number and what is wrong."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"Cannot read the suite {path}: {exc}.") from exc
    cases = []
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            case = Case.model_validate(json.loads(line))
        except json.JSONDecodeError as exc:
            raise UsageError(f"{path} line {number}: not valid JSON ({exc.msg} at column {exc.colno}).") from exc
        except ValidationError as exc:
            raise UsageError(f"{path} line {number}: {_first_error(exc)}.") from exc
        cases.append(case.model_copy(update={"name": case.name or f"line {number}"}))
    if not cases:
        raise UsageError(f"{path} has no test case; write one JSON object a line.")
    return cases


def check(case: Case, answer: str, completion_tokens: int | None = None, finish_reason: str | None = None) -> list[str]:
    """What the answer fails of the case's expectations (empty: it passes)."""
    failures = []
    lowered = answer.lower()
    for text in _as_list(case.contains):
        if text.lower() not in lowered:
            failures.append(f"does not contain {text!r}")
    for text in _as_list(case.not_contains):
        if text.lower() in lowered:
            failures.append(f"contains {text!r}")
    if case.regex is not None and not re.search(case.regex, answer):
        failures.append(f"does not match /{case.regex}/")
    if case.exact is not None and answer.strip() != case.exact.strip():
        failures.append(f"is not exactly {case.exact!r}")
    if case.json_schema is not None:
        failures.extend(_check_json(answer, case.json_schema))
    if case.max_tokens is not None and finish_reason == "length":
        failures.append(f"did not end within {case.max_tokens} tokens")
    return failures


def run_suite(
    model, cases: list[Case], *, suite: str = "suite", max_tokens: int = DEFAULT_MAX_TOKENS, show_progress: bool = True
) -> SuiteReport:
    """Answer every case greedily with ``model`` and check it.

    A chat model (anything with ``.chat``) answers each conversation; a base model (no chat
    template, see :mod:`slmops.evaluate.completion`) completes it given as plain text.
    """
    report = SuiteReport(suite=suite, total=len(cases), passed=0)
    completes = mode_of(model) == COMPLETION
    with progress_bar("suite", len(cases), show_progress) as advance:
        for case in cases:
            started = time.perf_counter()
            text, tokens, finish = _answer(model, case, case.max_tokens or max_tokens, completes)
            failures = check(case, text, tokens, finish)
            report.results.append(
                CaseResult(
                    case.name or "", not failures, failures, text, case.structural(), time.perf_counter() - started
                )
            )
            report.passed += not failures
            advance()
    return report


def _answer(model, case: Case, max_tokens: int, completes: bool) -> tuple[str, int | None, str | None]:
    """The answer's text, completion tokens and finish reason (None where a test double lacks them)."""
    if completes:
        prompt, stop = conversation_prompt(case.conversation())
        ends = {"stop": stop} if stop else {}  # none: the model's own stop strings hold
        result = model.generate(prompt, max_tokens=max_tokens, temperature=0.0, **ends)
        # A chat answer comes without the whitespace it opens with; so does a completion here,
        # so that anchored matchers (regex ^, exact) read both alike.
        text = result.text.lstrip()
    else:
        result = model.chat(case.conversation(), max_tokens=max_tokens, temperature=0.0)
        text = result.text
    return text, getattr(result, "completion_tokens", None), getattr(result, "finish_reason", None)


def _check_json(answer: str, schema: dict) -> list[str]:
    import jsonschema

    text = answer.strip()
    fenced = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", text, flags=re.DOTALL)
    try:
        value = json.loads(fenced.group(1) if fenced else text)
    except json.JSONDecodeError as exc:
        return [f"is not JSON ({exc.msg})"]
    error = jsonschema.exceptions.best_match(jsonschema.validators.validator_for(schema)(schema).iter_errors(value))
    return [] if error is None else [f"does not fit the JSON schema: {error.message}"]


def _as_list(value: str | list[str] | None) -> list[str]:
    return [] if value is None else [value] if isinstance(value, str) else list(value)


def _first_error(exc: ValidationError) -> str:
    where, message, kind, _ = first_problem(exc)
    if kind == "extra_forbidden":
        return f"unknown key {where!r}; known keys: {', '.join(Case.model_fields)}"
    return f"{where}: {message}" if where else message
