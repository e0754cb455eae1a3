"""Prompt-lookup speculative decoding on an onnxruntime-genai ``Generator``.

A decode step reads every weight once whether it computes one position or a few, so
when the answer is likely to repeat tokens it has already seen (a rewrite, a copy, an
extraction to JSON, an edit of code), slmops guesses the next tokens and checks them
all in one forward:

1. Draft: the last few tokens (3, else 2) are looked up among the prompt and the answer
   so far; the tokens that followed the earlier occurrence that agrees furthest back with
   the answer (the latest on a tie) are the draft. No draft model is needed. A JSON answer
   drafts by its text too (:mod:`slmops.runtime.json_drafts`): the next key from the prompt's
   list of fields, and a value's text copied from the prompt in the answer's own tokens.
2. Verify: the last token shown (not yet read) and the draft go through the model together
   (``append_tokens``), which gives the logits of every position.
3. Accept the longest run of drafted tokens that greedy decoding picks itself, plus
   the model's own token after them; ``rewind_to`` drops the KV of the rejected ones.

The tokens are exactly the ones greedy decoding gives one at a time (the logits of a
position do not depend on the positions after it, and a repetition penalty is applied
to each position as onnxruntime-genai's step applies it), so speculation runs only at
temperature 0; sampled answers decode as before.

:class:`DraftPolicy` keeps it from costing time: drafts grow while they are accepted
and shrink when they are not, and drafting pauses (for longer each time) while the
verifies cost more decode steps than they save. It counts tokens, not seconds, so the
same answer drafts the same way on every run: on INT4 models the positions a verify reads
go through another attention path than a one-token step, and a policy that followed the clock
would make a greedy answer differ between two runs.

A guided answer (a JSON schema, a regex, tools) drafts with its grammar (:func:`guided_draft`):
where the grammar allows one thing only (a JSON schema's keys and punctuation), its forced
tokens are drafted whatever the policy says (they are kept unless the model spells the same
text in other tokens), and the policy weighs only the looked-up tokens; a looked-up piece is
cut where the grammar would refuse it, and forced tokens may follow it (the whitespace before a
key, then the key); every position's logits are masked as the grammar's own step would mask
them before greedy decoding picks from them. On a generator slmops then follows the grammar
itself (llguidance, :class:`GuidedSteps`) instead of onnxruntime-genai's guidance.

The batched decoder (:mod:`slmops.runtime.batched`) drafts its greedy rows, guided or not, with
the same :class:`PromptLookup`, :class:`DraftPolicy`, :func:`guided_draft` and :func:`accept` (a
:class:`RowDrafts` per row).
"""

from __future__ import annotations

import collections
import statistics
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from slmops import machine
from slmops.modelfolder.draft_cost import DraftCost
from slmops.runtime.json_drafts import JsonFields, TokenText
from slmops.runtime.sampling import penalize

if TYPE_CHECKING:
    from llguidance import LLMatcher

    from slmops.runtime.generate import Answer, Response
    from slmops.runtime.guided import Grammars
    from slmops.runtime.options import GenerationOptions

NGRAMS = (3, 2)  # lengths of the looked-up tail, longest first
MAX_DRAFT = 12  # tokens drafted at most per verify
OCCURRENCES = 8  # latest occurrences of each n-gram kept to draft from
AGREE = 32  # tokens compared, at most, to choose among them
FIRST_DRAFT = 4
LONGEST_PAUSE = 64  # plain steps between attempts, at most, while drafts do not pay
# What a verify costs per drafted position, in decode steps, where `deploy` measured nothing on
# this CPU (modelfolder/draft_cost.py). SmolLM2-135M INT4, 2 threads, Zen 4 class: reading 1, 2, 4, 8
# and 16 positions took 6.6, 9.1, 12.3, 18.7 and 31.9 ms, about a quarter of a step each; on a Zen 5
# class CPU about a tenth, for it and for Qwen2.5-0.5B.
EXTRA_POSITION = 0.25
# Drafted positions a measurement verifies, beside the plain step
MEASURED_DRAFTS = (1, 2, 4, 8)


