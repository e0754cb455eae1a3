"""What batching the inputs of one embeddings request buys, batched and one-by-one runs interleaved.

    .venv/bin/python benchmarks/embeddings_batching.py EMBEDDING_MODEL [--texts 32] [--rounds 5]

Each round embeds the same texts (varied lengths, 8 to ~60 tokens) twice: in one
``Embedder.embed`` call (padded batches of similar lengths, as ``/v1/embeddings`` runs a
request) and one text per call. Prints the median texts/s of each and their ratio, and
the largest difference between the two paths' vectors (padding must change nothing).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from slmops.machine import describe_cpu
from slmops.runtime.embed import load_embedder

WORDS = (
    "the model converts small language models to onnx and serves them on a cpu with a cache of folders "
    "while requests share one batch and the answers stream back token by token to every client"
).split()


def texts(count: int) -> list[str]:
    """Sentences of 6 to 45 words, the same for every run."""
    rng = np.random.default_rng(0)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(6, 46)))) + "." for _ in range(count)]


def timed(call) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    vectors = np.array(call())
    return time.perf_counter() - start, vectors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="an embedding model: cached name or folder")
    parser.add_argument("--texts", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    embedder = load_embedder(args.model)
    inputs = texts(args.texts)
    embedder.embed(inputs[:2])  # warm-up
    batched, single, diff = [], [], 0.0
    for _ in range(args.rounds):
        seconds, together = timed(lambda: embedder.embed(inputs))
        batched.append(seconds)
        seconds, alone = timed(lambda: [embedder.embed(text)[0] for text in inputs])
        single.append(seconds)
        diff = max(diff, float(np.abs(together - alone).max()))
    batched_rate = args.texts / statistics.median(batched)
    single_rate = args.texts / statistics.median(single)
    print(
        f"CPU: {describe_cpu().summary()}; {embedder.threads} threads; model {embedder.name} ({embedder.dimensions} dims)"
    )
    print(f"{args.texts} texts, {args.rounds} interleaved rounds, medians")
    print(f"batched:    {batched_rate:8.1f} texts/s")
    print(f"one by one: {single_rate:8.1f} texts/s")
    print(f"batched / one by one: {batched_rate / single_rate:.2f}x; largest vector difference {diff:.2e}")


if __name__ == "__main__":
    main()
