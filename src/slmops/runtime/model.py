"""A loaded model: `slmops.load(name_or_path)` and what it can do."""

from __future__ import annotations

import functools
import json
import operator
import threading
import time
from collections.abc import Iterable, Iterator
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnxruntime_genai as og

from slmops import machine
from slmops.cache.resolver import resolve
from slmops.errors import ContextTooLong, SlmopsError, UsageError
from slmops.modelfolder import draft_cost
from slmops.modelfolder.folder import ModelFolder
from slmops.modelfolder.messages import normalize
from slmops.runtime import prompt as prompts
from slmops.runtime import speculative
from slmops.runtime.generate import (
    Answer,
    Response,
    Result,
    append_prompt,
    collect,
    decode_loop,
    stream_tokens,
    strip_leading,
)
from slmops.runtime.json_drafts import TokenText
from slmops.runtime.options import GenerationOptions, model_defaults
from slmops.runtime.threads import default_threads

if TYPE_CHECKING:
    from slmops.runtime.guided import Grammars


def load(name_or_path: str | Path, threads: int | None = None) -> Model:
    """Load a cached model by name, or a model folder by path.

    Args:
        name_or_path: a name listed by `slmops cache ls`, or a folder holding
            ``genai_config.json`` (and optionally ``inference_model.json``); the
            rule is :func:`slmops.cache.resolver.resolve`'s.
        threads: intra-op threads; None counts the CPUs this process may use.

    Returns:
        A :class:`Model`.

    Raises:
        ModelNotFound: no such cached model or model folder.
    """
    return Model.from_folder(resolve(name_or_path), threads)


def check_text_model(folder: ModelFolder) -> None:
    """Raises UsageError for an embedding model: it makes vectors, and cannot chat or generate."""
    if folder.is_embedding:
        raise UsageError(
            f"{folder.name} is an embedding model: it makes vectors, not text; "
            "embed with it (slmops.load(...).embed, POST /v1/embeddings) or chat with a text model."
        )


