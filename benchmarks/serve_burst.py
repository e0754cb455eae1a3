#!/usr/bin/env python3
"""First tokens under a burst: 8 streams arriving together, slmops serve against llama-server.

    .venv/bin/python benchmarks/serve_burst.py [MODEL_FOLDER] [--rounds 5] [--tokens 128]
        [--baseline-src DIR] [--llama-server PATH] [--gguf PATH]

Per round, interleaved (the contenders' order rotates so machine load hits each alike):
8 concurrent streamed completions of the counting prompt to `slmops serve`, to the same
server run from an earlier source tree (``--baseline-src``, e.g. a worktree of the last
release: the "before" of a scheduling change, measured in the same run), and to
`llama-server --parallel 8` on the GGUF the model was converted from. Printed: median
and p95 time to first token over every stream of every round, and the aggregate tok/s.

Where a burst's first tokens go is shown beside them, measured in this process on the
same model: one prompt's prefill alone, the 8 prompts prefilled as one group, and one
decode step of 8 rows (onnxruntime's prompt kernels cost about the same per token in a
group as alone, so one group hands all 8 first tokens out at its end).

A second burst (``--chat-burst``, on by default) sends 8 *different* chat questions together,
each with the model's default system prompt (the chat template adds it), to /v1/chat/completions:
the prompts share their beginning only, and answers end where the model ends them (no
ignore_eos for either server), so its aggregate counts the tokens each server chose to write.
A third burst (on with the second) asks the 8 questions with an opening new to each round
("Round 3. What is …"): no server has seen these prompts, only their template and system prompt.
``--pause`` seconds separate the contenders' turns, so work a server does after its answers
(slmops prefills finished answers again when idle) does not run beside the other's burst.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from serve_throughput import (
    PROMPT,
    STREAMS,
    THREADS,
    _p95,
    aggregate,
    convert,
    find_llama_server,
    http_batch,
    llama_server,
)
from slmops.bench.runner import run_batch
from slmops.bench.targets import Prompt, UrlTarget
from slmops.convert import embedded_model
from slmops.machine import describe_cpu
from slmops.server.process import ServerProcess


def slmops_server(folder: Path, source: str | None, label: str) -> ServerProcess:
    env = dict(os.environ, SLMOPS_HOME=tempfile.mkdtemp(prefix="slmops-bench-"))
    if source:
        env["PYTHONPATH"] = source
    command = [sys.executable, "-m", "slmops", "serve", str(folder), "--log-level", "warning"]
    command += ["--parallel", str(STREAMS), "--threads", str(THREADS)]
    return ServerProcess(command, env=env, label=label)


QUESTIONS = [
    "What is the capital of France?",
    "How do plants make their food?",
    "Give me three tips for better sleep.",
    "Why is the sky blue?",
    "What does a compiler do?",
    "Name two uses of copper.",
    "How far is the Moon from the Earth?",
    "What is a prime number?",
]


def chat_burst(target: UrlTarget, tokens: int, opening: str = "") -> list:
    """8 different questions at once, each after ``opening``; answers may end before ``tokens``."""
    prompts = [Prompt(opening + question, 0, opening + question) for question in QUESTIONS[:STREAMS]]
    records, _ = run_batch(target, prompts, tokens, time.perf_counter)
    failed = [record.error for record in records if record.error]
    if failed or len(records) != len(prompts):
        raise SystemExit(f"{target.label}: the chat burst failed: {failed[:1]}")
    return records


def breakdown(folder: Path) -> dict[str, float]:
    """Seconds for one prompt's prefill, the burst's 8 prompts as one group, 8 rows of one token."""
    from slmops.runtime import load
    from slmops.runtime.batched import BatchedDecoder

    model = load(folder, threads=THREADS)
    decoder = BatchedDecoder(model, STREAMS, 2048)
    ids = np.array([model.encode(PROMPT)], np.int64)

    def timed(batch: np.ndarray) -> float:
        times = []
        for _ in range(5):
            start = time.perf_counter()
            decoder._run_prompt(batch, np.ones_like(batch), 0, [], [batch.shape[1] - 1] * len(batch), False)
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    one, group = timed(ids), timed(np.repeat(ids, STREAMS, axis=0))
    step = timed(np.repeat(ids[:, :1], STREAMS, axis=0))
    return {
        "prompt tokens": ids.shape[1],
        "one prompt": one,
        "8 prompts, one group": group,
        "8 rows, one token each": step,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, nargs="?", help="INT4 model folder [default: the embedded GGUF]")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument(
        "--baseline-src", action="append", default=[], help="an earlier slmops src/ to run as 'before' (repeatable)"
    )
    parser.add_argument("--llama-server", help="llama-server binary [default: on PATH or /opt/llama-server/bin]")
    parser.add_argument("--gguf", type=Path, help="GGUF for llama-server [default: the embedded SmolLM2 Q4_1]")
    parser.add_argument("--llama-threads", type=int, default=THREADS, help="llama-server -t [default: 2]")
    parser.add_argument("--no-chat-burst", dest="chat_burst", action="store_false", help="only the identical prompts")
    parser.add_argument("--pause", type=float, default=2.0, help="seconds between contenders' turns [default: 2]")
    args = parser.parse_args()
    print(f"CPU: {describe_cpu().summary()}", flush=True)
    binary = find_llama_server(args.llama_server)
    gguf = args.gguf or embedded_model()
    folder = args.folder or convert(gguf)
    servers = {"slmops serve": slmops_server(folder, None, "slmops serve")}
    for source in args.baseline_src:
        label = f"slmops serve ({Path(source).resolve().parent.name})"
        servers[label] = slmops_server(folder, source, label)
    if binary:
        servers["llama-server"] = llama_server(binary, gguf, args.llama_threads, "on")
    load_before = os.getloadavg()[0]
    ttfts: dict[str, list[float]] = {label: [] for label in servers}
    rates: dict[str, list[float]] = {label: [] for label in servers}
    chat_ttfts: dict[str, list[float]] = {label: [] for label in servers}
    chat_rates: dict[str, list[float]] = {label: [] for label in servers}
    new_ttfts: dict[str, list[float]] = {label: [] for label in servers}
    try:
        for server in servers.values():
            server.wait_ready(300)
        targets = {
            label: UrlTarget(server.url, endpoint="completions", ignore_eos=label == "llama-server")
            for label, server in servers.items()
        }
        prompt = Prompt(PROMPT, 0, PROMPT)
        chats = {label: UrlTarget(server.url, endpoint="chat") for label, server in servers.items()}
        for label, target in targets.items():
            target.load()
            http_batch(target, prompt, STREAMS, 8)  # warm: the first batch pays one-time costs
            if args.chat_burst:
                chats[label].load()
                chat_burst(chats[label], 8)
        labels = list(targets)
        for index in range(args.rounds):
            for label in labels[index % len(labels) :] + labels[: index % len(labels)]:
                records = http_batch(targets[label], prompt, STREAMS, args.tokens)
                ttfts[label] += [record.ttft for record in records]
                rates[label].append(aggregate(records))
                print(f"  round {index + 1}, {label}: TTFTs {' '.join(f'{r.ttft:.2f}' for r in records)}", flush=True)
                time.sleep(args.pause)
                if args.chat_burst:
                    records = chat_burst(chats[label], args.tokens)
                    chat_ttfts[label] += [record.ttft for record in records]
                    chat_rates[label].append(aggregate(records))
                    print(f"    8 questions: TTFTs {' '.join(f'{r.ttft:.2f}' for r in records)}", flush=True)
                    time.sleep(args.pause)
                    records = chat_burst(chats[label], args.tokens, f"Round {index + 1}. ")
                    new_ttfts[label] += [record.ttft for record in records]
                    print(f"    8 new questions: TTFTs {' '.join(f'{r.ttft:.2f}' for r in records)}", flush=True)
                    time.sleep(args.pause)
    finally:
        for server in servers.values():
            server.stop()
    load_after = os.getloadavg()[0]
    parts = breakdown(folder)
    print(
        f"\n8 streams arriving together, {args.tokens} tokens each, {args.rounds} interleaved rounds; "
        f"1-minute load average {load_before:.2f} before, {load_after:.2f} after"
    )
    for label in servers:
        print(
            f"  {label:32s} TTFT median {statistics.median(ttfts[label]):.3f} s, p95 {_p95(ttfts[label]):.3f} s; "
            f"aggregate {statistics.median(rates[label]):.1f} tok/s"
        )
    if args.chat_burst:
        print("8 different chat questions arriving together (the default system prompt), same rounds")
        for label in servers:
            print(
                f"  {label:32s} TTFT median {statistics.median(chat_ttfts[label]):.3f} s, "
                f"p95 {_p95(chat_ttfts[label]):.3f} s; aggregate {statistics.median(chat_rates[label]):.1f} tok/s"
            )
        print("8 questions no server saw before (a new opening each round), same rounds")
        for label in servers:
            print(
                f"  {label:32s} TTFT median {statistics.median(new_ttfts[label]):.3f} s, p95 {_p95(new_ttfts[label]):.3f} s"
            )
    print("  in this process, " + ", ".join(f"{k}: {v:.3f}" for k, v in parts.items()))


if __name__ == "__main__":
    main()
