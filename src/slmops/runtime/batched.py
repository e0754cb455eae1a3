"""Continuous batching over onnxruntime: one decode step advances every running sequence.

onnxruntime-genai batches only sequences that start together, and its Engine
needs paged attention, which its CPU models lack. The decoders it builds use
GroupQueryAttention, which reads each row's own length from the attention mask,
so rows of different lengths can share one step: each sequence owns a row of a
KV cache shared between past and present (written in place through IO binding),
and a finished one gives its row back at once. Rows stay packed at the top so
each step runs on exactly the live rows.

A new request's prompt is prefilled between two decode steps, at most
:data:`PREFILL_CHUNK` tokens a round, first come first served: its first token
waits for the prompts ahead of it, never for the running answers to finish, and
the running answers keep getting a token after every round. Short prompts are
prefilled together in groups of at most :data:`PREFILL_GROUP` tokens, each group's
first tokens handed out before the next group runs; a long prompt goes in chunks
appended to its row.

Each row's tokens are picked by :mod:`slmops.runtime.sampling` and turned into
:class:`~slmops.runtime.generate.Response` objects by an
:class:`~slmops.runtime.generate.Answer`, as the onnxruntime-genai Generator's
tokens are (stop tokens and strings, max_tokens, metrics). A sequence with a
grammar (JSON, tools) carries an llguidance matcher (:mod:`slmops.runtime.guided`):
its logits are masked before sampling, a token it rejects fails the sequence, and
it ends when the grammar is complete.

A greedy row without log-probabilities drafts by prompt lookup (:mod:`slmops.runtime.speculative`,
the generator path's drafting and policy) while it is alone in the batch, reading its last
token and its draft in one forward. A guided row drafts its grammar's forced tokens first,
drafts only what its grammar accepts, and masks every verified position's logits. Beside other rows
(``drafts_beside_others``, off: it measured slower on open chat), every row,
drafting or not, reads its last token in the shared step; a drafting row then reads its
draft in a forward of its own, in its own KV row (onnxruntime's CPU attention takes several
new positions per row only in a batch of one), keeps what greedy decoding keeps, and drops
the rest by its length alone: positions past a row's length are written over before any
step reads them.

With a :class:`~slmops.runtime.prefix.PrefixCache`, a prompt's KV cache is kept when its
row is given up (the answer finished or was cancelled), not while the row still holds it, so
the KV of a prompt lives in one place at a time. A later prompt that begins as a kept one, or
as the prompt of a running row, copies that beginning into its row and prefills only the
rest, in the same chunks (one forward per row: onnxruntime's CPU attention takes several new
positions per row after a cached beginning only in a batch of one). Prompts waiting together
that share a beginning are not prefilled together: the first goes in, the others copy its
beginning from its row; a waiting prompt identical to one just prefilled copies its whole row
and its first token's logits, and runs nothing; so does a prompt sent again, whole in the
cache, with the logits its prefill computed (:mod:`slmops.runtime.last_logits`). A finished answer is prefilled again behind
its prompt when the engine is idle (:mod:`slmops.runtime.warming`).

The session runs a copy of the graph that computes logits only where they are read
(:mod:`slmops.runtime.logits_graph`): a prompt's last position, or every position of a
prompt that is scored and of a draft that is verified.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from slmops.runtime import logits_graph
from slmops.runtime.generate import Answer, Response
from slmops.runtime.guided import Grammars
from slmops.runtime.last_logits import LastLogits
from slmops.runtime.logprobs import TokenLogprob, next_token, prompt_tokens
from slmops.runtime.model import Model, common_prefix
from slmops.runtime.options import GenerationOptions
from slmops.runtime.prefix import MIN_REUSE, Entry, PrefixCache, reusable
from slmops.runtime.rows import RowMemory
from slmops.runtime.sampling import Sampler
from slmops.runtime.speculative import MAX_DRAFT, RowDrafts, accept, applies, guided_draft
from slmops.runtime.warming import Warming, as_sent_again

if TYPE_CHECKING:
    import onnxruntime as ort
    from llguidance import LLMatcher

log = logging.getLogger("slmops.server")
KV_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
# Prompt tokens prefilled between two decode steps (rows x longest prompt when prompts go
# together). Prefill runs at roughly a tenth of the speed of a decode step per token on a
# CPU, so this bounds how long running answers pause for a newcomer.
PREFILL_CHUNK = 256
# Prompt tokens of short prompts run together. onnxruntime's prompt kernels cost about the
# same per token in a group as alone (SmolLM2-135M INT4, 2 threads, AVX-512, quiet: one
# 30-token prompt 35 ms, 8 of them 290 ms), so a burst prefilled as one group hands every
# first token out at the end; small groups hand the first ones out early, at the price of one
# more weight pass per group. For 8 prompts of 16 or 30 tokens, groups of 16 to 64 tokens gave
# the same median first token within 10%, 128 a 10-25% later one and the last one 10% sooner.
PREFILL_GROUP = 64
# Of the prefix cache's budget, the share that keeps prompts' last logits (slmops.runtime.last_logits).
LAST_LOGITS_SHARE = 16


@dataclass(eq=False)
class Sequence:
    """One request's state in the batch.

    Attributes:
        prompt: the prompt's token ids.
        options: how to generate, defaults applied.
        max_new: most tokens to generate.
        start: ``time.perf_counter()`` when the request began.
        tokens: the tokens generated so far.
        row: its row of the KV cache.
        matcher: the grammar the answer follows, if any.
        logprobs: alternatives to report with each generated token's log-probability;
            None reports none.
        prompt_logprobs: likewise for the prompt's tokens (reported on the first response);
            with ``max_new`` 0 the prompt is only scored.
        sampler, answer: what picks its tokens and what makes them responses; set by
            :meth:`BatchedDecoder.add`.
        drafts: its prompt lookup and draft policy, when it speculates (greedy, without
            log-probabilities); set by :meth:`BatchedDecoder.add`.
    """

    prompt: list[int]
    options: GenerationOptions
    max_new: int
    start: float
    tokens: list[int] = field(default_factory=list)
    row: int = -1
    filled: int = 0  # prompt tokens already in the row's KV cache
    cached: int = 0  # prompt tokens copied from the prefix cache or a running row, not prefilled
    matcher: LLMatcher | None = None
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    prompt_scores: list[TokenLogprob] = field(default_factory=list, repr=False)
    drafts: RowDrafts | None = field(default=None, repr=False)  # set when the row speculates
    follow: list[int] = field(default_factory=list)  # what a next turn puts after the answer, warmed with it
    sampler: Sampler = field(init=False, repr=False)
    answer: Answer = field(init=False, repr=False)

    @property
    def length(self) -> int:
        """Tokens in the KV cache after this step's token is written."""
        return len(self.prompt) + len(self.tokens)

    @property
    def error(self) -> str | None:
        """Why the sequence failed (its grammar broke), or None."""
        return self.answer.error


