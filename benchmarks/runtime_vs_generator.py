#!/usr/bin/env python3
"""slmops runtime vs a bare onnxruntime-genai Generator loop, on the same prompt and options.

    python benchmarks/runtime_vs_generator.py MODEL [--rounds 5] [--max-tokens 128] [--json out.json]
        [--llama-bench PATH [--gguf FILE]]

MODEL is a cached model name or a model folder. Configurations measured:

- ``bare-default``: the loop with the folder's session options as they are;
- ``bare-tN``: the loop with N intra-op threads (N from --threads, default 1,2,3);
- ``slmops``: ``slmops.load(MODEL)`` (thread count detected) through
  ``Model.stream_generate``, the path every slmops command uses, without prompt lookup
  (``benchmarks/speculative.py`` measures that);
- ``slmops-tN``: the same with N threads, to separate the runtime's own cost from
  its choice of thread count.

With ``--llama-bench``, llama.cpp's own benchmark runs in every round too, on the GGUF the
model was converted from (default: the embedded SmolLM2 GGUF): ``tg`` of --max-tokens tokens
at a depth of the prompt's length, at slmops's thread count, with flash attention on and off;
the faster of the two is llama.cpp's figure.

Every round runs every configuration once, in a shuffled order, so that load from
other processes hits all of them alike. All get the same prompt token ids (the chat
prompt slmops renders) and greedy search, so all generate the same tokens. The bare
loop decodes text through a tokenizer stream, as any application must.
Reported: median decode tokens/s (after the first token), time to first token and
load time, and the ratios of slmops to the best bare configuration.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import time

import onnxruntime_genai as og

import slmops
from slmops.machine import describe_cpu
from slmops.runtime import collect

PROMPT = "Write a long story about a dragon who learns to bake bread."


def load_bare(path: str, threads: int | None):
    start = time.perf_counter()
    config = og.Config(path)
    if threads:
        config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}))
    model = og.Model(config)
    tokenizer = og.Tokenizer(model)
    return (model, tokenizer), time.perf_counter() - start


def run_bare(loaded, ids: list[int], max_tokens: int) -> tuple[float, float, int]:
    model, tokenizer = loaded
    start = time.perf_counter()
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + max_tokens, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(ids)
    stream = tokenizer.create_stream()
    count, first, pieces = 0, 0.0, []
    while not generator.is_done():
        generator.generate_next_token()
        pieces.append(stream.decode(generator.get_next_tokens()[0]))
        count += 1
        if count == 1:
            first = time.perf_counter()
    end = time.perf_counter()
    return first - start, (count - 1) / (end - first), count


def run_slmops(model, ids: list[int], max_tokens: int) -> tuple[float, float, int]:
    last = None
    # one token a step, as the bare loop and llama-bench decode: prompt lookup (on by default for
    # greedy answers) would draft a repeating answer and time the text, not the runtime
    options = {"max_tokens": max_tokens, "temperature": 0, "repetition_penalty": 1.0, "speculative": False}
    for last in model.stream_generate(ids, **options):  # noqa: B007
        pass
    return last.ttft_s, last.decode_tokens_per_s, last.completion_tokens


def load_slmops(name: str, threads: int | None):
    start = time.perf_counter()
    model = slmops.load(name, threads=threads)
    return model, time.perf_counter() - start


def llama_bench_command(binary: str, gguf, threads: int, *tests: str, warmup: bool = True) -> list[str]:
    """llama.cpp's own benchmark, one repetition per test, one JSON line per test: ``tests`` select
    them, e.g. ``"-p", "0", "-n", "64", "-d", "128"`` (lists like ``-d 128,1024`` give one test each)."""
    return [
        binary,
        "-m",
        str(gguf),
        "-t",
        str(threads),
        *tests,
        "-r",
        "1",
        "-o",
        "jsonl",
        *([] if warmup else ["--no-warmup"]),
    ]


def llama_bench_decode(
    binary: str, gguf, threads: int, depth: int, tokens: int, flash_attention: str, warmup: bool = True
) -> float:
    """llama.cpp's decode tokens/s from its own benchmark: ``tokens`` generated after ``depth`` tokens."""
    tests = ("-p", "0", "-n", str(tokens), "-d", str(depth), "-fa", flash_attention)
    command = llama_bench_command(binary, gguf, threads, *tests, warmup=warmup)
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.splitlines()[0])["avg_ts"]


def run_llama_bench(args, prompt_tokens: int, threads: int, flash_attention: str) -> tuple[float, float, int]:
    """As the other runners report, with no TTFT (llama-bench has none for this test)."""
    rate = llama_bench_decode(args.llama_bench, args.gguf, threads, prompt_tokens, args.max_tokens, flash_attention)
    return float("nan"), rate, args.max_tokens