def applies(options: GenerationOptions) -> bool:
    """Whether an answer with ``options`` speculates: it asked to, and it is greedy, so the accepted
    tokens are exactly greedy decoding's."""
    return options.speculative and options.temperature == 0


class PromptLookup:
    """The prompt and answer so far, indexed by their short n-grams for drafting.

    Args:
        tokens: the prompt's token ids.
        text: the tokenizer's pieces, to draft JSON answers by their text too (:mod:`slmops.runtime.json_drafts`).
    """

    def __init__(self, tokens: list[int], text: TokenText | None = None) -> None:
        self.tokens: list[int] = []
        # an n-gram -> where the tokens after its latest occurrences stand, oldest first
        self.index: dict[tuple[int, ...], collections.deque[int]] = {}
        self.fields: JsonFields | None = None
        for token in tokens:
            self.append(token)
        if text is not None:
            self.fields = JsonFields(text, tokens)

    def append(self, token: int) -> None:
        if self.fields is not None:
            self.fields.append(token)
        tokens, end = self.tokens, len(self.tokens)
        for size in NGRAMS:
            if end >= size:
                key = tuple(tokens[end - size : end])
                self.index.setdefault(key, collections.deque(maxlen=OCCURRENCES)).append(end)
        tokens.append(token)

    def draft(self, most: int, after: list[int] | None = None) -> list[int]:
        """Up to ``most`` tokens that followed an earlier occurrence of the current tail (``after``
        appended to it: tokens already drafted).

        A draft that reaches the last token goes on from the tail it has made: an answer caught
        in a loop repeats a period shorter than a draft, and this drafts whole periods ahead.
        """
        tokens, start = self.tokens, list(after or ())
        draft, end = start[:], len(start) + most
        while len(draft) < end:
            follows = self._follows((tokens[-AGREE:] + draft)[-AGREE:])
            if follows is None:
                break
            draft += tokens[follows : follows + end - len(draft)]
        if self.fields is not None and not start:
            return self.fields.draft(draft, most)
        return draft[len(start) :]

    def _follows(self, tail: list[int]) -> int | None:
        """Where the token after an earlier occurrence of ``tail``'s end stands, longest n-gram first:
        of its occurrences, the one whose tokens before it match ``tail`` furthest back, then the latest."""
        for size in NGRAMS:
            if len(tail) >= size:
                places = self.index.get(tuple(tail[-size:]))
                if places:
                    return max(reversed(places), key=lambda follows: self._agrees(tail, follows))
        return None

    def _agrees(self, tail: list[int], follows: int) -> int:
        """How many tokens before ``follows`` equal the last ones of ``tail``."""
        tokens, count, most = self.tokens, 0, min(len(tail), follows)
        while count < most and tokens[follows - 1 - count] == tail[-1 - count]:
            count += 1
        return count


class DraftPolicy:
    """How many tokens to draft next, from what the drafts have gained so far.

    Every verify is weighed in decode steps: the tokens it accepted beyond the one a plain
    step gives, against what reading its drafted positions costs (``position_cost`` each, in
    decode steps). While that balance is negative, drafting pauses, twice as long after each
    loss, so an answer that copies nothing runs at the plain loop's speed.
    """

    def __init__(self, position_cost: float = EXTRA_POSITION) -> None:
        self.position_cost = position_cost
        self.size = FIRST_DRAFT
        self.balance = 0.0  # decode steps saved by recent verifies (negative: lost)
        self.pause = 0
        self.backoff = 1

    def next_size(self) -> int:
        """Tokens to draft for the next step (0: a plain step)."""
        if self.pause:
            self.pause -= 1
            return 0
        return self.size

    def verified(self, drafted: int, accepted: int, cost: float | None = None) -> None:
        """A verify of ``drafted`` tokens accepted ``accepted`` of them; ``cost``: the decode
        steps it took beyond the one it replaced (default: its drafted positions' share)."""
        cost = self.position_cost * drafted if cost is None else cost
        self.balance = 0.5 * self.balance + accepted - cost
        self.size = min(MAX_DRAFT, 2 * self.size) if accepted == drafted else max(1, accepted + 1)
        if self.balance < 0:
            self.pause, self.backoff, self.balance = self.backoff, min(LONGEST_PAUSE, 2 * self.backoff), 0.0
        elif accepted:
            self.backoff = 1

    def verified_in_batch(self, drafted: int, accepted: int, rows: int, drafting: int) -> None:
        """Like :meth:`verified`, for one of ``drafting`` rows that drafted in a batch step of ``rows`` rows.

        A row alone reads its last token and its draft in one forward. Beside other rows, a
        draft is a forward of its own (a step's worth of weights plus its positions) that every
        row of the batch waited for: that wait is charged to the rows that drafted, shared equally.
        """
        if rows == 1:
            self.verified(drafted, accepted)
        else:
            self.verified(drafted, accepted, rows * (1 + self.position_cost * drafted) / drafting)


