"""Generation, token by token: one :class:`Response` per token, one :class:`Result` per answer.

Two loops produce tokens, and both hand each token to an :class:`Answer`, the one place
that turns it into text and decides when the answer ends (stop tokens, stop strings,
max_tokens, a full context, a grammar) and how long it took, so every entry point
reports the same text, finish reasons and metrics:

- :func:`stream_tokens` and :func:`decode_loop` step an onnxruntime-genai ``Generator``:
  ``Model.stream_generate`` / ``stream_chat`` / ``chat`` / ``generate``, a
  :class:`~slmops.runtime.model.Conversation`, and the server's requests that no
  batch row can hold. Sampling (temperature, top-k, top-p, repetition penalty, seed) and
  guidance run inside onnxruntime-genai there.
- :class:`~slmops.runtime.batched.BatchedDecoder` steps rows of one onnxruntime session
  for the server; it samples with :mod:`slmops.runtime.sampling` and follows grammars
  with :mod:`slmops.runtime.guided`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import onnxruntime_genai as og

from slmops.runtime.logprobs import TokenLogprob, next_token, prompt_tokens
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
            string, or a grammar that is complete or broken) or "length" (max_tokens
            or the context is full).
        logprobs: the token's log-probability and the likeliest alternatives, when asked for.
        prompt_logprobs: on the first response, when asked for: each prompt token's
            log-probability after the tokens before it (the first token has none).
        drafted_tokens, accepted_tokens: tokens drafted by prompt lookup so far, and
            those of them the model kept (see :mod:`slmops.runtime.speculative`).
    """

    text: str
    token: int
    prompt_tokens: int
    completion_tokens: int
    ttft_s: float
    decode_tokens_per_s: float
    elapsed_s: float
    finish_reason: str | None = None
    logprobs: TokenLogprob | None = None
    prompt_logprobs: list[TokenLogprob] | None = None
    drafted_tokens: int = 0
    accepted_tokens: int = 0


@dataclass(frozen=True)
class Usage:
    """Tokens an answer took, counted as the OpenAI API counts them."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


@dataclass
class Result:
    """A whole answer and how it was generated.

    Attributes:
        text: the answer.
        prompt_tokens: tokens in the prompt.
        completion_tokens: tokens generated, a final stop token included.
        finish_reason: "stop" or "length", as in :class:`Response`.
        ttft_s: seconds from the request to the first generated token.
        decode_tokens_per_s: tokens per second after the first one.
        total_s: seconds from the request to the last token.
        tokens: the generated token ids, one per completion token.
        drafted_tokens, accepted_tokens: tokens drafted by prompt lookup, and those of
            them the model kept (0 and 0 when the answer did not speculate).
    """

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    ttft_s: float
    decode_tokens_per_s: float
    total_s: float
    tokens: list[int] = field(default_factory=list)
    drafted_tokens: int = 0
    accepted_tokens: int = 0

    def usage(self) -> Usage:
        """Prompt, completion and total tokens."""
        return Usage(self.prompt_tokens, self.completion_tokens, self.prompt_tokens + self.completion_tokens)


class TokenStream(Protocol):
    """A tokenizer's incremental decoder (``og.TokenizerStream``): a token in, the text it completes out."""

    def decode(self, token: int, /) -> str: ...


class Matcher(Protocol):
    """A grammar followed token by token (``llguidance.LLMatcher``)."""

    def consume_token(self, token: int, /) -> bool: ...

    def is_stopped(self) -> bool: ...

    def get_error(self) -> str: ...


class LogitsMask(Protocol):
    """A grammar's mask over the next token's logits, followed token by token (log-probabilities
    on a generator, whose own guidance masks only what it samples)."""

    def apply(self, logits: np.ndarray, /) -> np.ndarray: ...

    def consume(self, token: int, /) -> None: ...


