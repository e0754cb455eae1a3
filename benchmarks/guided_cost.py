"""What a grammar costs a row of the batch, measured in-process, guided and free runs interleaved.

    .venv/bin/python benchmarks/guided_cost.py MODEL_FOLDER [--rows 8] [--rounds 3] [--tokens 48]

Each round decodes ``rows`` sequences at once, first free, then each under a JSON
schema grammar (the same prompts, greedy), and times the decode steps in which
all rows are live. The difference per step, divided by the rows, is the cost of
guidance per generated token; the time llguidance takes to fill the masks is
reported too (it runs while onnxruntime computes the logits). Each round also
answers the same guided requests the way slmops did before grammars joined the
batch, one onnxruntime-genai generator each, stepped in turn, and compares the
aggregate tokens/s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

from slmops.machine import describe_cpu
from slmops.runtime import load
from slmops.runtime.batched import BatchedDecoder, Sequence
from slmops.server import tools

SCHEMA = {
    "type": "object",
    "properties": {
        "title": {"type": "string"},
        "year": {"type": "integer"},
        "cast": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"name": {"type": "string"}, "role": {"type": "string"}},
                "required": ["name", "role"],
            },
        },
    },
    "required": ["title", "year", "cast"],
}
TOPICS = [
    "a film about space",
    "a film about the sea",
    "a detective film",
    "a comedy about cooks",
    "a film about horses",
    "a war film",
    "a musical",
    "a film about robots",
]


def run(model, decoder: BatchedDecoder, rows: int, tokens: int, guided: bool) -> tuple[list[float], list[float]]:
    """Seconds of each full-batch decode step, and of each mask fill."""
    sequences = []
    for index in range(rows):
        messages = [{"role": "user", "content": f"Describe {TOPICS[index % len(TOPICS)]} as JSON with its cast."}]
        matcher = decoder.grammars.matcher(tools.grammar(SCHEMA)) if guided else None
        sequences.append(
            Sequence(
                model.prompt_ids(messages), model.options(temperature=0), tokens, time.perf_counter(), matcher=matcher
            )
        )
    decoder.add(sequences)
    fills, steps = [], []
    fill = decoder.grammars.fill

    def timed_fill(*args):
        start = time.perf_counter()
        fill(*args)
        fills.append(time.perf_counter() - start)

    decoder.grammars.fill = timed_fill
    try:
        while decoder.pending:
            decoder.prefill()
        while decoder.running:
            full = len(decoder.running) == rows
            start = time.perf_counter()
            decoder.step()
            if full:
                steps.append(time.perf_counter() - start)
    finally:
        decoder.grammars.fill = fill
    return steps, fills


def requests(model, rows: int) -> list[list[int]]:
    return [
        model.prompt_ids(
            [{"role": "user", "content": f"Describe {TOPICS[index % len(TOPICS)]} as JSON with its cast."}]
        )
        for index in range(rows)
    ]


def batch_rate(model, decoder: BatchedDecoder, rows: int, tokens: int) -> float:
    """Aggregate tokens/s of ``rows`` guided requests as rows of the batch."""
    sequences = [
        Sequence(
            ids,
            model.options(temperature=0),
            tokens,
            time.perf_counter(),
            matcher=decoder.grammars.matcher(tools.grammar(SCHEMA)),
        )
        for ids in requests(model, rows)
    ]
    start = time.perf_counter()
    decoder.add(sequences)
    while decoder.busy:
        decoder.advance()
    return sum(len(sequence.tokens) for sequence in sequences) / (time.perf_counter() - start)


def generators_rate(model, rows: int, tokens: int) -> float:
    """Aggregate tokens/s of the same requests on one guided generator each, stepped in turn."""
    start, count = time.perf_counter(), 0
    streams = [
        model.stream_generate(ids, guidance=tools.grammar(SCHEMA), temperature=0, max_tokens=tokens)
        for ids in requests(model, rows)
    ]
    while streams:
        for stream in list(streams):
            response = next(stream, None)
            count += response is not None
            if response is None or response.finish_reason:
                streams.remove(stream)
    return count / (time.perf_counter() - start)


def batch_arguments(description: str) -> argparse.ArgumentParser:
    """The options of a batched decoder's cost benchmark: the model, its rows, rounds and tokens per row."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("model")
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=48)
    return parser


def step_times(decoder: BatchedDecoder, rows: list[Sequence]) -> list[float]:
    """Seconds of each decode step in which all of ``rows`` are live: they are added and prefilled first,
    and run to their end after."""
    decoder.add(rows)
    while decoder.pending:
        decoder.advance()
    times = []
    while len(decoder.running) == len(rows):
        start = time.perf_counter()
        decoder.step()
        times.append(time.perf_counter() - start)
    while decoder.busy:
        decoder.advance()
    return times


def main() -> None:
    args = batch_arguments(__doc__.splitlines()[0]).parse_args()
    model = load(args.model)
    decoder = BatchedDecoder(model, args.rows, 1024)
    results = {"free": [], "guided": [], "fill": [], "batch": [], "generators": []}
    for _ in range(args.rounds):
        results["free"] += run(model, decoder, args.rows, args.tokens, False)[0]
        steps, fills = run(model, decoder, args.rows, args.tokens, True)
        results["guided"] += steps
        results["fill"] += fills
        results["batch"].append(batch_rate(model, decoder, args.rows, args.tokens))
        results["generators"].append(generators_rate(model, args.rows, args.tokens))
    free, guided = statistics.median(results["free"]), statistics.median(results["guided"])
    summary = {
        "cpu_info": describe_cpu().to_json(),  # first, so the output names its CPU at the top
        "rows": args.rows,
        "threads": model.threads,
        "load_average": os.getloadavg()[0],
        "step_ms_free": round(free * 1e3, 2),
        "step_ms_guided": round(guided * 1e3, 2),
        "guided_over_free": round(guided / free, 3),
        "cost_per_token_ms": round((guided - free) / args.rows * 1e3, 3),
        "mask_fill_ms_per_step": round(statistics.median(results["fill"]) * 1e3, 3) if results["fill"] else None,
        "guided_tokens_per_s_batch": round(statistics.median(results["batch"]), 1),
        "guided_tokens_per_s_one_generator_each": round(statistics.median(results["generators"]), 1),
        "steps_measured": {"free": len(results["free"]), "guided": len(results["guided"])},
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