class BatchedDecoder:
    """A decoder-only ONNX model run with continuously batched rows.

    Args:
        model: a loaded :class:`slmops.runtime.Model` (its folder, config, tokenizer, stop tokens).
        rows: sequences decoded at once.
        max_length: tokens per row (prompt plus answer); longer requests go elsewhere.
        prefix_budget: bytes of KV cache kept for prefix reuse (0: none).
    """

    def __init__(self, model: Model, rows: int, max_length: int, prefix_budget: int = 0) -> None:
        decoder = model.genai_config["model"]["decoder"]
        self.layers, self.names = decoder["num_hidden_layers"], _names(decoder)
        self.session, self.picks_positions = _session(model, self.names["logits"])
        inputs = {item.name: item for item in self.session.get_inputs()}
        kv_type = KV_TYPES[inputs[self.names["past"][0]].type]
        shape = (rows, decoder["num_key_value_heads"], max_length, decoder["head_size"])
        # Resident as rows fill, handed back as they free (see slmops.runtime.rows).
        self.memory = RowMemory(2 * self.layers, shape, kv_type)
        self.cache = self.memory.buffers
        self.vocab = model.genai_config["model"]["vocab_size"]
        self.logits = np.zeros((rows, 1, self.vocab), np.float32)
        # Rows draft only while alone in the batch: beside other rows a draft costs a forward of
        # its own, and on SmolLM2 INT4 (2 threads, AVX-512) 4 open-chat streams decoded at 0.93x
        # and 8 at 0.93x their speed without drafts (4 input-grounded streams: 1.28x).
        self.drafts_beside_others = False
        self.model, self.rows, self.max_length = model, rows, max_length
        self.running: list[Sequence] = []  # decoding, in rows 0..len-1
        self.pending: collections.deque[Sequence] = collections.deque()  # admitted, prompt not yet in
        self.bindings: dict[int, ort.IOBinding] = {}
        self.firsts: dict[int, np.ndarray] = {}  # each batch size's logits positions: the one new token
        self.row_bindings: dict[int, ort.IOBinding] = {}
        # The logits after a drafting row's last token and after each drafted one.
        self.drafted = np.empty((MAX_DRAFT + 1) * self.vocab, np.float32)
        self.steps = 0  # decode steps run, for tests and metrics
        self.prompt_tokens_run = 0  # prompt positions run (padding too): what a round's prefill spends
        self.prefix = PrefixCache(prefix_budget)
        self.last_logits = LastLogits(prefix_budget // LAST_LOGITS_SHARE)  # a prompt sent again runs nothing
        self.warming = Warming(self)  # finished answers, prefilled again when nothing else runs
        self.masks: np.ndarray | None = None
        # One thread fills grammar masks while onnxruntime computes logits (both leave the GIL).
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="slmops-grammar")
        self._grammars = self.pool.submit(lambda: model.grammars)

    @staticmethod
    def token_bytes(model: Model) -> int:
        """Bytes of KV cache one token takes in one row."""
        decoder = model.genai_config["model"]["decoder"]
        return 2 * decoder["num_hidden_layers"] * decoder["num_key_value_heads"] * decoder["head_size"] * 4

    @property
    def nbytes(self) -> int:
        return sum(buffer.nbytes for buffer in self.cache)

    @staticmethod
    def supports(model: Model) -> bool:
        """Whether ``model``'s decoder has the inputs this batching needs (and nothing more)."""
        decoder = model.genai_config.get("model", {}).get("decoder", {})
        inputs = decoder.get("inputs", {})
        plain = set(inputs) == {"input_ids", "attention_mask", "past_key_names", "past_value_names"}
        return plain and decoder.get("filename", "").endswith(".onnx") and "sessions" not in decoder

    @property
    def grammars(self) -> Grammars | None:
        """The model's :class:`~slmops.runtime.guided.Grammars`, or None when its tokenizer cannot guide."""
        return self._grammars.result()

    @property
    def free(self) -> int:
        return self.rows - len(self.running) - len(self.pending)

    @property
    def busy(self) -> int:
        """Sequences holding a row: decoding or waiting for their prompt."""
        return len(self.running) + len(self.pending)

    def fits(self, prompt_tokens: int, max_new: int) -> bool:
        return prompt_tokens + max_new <= self.max_length

    def close(self) -> None:
        """Let the grammar thread go (the model is unloaded)."""
        self.pool.shutdown(wait=False, cancel_futures=True)

    # ---- admitting and leaving ------------------------------------------

    def add(self, sequences: list[Sequence]) -> None:
        """Queue ``sequences`` for prefill, in order; :meth:`advance` brings them in."""
        for sequence in sequences:
            sequence.sampler = Sampler(sequence.options)
            sequence.answer = Answer(
                self.model.tokenizer.create_stream(),
                len(sequence.prompt),
                sequence.start,
                self.model.stop_token_ids,
                sequence.options.stop,
                sequence.max_new,
                sequence.matcher,
            )
            if sequence.max_new > 0 and sequence.logprobs is None and applies(sequence.options):
                sequence.drafts = RowDrafts(sequence.prompt, self.model.position_cost, self.model.token_text)
            self.pending.append(sequence)
        if sequences:  # its row is the first a newcomer takes (the scheduler also adds nothing)
            self.warming.stop()

    def cancel(self, sequence: Sequence) -> None:
        """Drop ``sequence``, waiting or decoding."""
        if sequence in self.pending:
            self.pending.remove(sequence)  # a half-filled row above the running ones is simply reused
            if sequence.filled:  # only the head of the line has a row, above the running ones
                self._keep(sequence)  # what of a long prompt is in serves the client's retry
                self.memory.release(sequence.row)
        elif sequence in self.running:
            self.remove(sequence)

    def remove(self, sequence: Sequence) -> None:
        """Free a running ``sequence``'s row, its prompt's KV kept: the last row moves into it so rows stay packed."""
        self._keep(sequence)
        last = self.running[-1]
        if last is not sequence:
            self._move(last, sequence.row, last.length)
            self.running[sequence.row] = last
        self.running.pop()
        self.memory.release(len(self.running))  # a pending prompt fills the row above, never this one

    def _keep(self, sequence: Sequence) -> None:
        """Keep the KV of ``sequence``'s prompt (what of it is in its row) before the row is given up.

        Only the prompt: its answer's KV was written one position at a time (see
        :mod:`slmops.runtime.prefix`). Kept now rather than once the prompt is in, the KV lives
        in the row or in the cache, never in both; meanwhile others copy it from the row.
        """
        if self.prefix.budget and sequence.filled:
            self.prefix.keep(sequence.prompt[: sequence.filled], self.cache, sequence.row)

    def _move(self, sequence: Sequence, row: int, length: int) -> None:
        self._copy_kv(sequence.row, row, length)
        sequence.row = row

    def _copy_kv(self, source: int, row: int, length: int) -> None:
        """Copy the first ``length`` positions of row ``source``'s KV cache into ``row``."""
        for buffer in self.cache:
            buffer[row, :, :length] = buffer[source, :, :length]

    # ---- one round ----------------------------------------------------------

    def advance(self) -> list[tuple[Sequence, Response]]:
        """Prefill up to :data:`PREFILL_CHUNK` waiting prompt tokens, then one decode step."""
        return [item for piece in self.round() for item in piece]

    def round(self) -> Iterator[list[tuple[Sequence, Response]]]:
        """One round, a piece of work at a time: prefill pieces, then the decode step.

        Each piece's responses come out as soon as it ran, so a caller can hand the first
        tokens of a group out before the next group is prefilled.
        """
        self.warming.stop()
        budget = self.prompt_tokens_run + PREFILL_CHUNK
        while self.pending and self.prompt_tokens_run < budget:
            yield self.prefill()
        yield self.step()

    def prefill(self) -> list[tuple[Sequence, Response]]:
        """The next piece of prefill work: whole short prompts together, or a chunk of a long one."""
        if not self.pending:
            return []
        head = self.pending[0]
        repeated = self._repeated()
        # A head with a row of its own (a chunk in, or a warmed row taken over) keeps it unless it is sent again too.
        if repeated and (not head.filled or repeated[0][0] is head):
            return self._start_repeated(repeated)
        if not head.filled:
            self._reuse(head)
        if head.filled or len(head.prompt) > PREFILL_CHUNK:
            return self._prefill_chunk(head)
        group = [head]
        for sequence in list(self.pending)[1:]:
            if self._twin(sequence, group):
                continue  # it copies that row once it is in
            longest = max(len(sequence.prompt), *(len(item.prompt) for item in group))
            if longest * (len(group) + 1) > PREFILL_GROUP or self._shares(sequence, group):
                break  # a prompt with a beginning cached, or about to be, goes on its own from it
            group.append(sequence)
        for sequence in group:
            self.pending.remove(sequence)
        return self._prefill_group(group)

    def _repeated(self) -> list[tuple[Sequence, Entry, np.ndarray]]:
        """Waiting prompts sent before, whole in the prefix cache with their last logits kept:
        each with the cache entry to copy and those logits."""
        found = []
        for sequence in self.pending:
            if (
                sequence.prompt_logprobs is not None
                or sequence.matcher is not None
                or sequence.filled > sequence.cached
            ):
                continue  # a score needs every position; a grammar's mask is filled during a forward; a chunk is in
            logits = self.last_logits.get(sequence.prompt)
            if logits is None:
                continue
            entry, size = self.prefix.holds(sequence.prompt)
            if entry is not None and size == len(sequence.prompt):
                found.append((sequence, entry, logits))
        return found

    def _start_repeated(self, found: list[tuple[Sequence, Entry, np.ndarray]]) -> list[tuple[Sequence, Response]]:
        """Copy each prompt sent again into a row of its own and start it from its kept logits, running nothing."""
        first = len(self.running)
        for offset, (sequence, entry, _) in enumerate(found):
            self.pending.remove(sequence)
            sequence.row, sequence.filled = first + offset, len(sequence.prompt)
            self.prefix.restore(entry, sequence.filled, self.cache, sequence.row)
            sequence.cached = sequence.filled
        return self._start([sequence for sequence, _, _ in found], [logits.copy() for _, _, logits in found])

    def _shares(self, sequence: Sequence, group: list[Sequence]) -> bool:
        """Whether ``sequence`` would copy a beginning from the cache or a running row, or from a
        ``group`` member once that one runs."""
        if not self.prefix.budget or sequence.prompt_logprobs is not None:
            return False
        if max(self.prefix.longest(sequence.prompt)[1], self._live(sequence.prompt, self.running)[1]) >= MIN_REUSE:
            return True
        return self._live(sequence.prompt, group)[1] >= MIN_REUSE

    @staticmethod
    def _live(prompt: list[int], rows: list[Sequence]) -> tuple[Sequence | None, int]:
        """The sequence of ``rows`` whose prompt shares the longest beginning with ``prompt``, and
        how many tokens it may reuse (:func:`~slmops.runtime.prefix.reusable`).

        Only prompts count: the positions a row decoded hold KV written one at a time.
        """
        best, size = None, 0
        for item in rows:
            shared = common_prefix(item.prompt, prompt)
            if shared > size:
                best, size = item, shared
        return best, reusable(size, prompt)

    def _twin(self, sequence: Sequence, done: list[Sequence]) -> Sequence | None:
        """The sequence of ``done`` whose row and logits ``sequence`` can copy: the same prompt, nothing else to compute."""
        if not self.prefix.budget or sequence.filled or sequence.prompt_logprobs is not None or sequence.matcher:
            return None
        return next((item for item in done if item.prompt == sequence.prompt), None)

    def _copy_twins(self, done: list[tuple[Sequence, np.ndarray]]) -> list[tuple[Sequence, np.ndarray]]:
        """Waiting sequences with the very prompt of one just prefilled, moved into rows of their own.

        Each copies that row's KV cache and the logits of its last prompt token (``done``
        pairs each prefilled sequence with them): what its own prefill would have computed.
        """
        copies: list[tuple[Sequence, np.ndarray]] = []
        logits = {id(sequence): last for sequence, last in done}
        for twin in list(self.pending):
            source = self._twin(twin, [sequence for sequence, _ in done])
            if source is None:
                continue
            self.pending.remove(twin)
            twin.row, twin.filled = len(self.running), len(twin.prompt)
            self._copy_kv(source.row, twin.row, twin.filled)
            twin.cached = twin.filled
            self.prefix.count_hit(twin.filled)
            self.running.append(twin)
            copies.append((twin, logits[id(source)]))
        return copies

    def _reuse(self, sequence: Sequence) -> None:
        """Start ``sequence`` from the longest beginning of its prompt that is cached or in a running
        row, if one is worth copying."""
        if not self.prefix.budget or sequence.prompt_logprobs is not None:  # scoring needs every position
            return
        entry, size = self.prefix.longest(sequence.prompt)
        source, shared = self._live(sequence.prompt, self.running)
        if max(size, shared) < MIN_REUSE:
            return
        sequence.row = len(self.running)
        if source is not None and shared > size:
            self._copy_kv(source.row, sequence.row, shared)  # rows move as others finish: its row now
            self.prefix.count_hit(shared)
            size = shared
        elif entry is not None:
            self.prefix.restore(entry, size, self.cache, sequence.row)
        sequence.filled = sequence.cached = size

    def _prefill_group(self, group: list[Sequence]) -> list[tuple[Sequence, Response]]:
        first = len(self.running)
        longest = max(len(sequence.prompt) for sequence in group)
        ids = np.zeros((len(group), longest), np.int64)
        mask = np.zeros_like(ids)
        for offset, sequence in enumerate(group):
            sequence.row, sequence.filled = first + offset, len(sequence.prompt)
            ids[offset, : len(sequence.prompt)] = sequence.prompt
            mask[offset, : len(sequence.prompt)] = 1
        lasts = [len(sequence.prompt) - 1 for sequence in group]
        every = _scored(group) or not self.picks_positions
        logits = self._run_prompt(ids, mask, first, group, lasts, every)
        for offset, sequence in enumerate(group):
            self._score_prompt(sequence, logits[offset], 0, len(sequence.prompt))
        # Every position's logits, or each row's last prompt position's alone.
        at = lasts if every else [0] * len(group)
        return self._start(group, [logits[offset, at[offset]] for offset in range(len(group))])

    def _start(self, group: list[Sequence], last: list[np.ndarray]) -> list[tuple[Sequence, Response]]:
        """``group``, its prompts in rows from the first free one on, starts decoding from the
        logits of each prompt's last token; identical waiting prompts copy their rows."""
        for sequence, row_logits in zip(group, last):
            self.last_logits.keep(sequence.prompt, row_logits)
        rows = [self._mask(sequence, row_logits, sequence.row) for sequence, row_logits in zip(group, last)]
        self.running.extend(group)
        made = [*zip(group, rows), *self._copy_twins(list(zip(group, last)))]
        return [(sequence, self._emit(sequence, row)) for sequence, row in made]

    def _prefill_chunk(self, sequence: Sequence) -> list[tuple[Sequence, Response]]:
        # A long prompt fills a row above the running ones, a chunk per round; the decode
        # steps in between never reach that row.
        if not sequence.filled:
            sequence.row = len(self.running)
        end = min(len(sequence.prompt), sequence.filled + PREFILL_CHUNK)
        ids = np.array([sequence.prompt[sequence.filled : end]], np.int64)
        last = end == len(sequence.prompt)
        mask = np.ones((1, end), np.int64)
        scored = _scored([sequence])
        logits = self._run_prompt(ids, mask, sequence.row, [sequence] if last else [], [ids.shape[1] - 1], scored)
        self._score_prompt(sequence, logits[0], sequence.filled, end)
        sequence.filled = end
        if not last:
            return []
        self.last_logits.keep(sequence.prompt, logits[0, -1])  # before a grammar masks them
        row = self._mask(sequence, logits[0, -1], sequence.row)
        self.pending.popleft()
        if sequence.row != len(self.running):  # rows below it were freed meanwhile: keep rows packed
            freed = sequence.row
            self._move(sequence, len(self.running), end)
            self.memory.release(freed)
        self.running.append(sequence)
        made = [(sequence, row), *self._copy_twins([(sequence, logits[0, -1])])]
        return [(item, self._emit(item, scores)) for item, scores in made]

    def _score_prompt(self, sequence: Sequence, logits: np.ndarray, start: int, end: int) -> None:
        """Score the prompt tokens that ``logits`` (of positions ``start..end``) predict, when asked."""
        if sequence.prompt_logprobs is not None:
            # The last position of a chunk predicts the first token of the next one.
            scored = prompt_tokens(logits, sequence.prompt[start : end + 1], sequence.prompt_logprobs)
            sequence.prompt_scores.extend(scored)

    def _run_prompt(
        self, ids: np.ndarray, mask: np.ndarray, first: int, guided: list[Sequence], lasts: list[int], every: bool
    ) -> np.ndarray:
        """Prefill ``ids`` into the rows from ``first`` on: the logits at every position when
        ``every`` or when the graph computes them all, else at each row's position in ``lasts``."""
        io = self.session.io_binding()
        io.bind_cpu_input(self.names["input_ids"], ids)
        io.bind_cpu_input(self.names["mask"], mask)
        if self.picks_positions:
            if every:
                positions = np.broadcast_to(np.arange(ids.shape[1])[None, :, None], (*ids.shape, 1)).copy()
            else:
                positions = np.array(lasts, np.int64).reshape(-1, 1, 1)
            io.bind_cpu_input(logits_graph.POSITIONS, positions)
        io.bind_output(self.names["logits"], "cpu")
        self._bind_cache(io, first, len(ids))
        self._run(io, guided)
        self.prompt_tokens_run += ids.size
        return io.get_outputs()[0].numpy()

    def step(self) -> list[tuple[Sequence, Response]]:
        """One token for every running sequence, more for rows whose drafts hold (finished ones leave)."""
        count = len(self.running)
        if not count:
            return []
        drafts = self._drafts()
        if count == 1 and drafts[0]:  # a row alone reads its last token and its draft in one forward
            self.steps += 1
            return self._emit_verified(drafts, alone=True)
        lengths = np.array([sequence.length - 1 for sequence in self.running])
        tokens = np.array([[sequence.tokens[-1]] for sequence in self.running], np.int64)
        mask = (np.arange(lengths.max() + 1)[None, :] <= lengths[:, None]).astype(np.int64)
        io = self._binding(count)
        io.bind_cpu_input(self.names["input_ids"], tokens)
        io.bind_cpu_input(self.names["mask"], mask)
        self._run(io, self.running)
        self.steps += 1
        if any(drafts):
            return self._emit_verified(drafts)
        # Rows move as sequences finish: pair each with its logits and mask by its row at this step.
        rows = [
            self._mask(sequence, logits, index)
            for index, (sequence, logits) in enumerate(zip(self.running, self.logits[:count, 0]))
        ]
        return [(sequence, self._emit(sequence, row)) for sequence, row in zip(list(self.running), rows)]

    def _drafts(self) -> list[list[int]]:
        """Each running row's draft for this step ([] for rows that do not draft now)."""
        if len(self.running) > 1 and not self.drafts_beside_others:
            return [[] for _ in self.running]
        drafts: list[list[int]] = []
        for sequence in self.running:
            row = sequence.drafts
            if row is None:
                drafts.append([])
                continue
            # The draft must fit in the row after this step's token, and no token past max_tokens is worth it.
            room = min(self.max_length - sequence.length, sequence.max_new - len(sequence.tokens) - 1)
            drafts.append(self._draft(sequence, row, min(room, MAX_DRAFT)))
        return drafts

    def _draft(self, sequence: Sequence, row: RowDrafts, most: int) -> list[int]:
        """Up to ``most`` tokens drafted for ``sequence``: by its lookup, or with its grammar too."""
        if sequence.matcher is not None:
            draft, row.looked_up = guided_draft(self._guides()[0], sequence.matcher, row.lookup, row.policy, most)
            return draft
        size = min(row.policy.next_size(), most)
        draft = row.lookup.draft(size) if size > 0 else []
        row.looked_up = [True] * len(draft)
        return draft

    def _verify(self, index: int, sequence: Sequence, draft: list[int], alone: bool = False) -> list[int]:
        """The tokens greedy decoding keeps of a row's ``draft``, and its own token after them.

        The shared step gave the logits after the row's last token; the draft goes through
        alone right after it, in the row's own KV cache: onnxruntime's CPU attention reads
        several new positions per row only in a batch of one. A row ``alone`` in the batch
        had no shared step: its last token goes in with its draft.
        """
        io = self._row_binding(index)
        logits = self.drafted[: (1 + len(draft)) * self.vocab].reshape(1 + len(draft), self.vocab)
        ids = [sequence.tokens[-1], *draft] if alone else draft
        if not alone:
            logits[0] = self.logits[index, 0]
        out = logits if alone else logits[1:]
        io.bind_cpu_input(self.names["input_ids"], np.array([ids], np.int64))
        io.bind_cpu_input(self.names["mask"], np.ones((1, sequence.length + len(draft)), np.int64))
        if self.picks_positions:
            io.bind_cpu_input(logits_graph.POSITIONS, np.arange(len(ids)).reshape(1, -1, 1))
        io.bind_output(self.names["logits"], "cpu", 0, np.float32, [1, *out.shape], out.ctypes.data)
        if sequence.matcher is None:
            self.session.run_with_iobinding(io)
        else:  # the masks of every verified position, filled while the model runs
            grammars = self._guides()[0]
            filling = self.pool.submit(grammars.draft_masks, sequence.matcher, draft)
            self.session.run_with_iobinding(io)
            grammars.apply_rows(logits, filling.result())
        seen = sequence.prompt + sequence.tokens
        kept, token = accept(logits, seen, draft, sequence.options.repetition_penalty)
        return [*draft[:kept], token]

    def _emit_verified(self, drafts: list[list[int]], alone: bool = False) -> list[tuple[Sequence, Response]]:
        """The responses of a step in which rows drafted: each row's kept tokens, in order."""
        running = list(self.running)
        picked: list[list[int] | np.ndarray] = []
        for index, (sequence, draft) in enumerate(zip(running, drafts)):
            if draft:
                picked.append(self._verify(index, sequence, draft, alone))
            else:
                picked.append(self._mask(sequence, self.logits[index, 0], index))
        drafting = sum(1 for draft in drafts if draft)
        for sequence, draft, pick in zip(running, drafts, picked):
            if draft and sequence.drafts is not None:
                sequence.drafts.verified(len(draft), len(pick) - 1, len(running), drafting)
        # Last row first: a finished row takes the last one's place, which by then holds all its tokens.
        made: list[list[tuple[Sequence, Response]]] = []
        for sequence, pick in reversed(list(zip(running, picked))):
            if isinstance(pick, list):
                made.append([(sequence, response) for response in self._emit_tokens(sequence, pick)])
            else:
                made.append([(sequence, self._emit(sequence, pick))])
        return [item for responses in reversed(made) for item in responses]

    def _run(self, io: ort.IOBinding, sequences: list[Sequence]) -> None:
        """Run the model; the masks of the guided ``sequences`` are filled meanwhile."""
        guided = [(sequence.matcher, sequence.row) for sequence in sequences if sequence.matcher is not None]
        filling = None
        if guided:
            grammars, masks = self._guides()
            filling = self.pool.submit(grammars.fill, guided, masks)
        self.session.run_with_iobinding(io)
        if filling is not None:
            filling.result()

    def _mask(self, sequence: Sequence, logits: np.ndarray, row: int) -> np.ndarray:
        if sequence.matcher is None:
            return logits
        grammars, masks = self._guides()
        return grammars.apply(logits, masks[row])

    def _guides(self) -> tuple[Grammars, np.ndarray]:
        """The grammars and every row's mask, for rows with a matcher (which only these grammars make)."""
        grammars = self.grammars
        if grammars is None:
            raise RuntimeError(f"{self.model.name} has no grammars for a guided row")
        if self.masks is None:
            self.masks = grammars.masks(self.rows)
        return grammars, self.masks

    def _emit(self, sequence: Sequence, logits: np.ndarray) -> Response:
        if sequence.max_new <= 0:  # the prompt is only scored
            response = sequence.answer.nothing()
        else:
            token = sequence.sampler.sample(logits, sequence.prompt, sequence.tokens)
            response = self._add(sequence, token)
            if sequence.logprobs is not None and sequence.answer.shown(token):
                response.logprobs = next_token(logits, token, sequence.logprobs)
        if sequence.prompt_logprobs is not None and len(sequence.tokens) <= 1:
            response.prompt_logprobs = sequence.prompt_scores
        if response.finish_reason:
            self._finished(sequence)
        return response

    def _emit_tokens(self, sequence: Sequence, tokens: list[int]) -> list[Response]:
        """The responses to ``tokens`` a verify kept, up to the one that ends the answer."""
        responses = []
        for token in tokens:
            responses.append(self._add(sequence, token))
            if responses[-1].finish_reason:
                self._finished(sequence)
                break
        return responses

    def _finished(self, sequence: Sequence) -> None:
        if sequence.error is not None or sequence.max_new <= 0:
            self.remove(sequence)
            return
        answer = sequence.tokens
        # A stop token is not sent back: the template writes its own end of turn (the follow's first).
        if answer[-1:] and not sequence.answer.shown(answer[-1]):
            answer = answer[:-1]
        if self.prefix.budget and sequence.follow:  # a chat: its next turn brings the answer back as text
            answer = as_sent_again(self.model, answer)
        tokens, prompt = sequence.prompt + answer + sequence.follow, len(sequence.prompt)
        # The last row warms its answer where it is, its prompt's KV in place (see slmops.runtime.warming).
        if self.running == [sequence] and not self.pending and self.warming.take(tokens, sequence.row, prompt):
            self.running.pop()
            return
        self.remove(sequence)
        self.warming.note(tokens, prompt)

    def _add(self, sequence: Sequence, token: int) -> Response:
        sequence.tokens.append(token)
        response = sequence.answer.add(token, sequence.length >= self.max_length)
        if sequence.drafts is not None:
            sequence.drafts.lookup.append(token)
            response.drafted_tokens, response.accepted_tokens = sequence.drafts.drafted, sequence.drafts.accepted
        return response

    def _row_binding(self, row: int) -> ort.IOBinding:
        """A binding of one row's KV cache, for the forward that reads its draft."""
        if row not in self.row_bindings:
            io = self.session.io_binding()
            self._bind_cache(io, row, 1)
            self.row_bindings[row] = io
        return self.row_bindings[row]

    def _binding(self, count: int) -> ort.IOBinding:
        # The cache rows and logits of a batch size never move: bind them once per size.
        if count not in self.bindings:
            io = self.session.io_binding()
            view = self.logits[:count]
            io.bind_output(self.names["logits"], "cpu", 0, np.float32, list(view.shape), view.ctypes.data)
            self._bind_cache(io, 0, count)
            if self.picks_positions:  # the bound array must outlive the binding
                self.firsts[count] = np.zeros((count, 1, 1), np.int64)
                io.bind_cpu_input(logits_graph.POSITIONS, self.firsts[count])
            self.bindings[count] = io
        return self.bindings[count]

    def _bind_cache(self, io: ort.IOBinding, first: int, count: int) -> None:
        names = zip(self.names["past"], self.names["present"])
        for buffer, (past, present) in zip(self.cache, names):
            view = buffer[first : first + count]
            # The same memory as input and output: attention appends in place, nothing is copied.
            io.bind_input(past, "cpu", 0, view.dtype, list(view.shape), view.ctypes.data)
            io.bind_output(present, "cpu", 0, view.dtype, list(view.shape), view.ctypes.data)