def measure_loads(args, path: str, configs: dict) -> dict:
    """Load times, interleaved like the runs; each model is dropped before the next load."""
    loaders = {name: (lambda threads=threads: load_bare(path, threads)[1]) for name, threads in configs.items()}
    loaders["slmops"] = lambda: load_slmops(args.model, args.slmops_threads)[1]
    names = list(loaders)
    loads = {name: [] for name in names}
    for round_index in range(args.rounds):
        for name in names[round_index % len(names) :] + names[: round_index % len(names)]:
            loads[name].append(loaders[name]())
    return loads


def measure(args) -> dict:
    model, _ = load_slmops(args.model, args.slmops_threads)
    path = str(model.path)
    ids = model.prompt_ids([{"role": "user", "content": args.prompt}])
    configs = {"bare-default": None, **{f"bare-t{n}": n for n in args.threads}}
    loads = measure_loads(args, path, configs)
    loaded = {name: load_bare(path, threads)[0] for name, threads in configs.items()}
    runners = {name: (lambda item=item: run_bare(item, ids, args.max_tokens)) for name, item in loaded.items()}
    runners["slmops"] = lambda: run_slmops(model, ids, args.max_tokens)
    for threads in args.threads:  # the same thread counts as the bare loop: the runtime's own overhead
        pinned = load_slmops(args.model, threads)[0]
        runners[f"slmops-t{threads}"] = lambda pinned=pinned: run_slmops(pinned, ids, args.max_tokens)
    if args.llama_bench:  # each setting of flash attention is a contender; the faster one is llama.cpp's figure
        for setting in ("on", "off"):
            runners[f"llama.cpp-fa-{setting}"] = lambda setting=setting: run_llama_bench(
                args, len(ids), model.threads, setting
            )
    names = list(runners)
    for name in names:  # warm-up: first allocations, first kernels
        runners[name]()
    samples = {name: [] for name in names}
    for round_index in range(args.rounds):
        # A fresh random order each round: no configuration always runs right after the same
        # other one, whose thread pool may still be spinning down.
        order = random.Random(round_index).sample(names, len(names))
        for name in order:
            samples[name].append(runners[name]())
            print(
                f"round {round_index + 1} {name:13} ttft {samples[name][-1][0] * 1000:7.1f} ms  "
                f"decode {samples[name][-1][1]:7.1f} tok/s  ({samples[name][-1][2]} tokens)",
                file=sys.stderr,
            )
    summary = summarize(samples, loads, model, len(ids), args)
    summary["chat_third_turn"] = chat_turns(model, args)
    return summary


CHAT = [
    "What is the capital of France? Answer in one sentence.",
    "Name three famous museums there.",
    "Which one is the oldest?",
]


def chat_turns(model, args) -> dict:
    """TTFT of the third turn of a chat: a fresh generator (chat) vs a kept KV cache (conversation)."""
    history = []
    for question in CHAT[:-1]:
        history.append({"role": "user", "content": question})
        history.append({"role": "assistant", "content": model.chat(history, max_tokens=48, temperature=0).text})
    last = history + [{"role": "user", "content": CHAT[-1]}]
    fresh, kept = [], []
    for round_index in range(args.rounds):
        conversation = model.conversation(max_tokens=48, temperature=0)
        for turn in range(len(CHAT) - 1):  # earlier turns fill the conversation's cache
            collect(conversation.stream(history[: 2 * turn + 1]))
        pair = [
            ("fresh", lambda: model.chat(last, max_tokens=16, temperature=0).ttft_s),
            ("kept", lambda conversation=conversation: collect(conversation.stream(last)).ttft_s),
        ]
        for name, run in pair if round_index % 2 == 0 else pair[::-1]:
            (fresh if name == "fresh" else kept).append(run())
    return {
        "history_tokens": len(model.prompt_ids(last)),
        "fresh_ttft_ms": statistics.median(fresh) * 1000,
        "kept_ttft_ms": statistics.median(kept) * 1000,
    }