class RowDrafts:
    """A batch row's drafting: its prompt lookup, its policy, and what it drafted and kept so far.

    Args:
        tokens: the row's prompt.
        position_cost: what a drafted position costs a verify, in decode steps.
        text: the tokenizer's pieces, to draft JSON answers by their text too.
    """

    def __init__(self, tokens: list[int], position_cost: float = EXTRA_POSITION, text: TokenText | None = None) -> None:
        self.lookup = PromptLookup(tokens, text)
        self.policy = DraftPolicy(position_cost)
        self.drafted = self.accepted = 0
        # which tokens of the draft under way were looked up (the rest a grammar forced)
        self.looked_up: list[bool] = []

    def verified(self, drafted: int, kept: int, rows: int = 1, drafting: int = 1) -> None:
        """The draft under way: ``kept`` of its ``drafted`` tokens kept, in a step of ``rows`` rows of
        which ``drafting`` drafted; the policy weighs its looked-up tokens."""
        looked_up = sum(self.looked_up)
        if looked_up:
            self.policy.verified_in_batch(looked_up, sum(self.looked_up[:kept]), rows, drafting)
        self.drafted += drafted
        self.accepted += kept


def guided_draft(
    grammars: Grammars, matcher: LLMatcher, lookup: PromptLookup, policy: DraftPolicy, most: int
) -> tuple[list[int], list[bool]]:
    """Up to ``most`` tokens for an answer that follows ``matcher``'s grammar: forced tokens and at most
    one looked-up piece (cut where the grammar refuses it), in the order the grammar takes them; and
    which of them were looked up. ``matcher`` is left where it was."""
    draft: list[int] = []
    looked_up: list[bool] = []
    size = None  # the policy's allowance, asked for once, when the grammar leaves a choice
    while len(draft) < most:
        piece = grammars.forced(matcher)[: most - len(draft)]
        if not piece and size is None:
            size = min(policy.next_size(), most - len(draft))
            piece = grammars.cut(matcher, lookup.draft(size, draft)) if size > 0 else []
            looked_up += [True] * len(piece)
        else:
            looked_up += [False] * len(piece)
        taken = matcher.try_consume_tokens(piece) if piece else 0
        draft += piece[:taken]
        if not taken or taken < len(piece):
            break
    matcher.rollback(len(draft))
    return draft, looked_up[: len(draft)]