class Model:
    """A model loaded on onnxruntime-genai, ready to chat and generate.

    Attributes:
        name: the ``Name`` of its inference_model.json, else the folder name.
        folder: the :class:`~slmops.modelfolder.folder.ModelFolder` it was loaded from.
        path: its folder.
        og_model, tokenizer: the onnxruntime-genai ``Model`` and ``Tokenizer``; a model
            loaded with ``defer_generator`` loads its ``og.Model`` on first use.
        inference_model: its parsed inference_model.json, or None.
        genai_config: its parsed genai_config.json.
        context_length: tokens of prompt plus answer it can hold.
        defaults: its default :class:`GenerationOptions`.
        stop_token_ids: tokens that end an answer (EOS and the template's end marker).
        threads: intra-op threads its session runs on.
        load_s: seconds the load took.
        position_cost: what a drafted token costs a verify, in decode steps: measured on this CPU
            by `deploy` (``draft-cost.json``), else :data:`~slmops.runtime.speculative.EXTRA_POSITION`.
    """

    def __init__(
        self,
        folder: ModelFolder,
        og_model: og.Model | None,
        tokenizer: og.Tokenizer,
        threads: int,
        load_s: float,
        og_config: og.Config | None = None,
    ) -> None:
        self.folder = folder
        self.path = folder.path
        self._og_model = og_model
        self._og_config = og_config  # what loads the og.Model on first use when og_model is None
        self._og_lock = threading.Lock()
        self.tokenizer = tokenizer
        self.inference_model = folder.inference_model
        self.genai_config = folder.genai_config
        self.threads = threads
        self.load_s = load_s
        self.name = folder.name
        self.context_length = folder.context_length
        self.defaults = model_defaults(folder.search, folder.model_config)
        self.stop_token_ids = self._stop_ids()
        self.position_cost = draft_cost.read(folder.path, machine.key()) or speculative.EXTRA_POSITION

    @classmethod
    def from_folder(cls, folder: ModelFolder, threads: int | None = None, defer_generator: bool = False) -> Model:
        """Load the onnxruntime-genai model of ``folder`` with ``threads`` intra-op threads.

        Args:
            folder: the model folder.
            threads: intra-op threads; None counts the CPUs this process may use.
            defer_generator: load only the tokenizer now, and the ``og.Model`` (its own copy of
                the weights, ~140 MB for SmolLM2-135M INT4) when something first needs it; for a
                server whose batch runs the weights in a session of its own.
        """
        check_text_model(folder)
        threads = threads or default_threads()
        if threads < 1:
            raise SlmopsError(f"threads must be 1 or more, got {threads}.")
        start = time.perf_counter()
        try:
            config = og.Config(str(folder.path))
            # Set at load time, never written into the folder: the machine that serves
            # a model is not always the one that converted it.
            config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}))
            og_model = None if defer_generator else og.Model(config)
            tokenizer = og.Tokenizer(config)
        except Exception as exc:  # onnxruntime-genai raises plain RuntimeErrors
            raise SlmopsError(f"Could not load the model in {folder.path}: {exc}") from exc
        return cls(folder, og_model, tokenizer, threads, time.perf_counter() - start, config)

    @property
    def og_model(self) -> og.Model:
        """The onnxruntime-genai model, loaded now if the load deferred it."""
        if self._og_model is None:
            with self._og_lock:
                if self._og_model is None:
                    self._og_model = self._load_generator()
        return self._og_model

    @property
    def generator_loaded(self) -> bool:
        """Whether the ``og.Model`` (and its copy of the weights) is in memory."""
        return self._og_model is not None

    def _load_generator(self) -> og.Model:
        if self._og_config is None:
            raise SlmopsError(f"{self.name} has no onnxruntime-genai model to load.")
        try:
            return og.Model(self._og_config)
        except Exception as exc:
            raise SlmopsError(f"Could not load the model in {self.path}: {exc}") from exc

    def __repr__(self) -> str:
        return f"<slmops Model {self.name!r} from {self.path}, {self.threads} threads>"

    def options(self, **overrides) -> GenerationOptions:
        """The model's default options with ``overrides`` applied (None keeps a default)."""
        return self.defaults.replace(**overrides)

    @cached_property
    def grammars(self) -> Grammars | None:
        """llguidance's view of this model's vocabulary, built on first use and shared by all that
        follows a grammar itself (the batch's rows, a generator's guided greedy answers, masked
        log-probabilities); None when llguidance cannot read the tokenizer."""
        from slmops.runtime.guided import grammars_for

        return grammars_for(self)

    @cached_property
    def has_chat_template(self) -> bool:
        """False for a base model: no PromptTemplate and no tokenizer chat template to render chats with."""
        from slmops.modelfolder.prompt_template import chat_template_of

        has_template = self.inference_model is not None and self.inference_model.has_template
        return has_template or bool(chat_template_of(self.path))

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; NUL characters are dropped (they would cut C strings short)."""
        return [int(token) for token in self.tokenizer.encode(text.replace("\x00", ""))]

    @cached_property
    def text_prefix_ids(self) -> list[int]:
        """Token ids the model's tokenizer puts before raw text (a BOS for Gemma or Llama), which
        onnxruntime-genai's encode leaves out."""
        from slmops.modelfolder.prompt_template import text_prefix_ids

        return text_prefix_ids(self.path)

    def completion_ids(self, text: str) -> list[int]:
        """Token ids of raw text to complete, opened as its Hugging Face tokenizer opens it: a base
        Gemma without its BOS answers only noise."""
        ids, prefix = self.encode(text), self.text_prefix_ids
        return ids if ids[: len(prefix)] == prefix else prefix + ids

    def decode(self, ids: Iterable[int]) -> str:
        # An int32 array, not a list: converting a list, the binding turns a Ctrl-C that lands
        # mid-conversion into a TypeError (a third of them, measured), which a chat would report
        # as an error instead of stopping the answer.
        return self.tokenizer.decode(np.fromiter(ids, dtype=np.int32))

    @cached_property
    def token_text(self) -> TokenText:
        """The text of each token, kept as drafting asks for it (:mod:`slmops.runtime.json_drafts`)."""
        return TokenText(self.decode, self.encode)

    def render(self, messages: Iterable[Any]) -> str:
        """The prompt text for a chat: the PromptTemplate if the model has one, else its chat template."""
        if not self.has_chat_template:  # a base model: asking it to chat is the caller's mistake
            raise UsageError(
                f"{self.name} has no chat template (a base model): give it raw text to complete "
                "(/v1/completions, generate()), or add a PromptTemplate to its inference_model.json."
            )
        return prompts.render(normalize(messages), self.inference_model, self.tokenizer)

    def prompt_ids(self, messages: Iterable[Any], truncate: bool = False) -> list[int]:
        """Token ids of a chat's prompt.

        Raises:
            ContextTooLong: the prompt does not fit, and ``truncate`` is off or even
                the last message alone (with the system message) does not fit.
        """
        messages = normalize(messages)
        while True:
            ids = self.encode(self.render(messages))
            if len(ids) < self.context_length:
                return ids
            if not truncate or not _drop_oldest_turn(messages):
                raise self._too_long(len(ids), truncate)

    def stream_generate(
        self, prompt: str | list[int], start: float | None = None, guidance: tuple[str, str] | None = None, **options
    ) -> Iterator[Response]:
        """Prompt text or token ids -> one :class:`Response` per token, on an onnxruntime-genai generator.

        Args:
            prompt: text (no template; the BOS its tokenizer adds, if any, is added) or token ids.
            start: ``time.perf_counter()`` when the request began, if before this call.
            guidance: a decode-time grammar, ``("json_schema", schema_json)``,
                ``("regex", pattern)`` or ``("lark_grammar", grammar)``.
            **options: :class:`GenerationOptions` fields.
        """
        start = time.perf_counter() if start is None else start
        chosen = self.options(**options)
        ids = self._completion_ids(prompt)
        if not ids:
            # An empty prompt still gets an answer: start from the beginning-of-text token.
            ids = [self._start_token()]
        if len(ids) >= self.context_length:
            raise self._too_long(len(ids), False)
        loop = matcher = guide = None
        # slmops follows a guided answer's grammar itself, to mask the drafted positions too
        if speculative.applies(chosen) and guidance and (grammars := self.grammars) is not None:
            matcher = grammars.matcher(guidance)
            guide = (grammars, matcher)
        if speculative.applies(chosen) and (guide or not guidance):
            max_length = chosen.search_options(len(ids), self.context_length)["max_length"]
            penalty = chosen.repetition_penalty
            loop = functools.partial(
                speculative.speculative_loop,
                ids=ids,
                max_length=max_length,
                penalty=penalty,
                guide=guide,
                position_cost=self.position_cost,
                text=self.token_text,
            )
        return stream_tokens(
            self.og_model,
            self.tokenizer,
            ids,
            chosen,
            self.context_length,
            self.stop_token_ids,
            start,
            guidance,
            loop=loop,
            matcher=matcher,
        )

    def generate(self, prompt: str | list[int], **options) -> Result:
        """A raw completion of ``prompt`` (no chat template applied).

        Args:
            prompt: text or token ids.
            **options: :class:`GenerationOptions` fields, e.g. ``max_tokens=64, seed=1``.

        Returns:
            A :class:`Result`: text, token ids, finish reason, token counts and timings.
        """
        return collect(self.stream_generate(prompt, **options))

    def stream_chat(self, messages: Iterable[Any], truncate: bool = False, **options) -> Iterator[Response]:
        """A chat answer as :class:`Response` objects, one per token (text pieces and metrics),
        without the whitespace the answer may open with."""
        start = time.perf_counter()
        ids = self.prompt_ids(messages, truncate)
        return strip_leading(self.stream_generate(ids, start=start, **options))

    def chat(self, messages: Iterable[Any], truncate: bool = False, **options) -> Result:
        """The answer to a chat.

        Args:
            messages: ``[{"role": "user", "content": "..."}, ...]``; system, user,
                assistant and tool turns.
            truncate: when the chat is longer than the context, drop the oldest turns
                instead of raising :class:`ContextTooLong`.
            **options: :class:`GenerationOptions` fields.

        Returns:
            A :class:`Result`: text, token ids, finish reason, token counts and timings.
        """
        return collect(self.stream_chat(messages, truncate, **options))

    def conversation(self, **options) -> Conversation:
        """A chat that keeps its KV cache between turns (each turn reads only its new tokens).

        ``conversation.stream(messages, truncate=False)`` yields :class:`Response` objects
        like :meth:`stream_chat`; the options are fixed for the whole conversation.
        """
        return Conversation(self, **options)

    def stream(self, messages: Iterable[Any], truncate: bool = False, **options) -> Iterator[str]:
        """The answer to a chat as text pieces, as they are generated."""
        for response in self.stream_chat(messages, truncate, **options):
            if response.text:
                yield response.text

    def _completion_ids(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            return self.completion_ids(prompt)
        try:
            return [operator.index(token) for token in prompt]
        except TypeError:  # chat messages or None handed to a raw completion: the caller's mistake
            kinds = sorted({type(token).__name__ for token in prompt}) if isinstance(prompt, (list, tuple)) else []
            got = f"a {type(prompt).__name__} of {', '.join(kinds)}" if kinds else type(prompt).__name__
            raise UsageError(
                f"A prompt to complete is text or a list of token ids, not {got}; chat messages go to chat()."
            ) from None

    def _too_long(self, prompt_tokens: int, truncated: bool) -> ContextTooLong:
        hint = "shorten it" if truncated else "shorten it, or use --truncate / truncate=True to drop the oldest turns"
        return ContextTooLong(
            f"The prompt is {prompt_tokens} tokens but {self.name} holds {self.context_length} "
            f"(prompt plus answer); {hint}."
        )

    def _start_token(self) -> int:
        bos = self.genai_config.get("model", {}).get("bos_token_id")
        if isinstance(bos, list):
            bos = bos[0] if bos else None
        return int(bos) if bos is not None else min(self.stop_token_ids or {0})

    def _stop_ids(self) -> frozenset[int]:
        eos = self.genai_config.get("model", {}).get("eos_token_id", [])
        ids = set(eos if isinstance(eos, list) else [eos])
        ids.update(int(token) for token in self.tokenizer.eos_token_ids)
        marker = prompts.end_marker(self.inference_model)
        if marker:
            encoded = self.encode(marker)
            if len(encoded) == 1:
                ids.add(encoded[0])
        return frozenset(ids)


def _drop_oldest_turn(messages: list[dict]) -> bool:
    """Drop the oldest exchange (a user turn and the replies to it), never the system
    message or the last message; recent turns matter most to the next answer.
    Returns False when there is nothing left to drop."""
    older = [index for index, message in enumerate(messages[:-1]) if message["role"] != "system"]
    if not older:
        return False
    del messages[older[0]]
    # Chat templates expect the history to open with a user turn.
    while len(older) > 1 and messages[older[0]]["role"] not in ("user", "system") and older[0] < len(messages) - 1:
        del messages[older[0]]
    return True


class Conversation:
    """Successive answers of one chat, with options fixed for the whole chat.

    It keeps its KV cache between turns, so each turn reads only its new tokens: a
    fresh generator per answer would re-read the whole history (and, on models with a
    long context, allocate a KV cache for it every time). The next turn's prompt
    shares its beginning with what the generator holds (the history and the last
    answer), so the generator is rewound to where the two part and only the rest is
    appended.

    Args:
        model: a loaded :class:`slmops.runtime.Model`.
        **options: :class:`GenerationOptions` fields for every answer. With a seed, the
            whole conversation is reproducible (not each answer on its own).
    """

    def __init__(self, model: Model, **options) -> None:
        self.model = model
        self.options = model.options(**options)
        self.generator: og.Generator | None = None

    def stream(self, messages: Iterable[Any], truncate: bool = False) -> Iterator[Response]:
        """The answer to the chat so far, one :class:`Response` per token."""
        start = time.perf_counter()
        ids = self.model.prompt_ids(messages, truncate)
        return self._answer(ids, start)

    def _answer(self, ids: list[int], start: float) -> Iterator[Response]:
        budget = self.model.context_length - len(ids)
        limit = min(self.options.max_tokens or budget, budget)
        stream = self.model.tokenizer.create_stream()
        answer = Answer(stream, len(ids), start, self.model.stop_token_ids, self.options.stop, limit)
        generator = self._prepare(ids)
        if speculative.applies(self.options):
            penalty = self.options.repetition_penalty
            yield from speculative.speculative_loop(
                generator,
                answer,
                ids,
                self.model.context_length,
                penalty,
                position_cost=self.model.position_cost,
                text=self.model.token_text,
            )
        else:
            yield from decode_loop(generator, answer)

    def _prepare(self, ids: list[int]) -> og.Generator:
        """The generator, rewound to the longest prefix it shares with ``ids``, the rest appended."""
        if self.generator is not None:
            held = list(self.generator.get_sequence(0))
            # The last token held was generated but not yet read by the model: read it again.
            keep = min(common_prefix(held, ids), len(held) - 1, len(ids) - 1)
            if keep > 0:
                try:
                    self.generator.rewind_to(keep)
                    append_prompt(self.generator, ids[keep:])
                    return self.generator
                except RuntimeError:
                    pass  # a model that cannot rewind: start over below
        params = og.GeneratorParams(self.model.og_model)
        search = self.options.search_options(len(ids), self.model.context_length)
        search["max_length"] = self.model.context_length  # room for the turns to come
        params.set_search_options(**search)
        self.generator = og.Generator(self.model.og_model, params)
        append_prompt(self.generator, ids)
        return self.generator


def common_prefix(first: list[int], second: list[int]) -> int:
    """How many leading tokens two token lists share."""
    size = 0
    for left, right in zip(first, second):
        if left != right:
            break
        size += 1
    return size
