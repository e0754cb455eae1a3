"""What sampling a token costs a row of the batch: sorting only the head against the sampler before.

    .venv/bin/python benchmarks/sampling_cost.py MODEL_FOLDER [--rows 8] [--rounds 3] [--tokens 48]

Sampled rows (temperature above 0) pick their tokens in Python (slmops.runtime.sampling). For
each set of options users send, times the sampler alone on the model's own logits, then decode
steps of ``rows`` sampled sequences, with the sampler as it is and with the one before (the top k
partitioned out of the whole vocabulary, every token sorted without a top-k), in alternating
rounds in one process.
"""

from __future__ import annotations

import json
import os
import statistics
import time

import numpy as np

import slmops.runtime.batched as batched
import slmops.runtime.sampling as sampling
from guided_cost import batch_arguments, step_times  # this folder's other script
from slmops.machine import describe_cpu
from slmops.runtime import load
from slmops.runtime.batched import BatchedDecoder, Sequence

TEXT = (
    "The history of the city goes back two thousand years, to a river crossing where traders met. "
    "Over the centuries it grew into a market town, then a port, and finally a capital. "
)
# (temperature, top_k, top_p): slmops' default top-k, OpenAI clients' top-p alone, a plain draw, both limits
OPTIONS = [(0.7, 50, 1.0), (0.7, 0, 0.9), (1.0, 0, 1.0), (0.8, 40, 0.95)]


class SortingSampler(sampling.Sampler):
    """The sampler slmops had before: the top k partitioned out of the whole vocabulary in float64,
    and with no top-k every token sorted."""

    def sample(self, logits: np.ndarray, prompt: list[int], tokens: list[int]) -> int:
        options = self.options
        scaled = logits.astype(np.float64) / options.temperature
        if 0 < options.top_k < len(scaled):
            top = np.argpartition(scaled, -options.top_k)[-options.top_k :]
            keep = top[np.argsort(scaled[top])[::-1]]
        else:
            keep = np.argsort(scaled)[::-1]
        probs = np.exp(scaled[keep] - scaled[keep[0]])
        probs /= probs.sum()
        if options.top_p < 1.0:
            cut = int(np.searchsorted(np.cumsum(probs), options.top_p)) + 1
            keep, probs = keep[:cut], probs[:cut] / probs[:cut].sum()
        return int(keep[self.rng.choice(len(keep), p=probs)])


def real_logits(decoder: BatchedDecoder, model, count: int) -> np.ndarray:
    """The logits a decode step gives, ``count`` of them, from greedy rows of the shipped prompt."""
    options = model.options(temperature=0, max_tokens=count, repetition_penalty=1.0)
    decoder.add([Sequence(model.encode(TEXT), options, count, time.perf_counter())])
    rows = []
    while decoder.busy:
        decoder.advance()
        rows.append(decoder.logits[0, 0].copy())
    return np.array(rows[:count])


def sampler_time(logits: np.ndarray, option: tuple, kind: type) -> float:
    """Median seconds of one sampled token over the rows of ``logits``."""
    temperature, top_k, top_p = option
    sampler = kind(sampling.GenerationOptions(temperature=temperature, top_k=top_k, top_p=top_p, seed=0))
    times = []
    for row in logits:
        start = time.perf_counter()
        sampler.sample(row, [], [])
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def decode_steps(decoder: BatchedDecoder, model, prompts: list[list[int]], tokens: int, option: tuple) -> list[float]:
    temperature, top_k, top_p = option
    options = model.options(temperature=temperature, top_k=top_k, top_p=top_p, max_tokens=tokens, seed=1)
    return step_times(decoder, [Sequence(list(ids), options, tokens, time.perf_counter()) for ids in prompts])


def main() -> None:
    parser = batch_arguments(__doc__.splitlines()[0])
    parser.add_argument("--json", help="Also write the results to this file.")
    args = parser.parse_args()
    model = load(args.model)
    decoder = BatchedDecoder(model, args.rows, 1024)
    logits = real_logits(decoder, model, 64)
    prompts = [model.encode(f"Story {index}: ") + model.encode(TEXT) for index in range(args.rows)]
    kinds = {"now": sampling.Sampler, "before": SortingSampler}
    results = []
    for option in OPTIONS:
        alone = {name: sampler_time(logits, option, kind) for name, kind in kinds.items()}
        steps: dict[str, list[float]] = {name: [] for name in kinds}
        for round_ in range(args.rounds):
            order = list(kinds.items())
            for name, kind in order if round_ % 2 == 0 else order[::-1]:
                batched.Sampler = kind  # what the decoder gives each new sequence
                steps[name].append(statistics.median(decode_steps(decoder, model, prompts, args.tokens, option)))
        batched.Sampler = sampling.Sampler
        step = {name: statistics.median(values) for name, values in steps.items()}
        results.append(
            {
                "temperature": option[0],
                "top_k": option[1],
                "top_p": option[2],
                "sample_ms": {name: round(value * 1e3, 3) for name, value in alone.items()},
                "step_ms": {name: round(value * 1e3, 2) for name, value in step.items()},
                "step_speedup": round(step["before"] / step["now"], 3),
            }
        )
    summary = {
        "cpu_info": describe_cpu().to_json(),
        "model": model.name,
        "vocab": int(logits.shape[1]),
        "rows": args.rows,
        "load_average": round(os.getloadavg()[0], 1),
        "results": results,
    }
    print(f"CPU: {describe_cpu().label}; load average {summary['load_average']}; {model.name}, {args.rows} rows")
    print("temperature top_k top_p | sample ms: now / before | decode step ms: now / before | speedup")
    for row in results:
        sample, step = row["sample_ms"], row["step_ms"]
        print(
            f"{row['temperature']:>11} {row['top_k']:>5} {row['top_p']:>5} | {sample['now']:>7} / {sample['before']:<7}"
            f" | {step['now']:>6} / {step['before']:<6} | {row['step_speedup']}x"
        )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(summary, out, indent=1)


if __name__ == "__main__":
    main()