class Answer:
    """One answer as it is generated: each token in, its :class:`Response` out.

    Args:
        stream: the tokenizer's incremental decoder, fresh for this answer.
        prompt_tokens: tokens in the prompt.
        start: ``time.perf_counter()`` when the request began.
        stop_ids: tokens that end the answer (EOS, the template's end marker); never shown.
        stop: strings that end the answer; its text stops before them.
        limit: most tokens to generate (None: only the context limits it).
        matcher: the grammar the answer follows, if any (the batch's rows; a Generator
            applies its guidance itself). A token it rejects ends the answer and sets
            :attr:`error`; once the grammar is complete, the answer ends too.
    """

    def __init__(
        self,
        stream: TokenStream,
        prompt_tokens: int,
        start: float,
        stop_ids: Iterable[int] = (),
        stop: Iterable[str] = (),
        limit: int | None = None,
        matcher: Matcher | None = None,
    ) -> None:
        self.stream = stream
        self.prompt_tokens = prompt_tokens
        self.start = start
        self.stop_ids = frozenset(stop_ids)
        self.stop_text = StopText(stop)
        self.limit: float = math.inf if limit is None else limit
        self.matcher = matcher
        self.count = 0  # tokens generated so far
        self.first = 0.0  # when the first one came
        self.error: str | None = None  # why the answer failed (its grammar broke)

    def add(self, token: int, full: bool = False) -> Response:
        """The response to the next generated ``token``; ``full``: the context holds no more tokens."""
        # Once per token in both decode loops: written out in one function, with no allocation
        # besides the response and the text.
        now = time.perf_counter()
        self.count += 1
        count = self.count
        if count == 1:
            self.first = now
        text, finish, matcher = "", None, self.matcher
        if token in self.stop_ids:  # never shown; a grammar's mask lets one through only once complete
            finish = "stop"
        elif matcher is not None and not matcher.consume_token(token):  # never shown either
            self.error = f"the grammar broke: {matcher.get_error() or 'no token was allowed'}"
            finish = "stop"
        else:
            text, stopped = self.stop_text.feed(self.stream.decode(token))
            if stopped:
                finish = "stop"
            elif matcher is not None and matcher.is_stopped():  # complete, and nothing may follow
                finish = "stop"
            elif full or count >= self.limit:
                finish = "length"
            if finish and not stopped:
                text += self.stop_text.flush()  # what might have begun a stop string is answer text after all
        first = self.first
        rate = (count - 1) / (now - first) if count > 1 and now > first else 0.0
        return Response(text, token, self.prompt_tokens, count, first - self.start, rate, now - self.start, finish)

    def nothing(self) -> Response:
        """The one response of an answer of no tokens (max_tokens 0: the prompt is only scored)."""
        elapsed = time.perf_counter() - self.start
        return Response("", -1, self.prompt_tokens, 0, elapsed, 0.0, elapsed, "length")

    def shown(self, token: int) -> bool:
        """Whether ``token`` belongs to the answer: a stop token ending it does not."""
        return token not in self.stop_ids


def stream_tokens(
    og_model: og.Model,
    tokenizer: og.Tokenizer,
    ids: list[int],
    options: GenerationOptions,
    context_length: int,
    stop_ids: Iterable[int] = (),
    start: float | None = None,
    guidance: tuple[str, str] | None = None,
    logprobs: int | None = None,
    prompt_logprobs: int | None = None,
    mask: LogitsMask | None = None,
    loop: Callable[[og.Generator, Answer], Iterator[Response]] | None = None,
    matcher: Matcher | None = None,
) -> Iterator[Response]:
    """Generate from prompt token ids on a fresh ``og.Generator``, one :class:`Response` per token.

    Args:
        og_model, tokenizer: an ``og.Model`` and its ``og.Tokenizer``.
        ids: the prompt's token ids (at least one, shorter than ``context_length``).
        options: the generation options, defaults already applied; onnxruntime-genai samples with them.
        context_length: the model's context, prompt plus answer.
        stop_ids: tokens that end the answer besides the model's EOS.
        start: ``time.perf_counter()`` when the request began (default: now), so
            that tokenizing the prompt counts in the time to first token.
        guidance: an onnxruntime-genai grammar, ``(type, data)`` with type
            "json_schema", "regex" or "lark_grammar"; tokens that break it are masked.
        logprobs: report each token's log-probability with this many alternatives (None: not).
        prompt_logprobs: likewise for the prompt's tokens, on the first response.
        mask: the ``guidance`` grammar's mask, applied to the logits the log-probabilities come from.
        loop: what steps the generator once the prompt is in (default :func:`decode_loop`;
            :func:`slmops.runtime.speculative.speculative_loop` for greedy answers).
        matcher: the ``guidance`` grammar's matcher when ``loop`` follows it itself: the
            generator then gets no guidance of its own, and the answer ends with the grammar.
    """
    start = time.perf_counter() if start is None else start
    params = og.GeneratorParams(og_model)
    params.set_search_options(**options.search_options(len(ids), context_length))
    if guidance and matcher is None:
        params.set_guidance(*guidance)
    generator = og.Generator(og_model, params)
    if prompt_logprobs is None:
        append_prompt(generator, ids)
    else:  # every position's logits are read below
        generator.append_tokens(ids)
    answer = Answer(tokenizer.create_stream(), len(ids), start, stop_ids, options.stop, matcher=matcher)
    scores = None
    if prompt_logprobs is not None:  # appending the prompt computed the logits of all its positions
        scores = prompt_tokens(generator.get_output("logits")[0], ids, prompt_logprobs)
    if loop is not None and (matcher is not None or (logprobs is None and scores is None and mask is None)):
        yield from loop(generator, answer)
    else:  # log-probabilities: one token a step
        yield from decode_loop(generator, answer, logprobs, scores, mask)


