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
        raise APIError(400, f"{name} is not supported by slmops: {why}", name, "unsupported_parameter")


def _refused(request: SamplingFields):
    for name in ("frequency_penalty", "presence_penalty"):
        if getattr(request, name):
            yield name, "send 0 or leave it out; repetition_penalty (above 1) discourages repeats."
    if request.logit_bias:
        yield "logit_bias", "send an empty map or leave it out."
    if isinstance(request, ChatRequest):
        yield from _chat(request)
    if isinstance(request, CompletionRequest):
        yield from _completion(request)


def _chat(request: ChatRequest):
    unsupported: dict[str, Any] = {
        "audio": request.audio,
        "reasoning_effort": request.reasoning_effort,
        "functions": request.functions,
        "function_call": request.function_call,
        "web_search_options": request.web_search_options,
    }
    for name, value in unsupported.items():
        if value:
            yield name, "leave it out (use tools and tool_choice for function calls)."
    if request.modalities and set(request.modalities) != {"text"}:
        yield "modalities", "only ['text'] is available."
    if request.top_logprobs and not request.logprobs:
        yield "top_logprobs", "it needs logprobs: true."


def _completion(request: CompletionRequest):
    if request.best_of not in (None, 1, request.n):
        yield "best_of", "only 1 (or n) is available; ask for n choices instead."
    if request.suffix:
        yield "suffix", "insertion is not available; send the text to continue as prompt."