def speculative_loop(
    generator: Any,
    answer: Answer,
    ids: list[int],
    max_length: int,
    penalty: float = 1.0,
    guide: tuple[Grammars, LLMatcher] | None = None,
    position_cost: float = EXTRA_POSITION,
    text: TokenText | None = None,
) -> Iterator[Response]:
    """Greedy decoding with prompt-lookup drafts, until ``answer`` ends.

    Steps without a draft are the generator's own (``generate_next_token``), so an answer
    that drafts nothing runs the plain loop; a verify appends the token shown last and
    the draft, and picks the greedy tokens from the logits of every position.

    Args:
        generator: an ``og.Generator`` whose last call appended the prompt (or the new
            part of it).
        answer: the answer its tokens go to.
        ids: every token the generator holds, the prompt's included.
        max_length: tokens the generator may hold (its ``max_length``).
        penalty: the repetition penalty (1: none).
        guide: the grammars and the matcher of a guided answer (the ``answer``'s own, which
            follows its tokens), on a generator without guidance of its own: every step is then
            a :class:`GuidedSteps` one, and drafts come from :func:`guided_draft`.
        position_cost: what a drafted position costs a verify, in decode steps.
        text: the tokenizer's pieces, to draft JSON answers by their text too.
    """
    lookup, policy = PromptLookup(ids, text), DraftPolicy(position_cost)
    steps = Steps(generator, len(ids), penalty) if guide is None else GuidedSteps(generator, lookup, penalty, *guide)
    tokens = [steps.first()]
    drafted = accepted = 0
    while True:
        for token in tokens:
            lookup.append(token)
            response = answer.add(token, len(lookup.tokens) >= max_length)
            response.drafted_tokens, response.accepted_tokens = drafted, accepted
            yield response
            if response.finish_reason:
                return
        # The verify reads the last token shown and the draft: room for both.
        room = max_length - len(lookup.tokens) if steps.rewinds else 0
        if guide is not None:
            draft, looked_up = guided_draft(*guide, lookup, policy, min(room, MAX_DRAFT)) if room > 0 else ([], [])
        else:
            size = min(policy.next_size(), room)
            draft = lookup.draft(size) if size > 0 else []
            looked_up = [True] * len(draft)
        verified = steps.verify(tokens[-1], draft, lookup.tokens) if draft else None
        if verified is None:
            tokens = [steps.plain(tokens[-1])]
        else:
            kept, token = verified
            tokens = [*draft[:kept], token]
            if any(looked_up):
                policy.verified(sum(looked_up), sum(looked_up[:kept]))
            drafted, accepted = drafted + len(draft), accepted + kept


class Steps:
    """One ``og.Generator`` stepped a token at a time, or verifying a draft.

    Args:
        generator: the generator, its prompt appended.
        read: tokens whose KV it holds.
        penalty: the repetition penalty (1: none).
    """

    def __init__(self, generator: Any, read: int, penalty: float) -> None:
        self.generator, self.read, self.penalty = generator, read, penalty
        # held: the last token shown is in the generator's sequence, not yet read (after its own
        # step), rather than not there at all (after a verify)
        self.held = False
        self.rewinds = True  # False once the generator refused to rewind: plain steps only

    def first(self) -> int:
        self.generator.generate_next_token()
        self.held = True
        return int(self.generator.get_next_tokens()[0])

    def plain(self, last: int) -> int:
        """The token after ``last``, by the generator's own step."""
        if not self.held:
            self.generator.append_tokens([last])
        self.read += 1
        return self.first()

    def verify(self, last: int, draft: list[int], seen: list[int]) -> tuple[int, int] | None:
        """Read ``last`` and ``draft`` in one forward: how many drafted tokens greedy decoding keeps,
        and its token after them; None when the generator cannot rewind (it is left as it was)."""
        generator = self.generator
        if self.held:
            try:
                generator.rewind_to(self.read)
            except RuntimeError:  # a KV cache onnxruntime-genai cannot rewind
                self.rewinds = False
                return None
            self.held = False
        generator.append_tokens([last, *draft])
        kept, token = accept(self.masked(generator.get_output("logits")[0], draft), seen, draft, self.penalty)
        if kept < len(draft):
            generator.rewind_to(self.read + 1 + kept)
        self.read += 1 + kept
        return kept, token

    def masked(self, logits: np.ndarray, draft: list[int]) -> np.ndarray:
        """The logits a verify picks from (a grammar's steps mask them)."""
        return logits