def _session(model: Model, logits: str) -> tuple[ort.InferenceSession, bool]:
    """The decoder's session, and whether it computes logits only at the positions asked for
    (:mod:`slmops.runtime.logits_graph`; a graph it cannot edit runs whole)."""
    import onnxruntime as ort

    path = Path(model.path) / model.genai_config["model"]["decoder"]["filename"]
    options = ort.SessionOptions()
    options.intra_op_num_threads = model.threads
    # Without the arena, buffers of a large prefill go back to the system after it.
    options.enable_cpu_mem_arena = False
    try:
        graph = logits_graph.load(path, logits)
    except (OSError, ValueError) as exc:
        log.warning("%s: logits at every position (%s)", model.name, exc)
        graph = None
    if graph is None:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]), False
    # The graph comes from memory: its external weights are found beside the original.
    options.add_session_config_entry("session.model_external_initializers_file_folder_path", str(path.parent))
    return ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"]), True


def _scored(sequences: list[Sequence]) -> bool:
    """Whether any of ``sequences`` scores its prompt, which needs every position's logits."""
    return any(sequence.prompt_logprobs is not None for sequence in sequences)


def _names(decoder: dict) -> dict:
    inputs, outputs = decoder["inputs"], decoder["outputs"]
    layers = range(decoder["num_hidden_layers"])
    past = [name % layer for layer in layers for name in (inputs["past_key_names"], inputs["past_value_names"])]
    present = [
        name % layer for layer in layers for name in (outputs["present_key_names"], outputs["present_value_names"])
    ]
    return {
        "input_ids": inputs["input_ids"],
        "mask": inputs["attention_mask"],
        "logits": outputs["logits"],
        "past": past,
        "present": present,
    }
