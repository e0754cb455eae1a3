#!/usr/bin/env python3
"""Prompt-lookup drafting replayed over recorded answers: what a change to the drafting gains, in seconds, without noise.

    python benchmarks/speculative_replay.py MODEL [--max-tokens 300] [--tasks copy,rewrite,...] [--tokens-only] [--json out.json]

MODEL answers the tasks of ``slmops.bench.scenarios`` greedily, once, without speculation; the
time a verify of k drafted tokens takes is measured on its onnxruntime-genai generator, in plain
steps, at the rewrite prompt's length. Then each answer is replayed through slmops' own
``PromptLookup`` (with its JSON drafts, as the runtime drafts; ``--tokens-only``: the token lookup
alone) and ``DraftPolicy`` (weighing a drafted position at the measured slope, as after `deploy` on
this CPU): every draft is checked against the recorded answer, a plain step costs 1 and
a verify of k tokens its measured cost. Reported per task: the replayed ratio
(decode time of the plain loop over the speculative one), tokens drafted and accepted, and the
bound of this lookup: drafts cut to exactly the tokens that will be accepted.

On an FP32 export the replay is what `benchmarks/speculative.py` measures (its speculative
answers are the plain ones); on INT4 exports a verify rounds some positions differently, the
speculative answer leaves the plain one sooner or later, and the replay tells how the drafting
does on the answer the plain loop gives. Nothing is timed but the verify costs, so two drafting
rules compare on the same answers, identically from run to run.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

import numpy as np

from slmops.runtime.json_drafts import TokenText
from slmops.runtime.model import common_prefix
from slmops.runtime.speculative import EXTRA_POSITION, DraftPolicy, PromptLookup, position_cost, verify_times

VERIFY_SIZES = (1, 2, 4, 8, 12, 16)


def replay(
    prompt: list[int],
    answer: list[int],
    cost: Callable[[int], float],
    position_cost: float = EXTRA_POSITION,
    text: TokenText | None = None,
) -> dict:
    """The speculative loop on ``answer`` (after its first token, as ``decode_tokens_per_s`` counts), its
    policy weighing a drafted position at ``position_cost`` decode steps; ``text``: the tokenizer's
    pieces, to draft JSON by its text too, as the runtime does."""
    lookup, policy = PromptLookup(prompt, text), DraftPolicy(position_cost)
    lookup.append(answer[0])
    done, steps, drafted, accepted = 1, 0.0, 0, 0
    while done < len(answer):
        size = policy.next_size()
        draft = lookup.draft(size) if size else []
        kept = _kept(draft, answer, done)
        steps += cost(len(draft)) if draft else 1.0
        for token in answer[done : done + kept + 1]:
            lookup.append(token)
        done += kept + 1
        if draft:
            policy.verified(len(draft), kept)
            drafted, accepted = drafted + len(draft), accepted + kept
    return {"ratio": (len(answer) - 1) / steps if steps else 1.0, "drafted": drafted, "accepted": accepted}


def bound(
    prompt: list[int], answer: list[int], cost: Callable[[int], float], text: TokenText | None = None, most: int = 16
) -> float:
    """The ratio if every draft of the lookup were cut to the length that pays best, knowing the answer."""
    lookup = PromptLookup(prompt, text)
    lookup.append(answer[0])
    done, steps = 1, 0.0
    while done < len(answer):
        kept = _kept(lookup.draft(most), answer, done)
        size = max(range(kept + 1), key=lambda k: (k + 1) / (cost(k) if k else 1.0))
        steps += cost(size) if size else 1.0
        for token in answer[done : done + size + 1]:
            lookup.append(token)
        done += size + 1
    return (len(answer) - 1) / steps if steps else 1.0


def _kept(draft: list[int], answer: list[int], done: int) -> int:
    """How many drafted tokens the recorded answer has next."""
    return common_prefix(draft, answer[done : done + len(draft)])


def cost_in_steps(measured: dict[int, float]) -> Callable[[int], float]:
    """Verify cost of k drafted tokens in plain steps, from ``measured`` {k: ms} (0: a plain step):
    linear between the measured sizes, and beyond the largest along the last two."""
    sizes = sorted(measured)
    ms = [measured[size] for size in sizes]
    slope = (ms[-1] - ms[-2]) / (sizes[-1] - sizes[-2])

    def cost(k: int) -> float:
        value = np.interp(k, sizes, ms) if k <= sizes[-1] else ms[-1] + slope * (k - sizes[-1])
        return float(value) / measured[0]

    return cost


def main() -> None:
    import slmops
    from slmops.bench import scenarios
    from slmops.runtime import collect

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--max-tokens", type=int, default=300)
    # The replay's drafts are the lookup's alone: a task held to a schema (whose forced tokens a
    # guided answer drafts too) is left out.
    unguided = [name for name, task in scenarios.TASKS.items() if task.schema is None]
    parser.add_argument("--tasks", default=",".join(unguided))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens-only", action="store_true", help="draft by token lookup alone (no JSON drafts)")
    parser.add_argument("--json")
    args = parser.parse_args()
    model = slmops.load(args.model, threads=args.threads)
    results: dict = {"model": args.model, "tasks": {}}
    answers = {}
    for task in args.tasks.split(","):
        kind, text, _ = scenarios.TASKS[task]
        messages = [{"role": "user", "content": text}]
        penalty = 1.0 if kind == "grounded" else None
        plain = collect(
            model.stream_chat(
                messages, temperature=0.0, repetition_penalty=penalty, max_tokens=args.max_tokens, speculative=False
            )
        )
        answers[task] = (model.prompt_ids(messages), list(plain.tokens))
    measured = verify_times(model.og_model, answers.get("rewrite", next(iter(answers.values())))[0], VERIFY_SIZES)
    results["verify_ms"] = {str(k): round(v, 3) for k, v in measured.items()}
    cost = cost_in_steps(measured)
    # the policy weighs drafts as after `deploy` on this CPU (it keeps this slope in the model folder)
    results["position_cost"] = drafted_cost = position_cost(measured)
    print("verify cost in plain steps:", {k: round(cost(k), 2) for k in VERIFY_SIZES}, f"(slope {drafted_cost})")
    print("| task | replayed ratio | accepted / drafted | bound of the lookup |")
    print("|---|---:|---:|---:|")
    pieces = None if args.tokens_only else model.token_text
    for task, (prompt, answer) in answers.items():
        row = replay(prompt, answer, cost, drafted_cost, pieces) | {"bound": bound(prompt, answer, cost, pieces)}
        results["tasks"][task] = {k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}
        print(f"| {task} | {row['ratio']:.2f}× | {row['accepted']} / {row['drafted']} | {row['bound']:.2f}× |")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as file:
            json.dump(results, file, indent=1)


if __name__ == "__main__":
    main()
