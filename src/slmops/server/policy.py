"""Which request parameters slmops refuses: those that would change the answer and are not implemented.

A client that asks for a frequency penalty and silently gets none would trust an answer
that is not the one it asked for, so such a parameter at anything but its neutral value
is a 400 naming it. Parameters that cannot change the answer (``user``, ``metadata``,
``store``, ``service_tier``, ``parallel_tool_calls``, ``prediction``, ...) are accepted and
ignored, so the official clients' defaults keep working. docs/server.md lists them all.
"""

from __future__ import annotations

from typing import Any

from slmops.server.errors import APIError
from slmops.server.protocol import ChatRequest, CompletionRequest, SamplingFields


def check(request: SamplingFields) -> None:
    """Raises APIError (400, naming the parameter) for a parameter slmops would have to ignore."""
    for name, why in _refused(request):
        raise APIError(400, f"Unsupported parameter {name}: {why}", name, "unsupported_parameter")


def _refused(request: SamplingFields):
    for name in ("frequency_penalty", "presence_penalty"):
        if getattr(request, name):
            yield (
                name,
                "slmops does not implement it; send 0 or leave it out (repetition_penalty above 1 discourages repeats).",
            )
    if request.logit_bias:
        yield "logit_bias", "slmops does not implement it; send {} or leave it out."
    if isinstance(request, ChatRequest):
        yield from _chat(request)
    if isinstance(request, CompletionRequest):
        yield from _completion(request)


def _chat(request: ChatRequest):
    unsupported: dict[str, tuple[Any, str]] = {
        "audio": (request.audio, "slmops answers in text only."),
        "reasoning_effort": (request.reasoning_effort, "slmops does not implement it; leave it out."),
        "functions": (request.functions, "slmops takes functions as tools."),
        "function_call": (request.function_call, "slmops takes tool_choice instead."),
        "web_search_options": (request.web_search_options, "slmops does not search the web."),
    }
    for name, (value, why) in unsupported.items():
        if value:
            yield name, why
    if request.modalities and set(request.modalities) != {"text"}:
        yield "modalities", "slmops answers in text only: send ['text']."
    if request.top_logprobs and not request.logprobs:
        yield "top_logprobs", "it needs logprobs: true."


def _completion(request: CompletionRequest):
    if request.best_of not in (None, 1, request.n):
        yield "best_of", "slmops does not rank candidates; send 1, or ask for n choices."
    if request.suffix:
        yield "suffix", "slmops does not insert text; send an empty suffix or leave it out."
