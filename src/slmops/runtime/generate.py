"""The one generation path: token ids -> a stream of :class:`Response` -> a :class:`Result`.

Everything that generates (chat, one-shot prompts, the server, the benchmarks)
goes through :func:`stream_tokens`, so the metrics they report are measured the
same way.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import onnxruntime_genai as og

from slmops.runtime.options import GenerationOptions


@dataclass
class Response:
    """One generated token, as it comes.

    Attributes:
        text: the new text it completes (often "", e.g. half of a multi-byte character
            or a stop token, which is never shown).
        token: its token id.
        prompt_tokens: tokens in the prompt.
        completion_tokens: tokens generated so far, this one included.
        ttft_s: seconds from the request to the first generated token.
        decode_tokens_per_s: tokens per second after the first one, so far.
        elapsed_s: seconds since the request.
        finish_reason: None until the last response, then "stop" (a stop token or
            string) or "length" (max_tokens or the context is full).
    """

    text: str
    token: int
    prompt_tokens: int
    completion_tokens: int
    ttft_s: float
    decode_tokens_per_s: float
    elapsed_s: float
    finish_reason: str | None = None


@dataclass
class Result:
    """A whole answer and how it was generated."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    ttft_s: float
    decode_tokens_per_s: float
    total_s: float


def stream_tokens(
    og_model,
    tokenizer,
    ids: list[int],
    options: GenerationOptions,
    context_length: int,
    stop_ids: Iterable[int] = (),
    start: float | None = None,
    guidance: tuple[str, str] | None = None,
) -> Iterator[Response]:
    """Generate from prompt token ids, one :class:`Response` per token.

    Args:
        og_model, tokenizer: an ``og.Model`` and its ``og.Tokenizer``.
        ids: the prompt's token ids (at least one, shorter than ``context_length``).
        options: the generation options, defaults already applied.
        context_length: the model's context, prompt plus answer.
        stop_ids: tokens that end the answer besides the model's EOS.
        start: ``time.perf_counter()`` when the request began (default: now), so
            that tokenizing the prompt counts in the time to first token.
        guidance: an onnxruntime-genai grammar, ``(type, data)`` with type
            "json_schema", "regex" or "lark_grammar"; tokens that break it are masked.
    """
    start = time.perf_counter() if start is None else start
    params = og.GeneratorParams(og_model)
    params.set_search_options(**options.search_options(len(ids), context_length))
    if guidance:
        params.set_guidance(*guidance)
    generator = og.Generator(og_model, params)
    generator.append_tokens(ids)
    yield from decode_loop(generator, tokenizer, len(ids), options.stop, stop_ids, start)


def decode_loop(
    generator,
    tokenizer,
    prompt_tokens: int,
    stop: Iterable[str],
    stop_ids: Iterable[int],
    start: float,
    limit: int | None = None,
) -> Iterator[Response]:
    """Generate from an ``og.Generator`` whose prompt is appended, until a stop or ``limit`` tokens."""
    decoder = tokenizer.create_stream()
    stops = frozenset(stop_ids)
    stop_text = StopText(stop)
    count, first = 0, 0.0
    while True:
        generator.generate_next_token()
        token = int(generator.get_next_tokens()[0])
        now = time.perf_counter()
        count += 1
        if count == 1:
            first = now
        stopped = token in stops
        text, stopped_by_text = ("", False) if stopped else stop_text.feed(decoder.decode(token))
        finish = None
        if stopped or stopped_by_text:
            finish = "stop"
        elif generator.is_done() or count == limit:
            finish = "length"
            text += stop_text.flush()
        rate = (count - 1) / (now - first) if count > 1 and now > first else 0.0
        yield Response(text, token, prompt_tokens, count, first - start, rate, now - start, finish)
        if finish:
            return


def collect(responses: Iterable[Response]) -> Result:
    """Join a stream of responses into one :class:`Result`."""
    pieces, last = [], None
    for last in responses:
        pieces.append(last.text)
    if last is None:
        raise ValueError("an empty response stream")
    return Result(
        text="".join(pieces),
        prompt_tokens=last.prompt_tokens,
        completion_tokens=last.completion_tokens,
        finish_reason=last.finish_reason or "stop",
        ttft_s=last.ttft_s,
        decode_tokens_per_s=last.decode_tokens_per_s,
        total_s=last.elapsed_s,
    )


class StopText:
    """Cuts the answer before the first stop string, holding back text that may start one.

    A stop string can arrive split over several tokens, so the tail of the text that
    could still become one is kept until the next token decides.
    """

    def __init__(self, stops: Iterable[str]) -> None:
        self.stops = tuple(stop for stop in stops if stop)
        self.pending = ""

    def feed(self, piece: str) -> tuple[str, bool]:
        """Returns the text that is safe to show, and whether a stop string was met."""
        if not self.stops:
            return piece, False
        self.pending += piece
        found = [index for index in (self.pending.find(stop) for stop in self.stops) if index >= 0]
        if found:
            text, self.pending = self.pending[: min(found)], ""
            return text, True
        keep = max((self._overlap(stop) for stop in self.stops), default=0)
        cut = len(self.pending) - keep
        text, self.pending = self.pending[:cut], self.pending[cut:]
        return text, False

    def flush(self) -> str:
        text, self.pending = self.pending, ""
        return text

    def _overlap(self, stop: str) -> int:
        """Length of the longest end of the pending text that begins ``stop``."""
        for size in range(min(len(stop) - 1, len(self.pending)), 0, -1):
            if self.pending.endswith(stop[:size]):
                return size
        return 0
