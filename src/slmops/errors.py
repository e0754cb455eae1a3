"""Errors whose message is meant for the user.

The CLI prints ``Error: <message>`` on one line and exits with ``exit_code``;
``--verbose`` adds the traceback. Anything else that escapes is a bug.
"""

from __future__ import annotations

from typing import Any, NamedTuple


class SlmopsError(Exception):
    """Base class: the message says what is wrong and what to do."""

    exit_code = 1


class UsageError(SlmopsError):
    """A flag, argument or config value is invalid."""

    exit_code = 2


class ConversionError(SlmopsError):
    """A model could not be converted."""


class UnsupportedArchitecture(ConversionError):
    """The model's architecture has no ONNX builder."""


class ModelNotFound(SlmopsError):
    """No cached model or folder matches the name."""


class CacheError(SlmopsError):
    """The model cache could not be read or changed."""


class ContextTooLong(SlmopsError):
    """A prompt does not fit in the model's context window."""


class ServiceError(SlmopsError):
    """The background service could not be reached, started or stopped."""


class ValidationProblem(NamedTuple):
    """The first error of a pydantic ValidationError, in the pieces a one-line message is made of."""

    where: str  # the dotted path of the field; "" for a rule across fields
    message: str  # pydantic's text, without its "Value error, " prefix
    kind: str  # pydantic's error type, e.g. "extra_forbidden", "missing"
    loc: tuple[Any, ...]


def first_problem(exc: Any) -> ValidationProblem:
    """The first error of ``exc``, a pydantic ValidationError."""
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"])
    return ValidationProblem(where, error["msg"].removeprefix("Value error, "), error["type"], tuple(error["loc"]))