# Prompt tokens a generator reads at once. onnxruntime-genai computes the logits of every position it
# reads, a [positions, vocabulary] float tensor, though generation reads the last one only. Qwen2.5-0.5B,
# 1,911-token prompt, 2 threads: all at once 13.2 s and 4.3 GB peak RSS; 512 at a time 7.3 s, 1.5 GB;
# 256 at a time 7.0 s, 1.0 GB (the same last logits). Through Model.stream_generate, 128 at a time kept
# the TTFT (3.82 s against 3.81) and took 888 MB instead of 988 (979 against 1,312 with a screened head).
PREFILL_CHUNK = 128


def append_prompt(generator: og.Generator, ids: list[int]) -> None:
    """Append ``ids`` to ``generator`` :data:`PREFILL_CHUNK` tokens at a time; a caller that reads every
    position's logits (prompt log-probabilities) appends them whole instead."""
    for start in range(0, len(ids), PREFILL_CHUNK):
        generator.append_tokens(ids[start : start + PREFILL_CHUNK])


def score_prompt(og_model: og.Model, ids: list[int], top: int, start: float | None = None) -> Iterator[Response]:
    """The one response of an answer of no tokens, carrying the log-probability of each prompt token."""
    start = time.perf_counter() if start is None else start
    scores = []
    if len(ids) > 1:  # a lone token has nothing before it to be scored after
        params = og.GeneratorParams(og_model)
        params.set_search_options(max_length=len(ids), num_beams=1, do_sample=False)
        generator = og.Generator(og_model, params)
        generator.append_tokens(ids)
        scores = prompt_tokens(generator.get_output("logits")[0], ids, top)
    response = Answer(_NoText(), len(ids), start).nothing()
    response.prompt_logprobs = scores
    yield response


class _NoText:
    def decode(self, token: int, /) -> str:
        return ""


def decode_loop(
    generator: og.Generator,
    answer: Answer,
    logprobs: int | None = None,
    prompt_scores: list[TokenLogprob] | None = None,
    mask: LogitsMask | None = None,
) -> Iterator[Response]:
    """Step an ``og.Generator`` whose prompt is appended until ``answer`` ends.

    The generator's ``max_length`` ends the answer with "length" when ``answer`` has no lower limit.
    With ``logprobs``, each token carries its log-probability under the logits it was picked
    from (the generator's last output, masked by ``mask``); ``prompt_scores`` go on the first response.
    """
    while True:
        generator.generate_next_token()
        token = int(generator.get_next_tokens()[0])
        response = answer.add(token, generator.is_done())
        if logprobs is not None and answer.shown(token):
            logits = generator.get_output("logits")[0, -1]
            response.logprobs = next_token(mask.apply(logits) if mask else logits, token, logprobs)
        if mask is not None:
            mask.consume(token)
        response.prompt_logprobs, prompt_scores = prompt_scores, None
        yield response
        if response.finish_reason:
            return


def collect(responses: Iterable[Response]) -> Result:
    """Join a stream of responses into one :class:`Result`."""
    pieces, tokens, last = [], [], None
    for last in responses:
        pieces.append(last.text)
        tokens.append(last.token)
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
        tokens=tokens,
        drafted_tokens=last.drafted_tokens,
        accepted_tokens=last.accepted_tokens,
    )


class LeadingWhitespace:
    """Drops the whitespace a chat answer opens with, over as many responses as it spans.

    Chat templates that end in "assistant" without a line break make models open with one.
    """

    def __init__(self) -> None:
        self.seen_text = False

    def strip(self, response: Response) -> Response:
        """``response``, its text stripped while no answer text has come yet."""
        if not self.seen_text:
            response.text = response.text.lstrip()
            self.seen_text = bool(response.text)
        return response


def strip_leading(responses: Iterable[Response]) -> Iterator[Response]:
    """``responses`` without the whitespace the answer opens with (see :class:`LeadingWhitespace`)."""
    leading = LeadingWhitespace()
    for response in responses:
        yield leading.strip(response)


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