class GuidedSteps(Steps):
    """The steps of a generator without guidance of its own for an answer that follows a grammar:
    each step appends the last token and picks from the logits the grammar's mask leaves.

    Args:
        generator: the generator, its prompt appended.
        lookup: the prompt and the answer so far (the tokens a repetition penalty weighs).
        penalty: the repetition penalty (1: none).
        grammars, matcher: the grammar's matcher, which the answer's tokens advance.
    """

    def __init__(self, generator: Any, lookup: PromptLookup, penalty: float, grammars: Grammars, matcher: LLMatcher):
        super().__init__(generator, len(lookup.tokens), penalty)
        self.seen, self.grammars, self.matcher = lookup.tokens, grammars, matcher
        self.mask = grammars.masks(1)

    def first(self) -> int:
        """The token after what the generator read last."""
        # The last position's raw logits: nothing has processed them, as the generator never searched
        # (get_output would copy every prompt position's first: 25 ms after 256 tokens, SmolLM2).
        logits = self.generator.get_logits()[0]
        self.grammars.fill([(self.matcher, 0)], self.mask)
        self.grammars.apply_rows(logits, self.mask)
        return _pick(logits[0], self.seen, self.penalty)

    def plain(self, last: int) -> int:
        self.generator.append_tokens([last])
        self.read += 1
        return self.first()

    def masked(self, logits: np.ndarray, draft: list[int]) -> np.ndarray:
        self.grammars.apply_rows(logits, self.grammars.draft_masks(self.matcher, draft))
        return logits


def accept(logits: np.ndarray, seen: list[int], draft: list[int], penalty: float = 1.0) -> tuple[int, int]:
    """How many drafted tokens greedy decoding picks itself (in order from the first), and the
    token it picks after them; ``logits[i]`` are those after ``seen`` and ``draft[:i]``."""
    for index, drafted in enumerate(draft):
        token = _pick(logits[index], seen + draft[:index] if penalty != 1.0 else seen, penalty)
        if token != drafted:
            return index, token
    return len(draft), _pick(logits[len(draft)], seen + draft if penalty != 1.0 else seen, penalty)


def _pick(logits: np.ndarray, seen: list[int], penalty: float) -> int:
    """The greedy token, after the repetition penalty onnxruntime-genai applies over ``seen``."""
    if penalty != 1.0:
        logits = penalize(logits, np.array(seen, np.int64), penalty)
    return int(np.argmax(logits))


def verify_times(
    og_model: Any, prompt: list[int], drafts: tuple[int, ...] = MEASURED_DRAFTS, repeats: int = 15
) -> dict[int, float]:
    """Median milliseconds of a forward that reads 1 + k positions after ``prompt`` and returns their
    logits, for k = 0 (a plain step) and each of ``drafts``; the sizes interleave in each repeat,
    so load from other processes weighs on all of them alike."""
    import onnxruntime_genai as og

    params = og.GeneratorParams(og_model)
    params.set_search_options(max_length=len(prompt) + max(drafts) + 2)
    generator = og.Generator(og_model, params)
    generator.append_tokens(prompt)
    times: dict[int, list[float]] = {k: [] for k in (0, *drafts)}
    for _ in range(repeats):
        for k, samples in times.items():
            generator.rewind_to(len(prompt))
            start = time.perf_counter()
            generator.append_tokens(prompt[-1:] * (k + 1))
            generator.get_output("logits")
            samples.append((time.perf_counter() - start) * 1e3)
    return {k: statistics.median(samples) for k, samples in times.items()}


def position_cost(verify_ms: dict[int, float]) -> float:
    """Decode steps a drafted position adds to a verify: the least-squares slope through a plain
    step of the verify times :func:`verify_times` measured, in plain steps."""
    step = verify_ms[0]
    drafts = [k for k in verify_ms if k]
    slope = sum(k * (verify_ms[k] / step - 1) for k in drafts) / sum(k * k for k in drafts)
    return round(min(1.0, max(0.01, slope)), 3)


def measured_draft_cost(og_model: Any, prompt: list[int]) -> DraftCost:
    """What a drafted position costs a verify of ``og_model`` on this CPU, after ``prompt``."""
    verify_ms = verify_times(og_model, prompt)
    return DraftCost(machine.key(), position_cost(verify_ms), {str(k): round(ms, 3) for k, ms in verify_ms.items()})
