"""What log-probabilities cost a row of the batch, measured in-process, plain and logprobs runs interleaved.

    .venv/bin/python benchmarks/logprobs_cost.py MODEL_FOLDER [--rows 8] [--rounds 3] [--tokens 48] [--top 20]

Each round decodes ``rows`` sequences at once (the same prompts, greedy) twice, without
and with ``logprobs`` (``--top`` alternatives per token), in alternating order, and times
the decode steps in which all rows are live. Also times scoring a prompt (echo with
max_tokens 0) against a plain prefill of the same prompt. Prints medians and their ratios.
"""

from __future__ import annotations

import os
import statistics
import time

from guided_cost import batch_arguments, step_times  # this folder's other script
from slmops.machine import describe_cpu
from slmops.runtime import load
from slmops.runtime.batched import BatchedDecoder, Sequence

TEXT = (
    "The history of the city goes back two thousand years, to a river crossing where traders met. "
    "Over the centuries it grew into a market town, then a port, and finally a capital. "
)


def decode_steps(decoder: BatchedDecoder, model, prompts: list[list[int]], tokens: int, top: int | None) -> list[float]:
    options = model.options(temperature=0, max_tokens=tokens, repetition_penalty=1.0)
    return step_times(
        decoder, [Sequence(list(ids), options, tokens, time.perf_counter(), logprobs=top) for ids in prompts]
    )


def prefill(decoder: BatchedDecoder, model, ids: list[int], top: int | None) -> float:
    options = model.options(temperature=0, max_tokens=1)
    sequence = Sequence(list(ids), options, 0 if top is not None else 1, time.perf_counter(), prompt_logprobs=top)
    decoder.add([sequence])
    start = time.perf_counter()
    while decoder.busy:
        decoder.advance()
    return time.perf_counter() - start


def main() -> None:
    parser = batch_arguments(__doc__.splitlines()[0])
    parser.add_argument("--top", type=int, default=20)
    args = parser.parse_args()
    model = load(args.model)
    decoder = BatchedDecoder(model, args.rows, 1024)
    base = model.encode(TEXT)
    prompts = [model.encode(f"Story {index}: ") + base for index in range(args.rows)]
    scored = model.encode(TEXT * 8)[:240]
    plain, logged, fills, scores = [], [], [], []
    for round_ in range(args.rounds):
        order = [(None, plain), (args.top, logged)]
        for top, sink in order if round_ % 2 == 0 else order[::-1]:
            sink.append(statistics.median(decode_steps(decoder, model, prompts, args.tokens, top)))
        fills.append(prefill(decoder, model, scored, None))
        scores.append(prefill(decoder, model, scored, args.top))
    step, with_logprobs = statistics.median(plain), statistics.median(logged)
    print(f"CPU: {describe_cpu().label}; load average {os.getloadavg()[0]:.1f}; {model.name}, {args.rows} rows")
    print(
        f"decode step, {args.rows} rows: {step * 1e3:.1f} ms plain, {with_logprobs * 1e3:.1f} ms with logprobs "
        f"(top {args.top}): {with_logprobs / step:.3f}x"
    )
    fill, score = statistics.median(fills), statistics.median(scores)
    print(
        f"prefill of {len(scored)} tokens: {fill * 1e3:.0f} ms, scored (echo, max_tokens 0, top {args.top}): "
        f"{score * 1e3:.0f} ms: {score / fill:.3f}x"
    )


if __name__ == "__main__":
    main()
