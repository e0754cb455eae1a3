"""Time to first token under concurrency: this tree's `slmops serve` against an earlier commit's.

    .venv/bin/python benchmarks/serve_joins.py MODEL_FOLDER --before COMMIT [--rounds 2]
        [--concurrency 8,16] [--prompt-tokens 128] [--tokens 32]

Both servers run at once (``--parallel 16``), the earlier one from ``git archive
COMMIT src``; each round sends every concurrency level to each server in turn
(alternating which goes first), so machine load hits both alike. Every request
has its own prompt of about ``--prompt-tokens`` tokens. Reported: TTFT p50/p95,
the longest pause a running stream saw, and the load average.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from slmops.machine import describe_cpu
from slmops.server.process import ServerProcess

ROOT = Path(__file__).resolve().parent.parent


def source_of(commit: str) -> Path:
    folder = Path(tempfile.mkdtemp(prefix="slmops-before-"))
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit, "src"], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True)
    return folder / "src"


def start(folder: Path, src: Path) -> ServerProcess:
    """`slmops serve` from the sources in ``src``, ready."""
    env = dict(os.environ, SLMOPS_HOME=tempfile.mkdtemp(prefix="slmops-bench-"), PYTHONPATH=str(src))
    command = [sys.executable, "-m", "slmops", "serve", str(folder), "--log-level", "warning"]
    command += ["--parallel", "16", "--max-queue", "64"]
    return ServerProcess(command, env=env, label=f"slmops serve from {src}").wait_ready(180)


WORDS = (
    "river stone light garden winter market letter window silver forest number morning "
    "harbor village mountain paper engine island summer candle"
).split()


def prompts(folder: Path, count: int, tokens: int) -> list[str]:
    """``count`` different prompts of ``tokens`` tokens each (counted with the model's tokenizer)."""
    import llguidance

    tokenizer = llguidance.LLTokenizer((folder / "tokenizer.json").read_text(encoding="utf-8"))
    texts = []
    for index in range(count):
        words, text = [f"Story {index}:"], ""
        while len(tokenizer.tokenize_str(text)) < tokens:
            text = " ".join(words)
            words.append(WORDS[(index * 7 + len(words) * 3) % len(WORDS)])
        texts.append(text)
    return texts


async def one(http: httpx.AsyncClient, model: str, text: str, tokens: int) -> dict:
    body = {
        "model": model,
        "prompt": text,
        "max_tokens": tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start, times, usage = time.perf_counter(), [], None
    async with http.stream("POST", "/v1/completions", json=body) as answer:
        async for line in answer.aiter_lines():
            if not line.startswith("data: {"):
                continue
            event = json.loads(line[6:])
            if event.get("usage"):
                usage = event["usage"]
            elif event["choices"] and event["choices"][0]["text"]:
                times.append(time.perf_counter())
    gaps = [later - earlier for earlier, later in zip(times, times[1:])]
    return {"ttft": times[0] - start, "gap": max(gaps, default=0.0), "prompt_tokens": usage["prompt_tokens"]}


async def burst(url: str, model: str, texts: list[str], tokens: int) -> list[dict]:
    async with httpx.AsyncClient(base_url=url, timeout=900) as http:
        return await asyncio.gather(*(one(http, model, text, tokens) for text in texts))


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--before", required=True, help="git commit of the reference server")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", default="8,16")
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--tokens", type=int, default=32)
    args = parser.parse_args()
    print(json.dumps({"cpu_info": describe_cpu().to_json()}), flush=True)  # its output is JSON lines
    levels = [int(level) for level in args.concurrency.split(",")]
    texts = prompts(Path(args.model), max(levels), args.prompt_tokens)
    sources = {"before": source_of(args.before), "after": ROOT / "src"}
    servers = {name: start(Path(args.model), src) for name, src in sources.items()}
    model = httpx.get(servers["after"].url + "/v1/models").json()["data"][0]["id"]
    results: dict = {(name, level): [] for name in servers for level in levels}
    loads = []
    try:
        for server in servers.values():  # warm-up: load the model, one answer each
            asyncio.run(burst(server.url, model, ["Hello"], 4))
        for round_ in range(args.rounds):
            order = list(servers) if round_ % 2 == 0 else list(reversed(servers))
            for level in levels:
                for name in order:
                    results[name, level] += asyncio.run(burst(servers[name].url, model, texts[:level], args.tokens))
                    loads.append(os.getloadavg()[0])
    finally:
        for server in servers.values():
            server.stop()
        shutil.rmtree(sources["before"].parent, ignore_errors=True)
    report(results, levels, loads)


def report(results: dict, levels: list[int], loads: list[float]) -> None:
    rows = []
    for level in levels:
        for name in ("before", "after"):
            items = results[name, level]
            ttft = [item["ttft"] for item in items]
            rows.append(
                {
                    "server": name,
                    "concurrency": level,
                    "requests": len(items),
                    "prompt_tokens": statistics.median(item["prompt_tokens"] for item in items),
                    "ttft_p50_s": round(percentile(ttft, 0.5), 2),
                    "ttft_p95_s": round(percentile(ttft, 0.95), 2),
                    "longest_pause_s": round(max(item["gap"] for item in items), 2),
                }
            )
    for row in rows:
        print(json.dumps(row))
    print(json.dumps({"load_average_min": min(loads), "load_average_max": max(loads)}))


if __name__ == "__main__":
    main()
