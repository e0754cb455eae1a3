"""The service against its references, measured side by side in one run.

    .venv/bin/python benchmarks/serve_throughput.py MODEL_FOLDER [--rounds 3] [--tokens 128]

Per round, interleaved so machine load hits every contender alike:
  1. single stream: the in-process runtime vs one streamed HTTP request;
  2. 8 equal prompts: a bare onnxruntime-genai Generator with a static batch of 8
     (the kernels' ceiling) vs 8 concurrent HTTP streams, with batching and without;
  3. a late request joining 7 running streams: its time to first token.
Every answer is forced to the same length (a counting prompt, greedy, checked).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

PROMPT = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,"


def start_server(folder: Path, port: int, *flags: str) -> subprocess.Popen:
    home = tempfile.mkdtemp(prefix="slmops-bench-")
    env = dict(os.environ, SLMOPS_HOME=home)
    process = subprocess.Popen([sys.executable, "-m", "slmops", "serve", str(folder), "--port", str(port),
                                "--log-level", "warning", "--parallel", "8", *flags], env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.3)
    process.kill()
    raise SystemExit("the server did not start")


async def stream(http: httpx.AsyncClient, model: str, tokens: int) -> dict:
    body = {"model": model, "prompt": PROMPT, "max_tokens": tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
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
    count = usage["completion_tokens"]
    return {"start": start, "first": times[0], "last": times[-1], "tokens": count}


async def http_streams(url: str, model: str, n: int, tokens: int) -> list[dict]:
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=httpx.Limits(max_connections=32)) as http:
        return await asyncio.gather(*(stream(http, model, tokens) for _ in range(n)))


async def late_join(url: str, model: str, tokens: int) -> tuple[float, float]:
    """TTFT of a request sent while 7 long streams decode, and how long those streams still ran."""
    async with httpx.AsyncClient(base_url=url, timeout=600) as http:
        running = [asyncio.create_task(stream(http, model, tokens)) for _ in range(7)]
        await asyncio.sleep(0.5 + tokens / 400)  # well into their decode
        late = await stream(http, model, 4)
        others = await asyncio.gather(*running)
    return late["first"] - late["start"], max(o["last"] for o in others) - late["start"]


def in_process(model, tokens: int) -> float:
    result = model.generate(PROMPT, max_tokens=tokens, temperature=0)
    assert result.completion_tokens == tokens, result.completion_tokens
    return result.decode_tokens_per_s


def static_batch(og_model, ids: list[int], batch: int, tokens: int) -> float:
    import onnxruntime_genai as og

    start = time.perf_counter()
    params = og.GeneratorParams(og_model)
    params.set_search_options(max_length=len(ids) + tokens, min_length=len(ids) + tokens, batch_size=batch)
    generator = og.Generator(og_model, params)
    generator.append_tokens(np.tile(np.array(ids, np.int32), (batch, 1)))
    while not generator.is_done():
        generator.generate_next_token()
    return batch * tokens / (time.perf_counter() - start)


def aggregate(results: list[dict]) -> float:
    return sum(r["tokens"] for r in results) / (max(r["last"] for r in results) - min(r["start"] for r in results))


def single_decode(result: dict) -> float:
    return (result["tokens"] - 1) / (result["last"] - result["first"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=128)
    args = parser.parse_args()

    from slmops.runtime import load

    model = load(args.folder)
    name = model.name
    ids = model.encode(PROMPT)
    batched = start_server(args.folder, 5391)
    plain = start_server(args.folder, 5392, "--no-batching")
    rows: dict[str, list[float]] = {}
    ttfts: list[float] = []
    try:
        for _ in range(args.rounds):
            run = {
                "in-process runtime, 1 stream (decode tok/s)": lambda: in_process(model, args.tokens),
                "HTTP, 1 stream (decode tok/s)": lambda: single_decode(
                    asyncio.run(http_streams("http://127.0.0.1:5391", name, 1, args.tokens))[0]),
                "og Generator, static batch of 8 (tok/s)": lambda: static_batch(model.og_model, ids, 8, args.tokens),
                "HTTP, 8 streams, batching (tok/s)": lambda: _eight("http://127.0.0.1:5391", name, args.tokens, ttfts),
                "HTTP, 8 streams, --no-batching (tok/s)": lambda: _eight("http://127.0.0.1:5392", name, args.tokens),
                "og Generator, batch of 1 (tok/s)": lambda: static_batch(model.og_model, ids, 1, args.tokens),
            }
            for label, measure in run.items():
                rows.setdefault(label, []).append(measure())
        late, remaining = asyncio.run(late_join("http://127.0.0.1:5391", name, args.tokens))
    finally:
        for process in (batched, plain):
            process.terminate()
            process.wait(30)
    report(rows, ttfts, late, remaining, model.threads, args.tokens)


def _eight(url: str, name: str, tokens: int, ttfts: list | None = None) -> float:
    results = asyncio.run(http_streams(url, name, 8, tokens))
    assert all(r["tokens"] == tokens for r in results), [r["tokens"] for r in results]
    if ttfts is not None:
        ttfts.extend(r["first"] - r["start"] for r in results)
    return aggregate(results)


def report(rows: dict, ttfts: list, late: float, remaining: float, threads: int, tokens: int) -> None:
    print(f"\n{tokens} new tokens per answer, {threads} threads, medians of {len(next(iter(rows.values())))} rounds")
    medians = {label: statistics.median(values) for label, values in rows.items()}
    for label, value in medians.items():
        print(f"  {label:48s} {value:7.1f}   {' '.join(f'{v:.1f}' for v in rows[label])}")
    single = medians["HTTP, 1 stream (decode tok/s)"] / medians["in-process runtime, 1 stream (decode tok/s)"]
    eight = medians["HTTP, 8 streams, batching (tok/s)"] / medians["og Generator, static batch of 8 (tok/s)"]
    print(f"  HTTP single stream / in-process: {single:.2f}x (target >= 0.9)")
    print(f"  HTTP 8 streams / static batch of 8: {eight:.2f}x (target >= 0.9)")
    ttfts.sort()
    p95 = ttfts[max(0, int(round(0.95 * len(ttfts))) - 1)]
    print(f"  time to first token at 8 streams: median {statistics.median(ttfts):.3f} s, p95 {p95:.3f} s")
    print(f"  a request joining 7 running streams: first token after {late:.3f} s; "
          f"the running streams still needed {remaining:.2f} s")


if __name__ == "__main__":
    main()