def summarize(samples: dict, loads: dict, model, prompt_tokens: int, args) -> dict:
    rows = {}
    for name, runs in samples.items():
        rows[name] = {
            "ttft_ms": statistics.median(run[0] for run in runs) * 1000,
            "decode_tokens_per_s": statistics.median(run[1] for run in runs),
            "tokens": runs[0][2],
            "load_s": statistics.median(loads[name]) if name in loads else None,
        }
    llamas = {name: rows.pop(name) for name in list(rows) if name.startswith("llama.cpp")}
    llama_name = max(llamas, key=lambda name: llamas[name]["decode_tokens_per_s"]) if llamas else None
    llama = llamas.get(llama_name)
    bare = {name: row for name, row in rows.items() if name.startswith("bare")}
    best = max(bare, key=lambda name: bare[name]["decode_tokens_per_s"])
    ours = rows["slmops"]
    same = rows.get(best.replace("bare", "slmops")) if best != "bare-default" else None
    return {
        "cpu_info": describe_cpu().to_json(),
        "model": model.name,
        "path": str(model.path),
        "prompt_tokens": prompt_tokens,
        "max_tokens": args.max_tokens,
        "rounds": args.rounds,
        "slmops_threads": model.threads,
        "results": rows,
        "best_bare": best,
        "decode_ratio": ours["decode_tokens_per_s"] / bare[best]["decode_tokens_per_s"],
        "ttft_ratio": ours["ttft_ms"] / bare[best]["ttft_ms"],
        "vs_default_decode_ratio": ours["decode_tokens_per_s"] / rows["bare-default"]["decode_tokens_per_s"],
        "same_threads_decode_ratio": same["decode_tokens_per_s"] / bare[best]["decode_tokens_per_s"] if same else None,
        "same_threads_ttft_ratio": same["ttft_ms"] / bare[best]["ttft_ms"] if same else None,
        "llama_cpp": {name: row["decode_tokens_per_s"] for name, row in llamas.items()},
        "llama_cpp_best": llama_name,
        "llama_cpp_decode_tokens_per_s": llama["decode_tokens_per_s"] if llama else None,
        "llama_cpp_decode_ratio": ours["decode_tokens_per_s"] / llama["decode_tokens_per_s"] if llama else None,
    }


def report(summary: dict) -> None:
    print(
        f"{summary['model']}: prompt {summary['prompt_tokens']} tokens, {summary['max_tokens']} generated, "
        f"{summary['rounds']} interleaved rounds, medians; slmops ran {summary['slmops_threads']} threads"
    )
    print(f"{'configuration':15} {'decode tok/s':>12} {'TTFT ms':>9} {'load s':>7}")
    for name, row in summary["results"].items():
        load = f"{row['load_s']:7.2f}" if row["load_s"] is not None else "      -"
        print(f"{name:15} {row['decode_tokens_per_s']:12.1f} {row['ttft_ms']:9.1f} {load}")
    print(
        f"slmops / {summary['best_bare']} (best bare loop): decode {summary['decode_ratio']:.3f}x "
        f"(target >= 0.95), TTFT {summary['ttft_ratio']:.3f}x (target <= 1.05)"
    )
    if summary["same_threads_decode_ratio"] is not None:
        print(
            f"slmops at the same thread count / {summary['best_bare']}: decode "
            f"{summary['same_threads_decode_ratio']:.3f}x, TTFT {summary['same_threads_ttft_ratio']:.3f}x"
        )
    print(f"slmops / bare-default: decode {summary['vs_default_decode_ratio']:.2f}x")
    if summary["llama_cpp_decode_ratio"] is not None:
        measured = ", ".join(f"{name} {rate:.1f}" for name, rate in summary["llama_cpp"].items())
        print(f"llama-bench, {summary['slmops_threads']} threads, decode tok/s: {measured}")
        print(f"slmops / {summary['llama_cpp_best']}: decode {summary['llama_cpp_decode_ratio']:.2f}x (target >= 1.5)")
    chat = summary["chat_third_turn"]
    print(
        f"third chat turn ({chat['history_tokens']} prompt tokens): TTFT {chat['fresh_ttft_ms']:.1f} ms with a "
        f"fresh generator, {chat['kept_ttft_ms']:.1f} ms with the conversation's kept KV cache"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", help="a cached model name or a model folder")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument(
        "--threads",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[1, 2, 3],
        help="thread counts for the bare loop, e.g. 1,2,3",
    )
    parser.add_argument("--slmops-threads", type=int, default=None, help="default: detected")
    parser.add_argument("--prompt", default=PROMPT)
    parser.add_argument("--json", help="also write the summary to this file")
    parser.add_argument("--llama-bench", help="llama.cpp's llama-bench binary, to measure llama.cpp in every round")
    parser.add_argument("--gguf", help="the GGUF for llama-bench (default: the embedded SmolLM2 GGUF)")
    args = parser.parse_args()
    print(f"CPU: {describe_cpu().summary()}", flush=True)
    if args.llama_bench and not args.gguf:
        from slmops.convert import embedded_model

        args.gguf = str(embedded_model())
    summary = measure(args)
    report(summary)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(summary, handle, indent=2)


if __name__ == "__main__":
    main()
