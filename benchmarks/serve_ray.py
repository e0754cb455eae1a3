#!/usr/bin/env python3
"""`slmops serve` on Ray Serve against plain `slmops serve`, measured side by side in one run.

    .venv/bin/python benchmarks/serve_ray.py [MODEL_FOLDER] [--rounds 3] [--tokens 128] [--out FILE]

Without MODEL_FOLDER, the embedded SmolLM2-135M-Instruct GGUF is converted to INT4 first.
Three servers run at once on the same weights, each with 2 CPUs' worth of threads:
  - plain `slmops serve --threads 2`;
  - Ray Serve, 1 replica x 2 CPUs (2 threads), behind Ray's HTTP proxy;
  - Ray Serve, 2 replicas x 1 CPU (1 thread each), behind the proxy.
Per round, interleaved so machine load hits every contender alike, each gets 1, 8 and 16
concurrent streams of the same counting prompt (greedy, every answer the same length), sent
by slmops bench's own load generator (its --url target). The figures are medians over the
rounds of the aggregate tokens/s; the JSON holds every value, the CPU and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

import psutil

from serve_throughput import PROMPT, aggregate, convert, http_batch, slmops_server
from slmops.bench.targets import Prompt, UrlTarget
from slmops.cache.resolver import resolve
from slmops.convert import embedded_model
from slmops.machine import describe_cpu

STREAMS = (1, 8, 16)
# Every contender admits 16 rows at once: the streams never queue behind --parallel.
PARALLEL = ("--parallel", "16")
CONTENDERS = {
    "plain": ("--threads", "2"),
    "ray 1x2": ("--replicas", "1", "--cpus-per-replica", "2", "--threads", "2"),
    "ray 2x1": ("--replicas", "2", "--cpus-per-replica", "1", "--threads", "1"),
}


def label(contender: str, streams: int) -> str:
    return f"{contender}, {streams} streams (tok/s)"


def measure_round(
    rows: dict[str, list[float]], targets: dict[str, UrlTarget], proxies: dict, prompt: Prompt, tokens: int
) -> None:
    for streams in STREAMS:
        for contender, target in targets.items():
            proxy_before = _cpu_seconds(proxies.get(contender))
            value = aggregate(http_batch(target, prompt, streams, tokens))
            rows.setdefault(label(contender, streams), []).append(value)
            if contender in proxies:
                used = _cpu_seconds(proxies[contender]) - proxy_before
                rows.setdefault(f"{contender}, {streams} streams: proxy CPU ms per token", []).append(
                    1000 * used / (streams * tokens)
                )
            print(f"  {label(contender, streams):36s} {value:7.1f}", flush=True)


def proxy_process(server) -> psutil.Process | None:
    """Ray Serve's HTTP proxy actor under a `slmops serve --replicas` process: every token passes it."""
    for child in psutil.Process(server.process.pid).children(recursive=True):
        if child.name().startswith("ray::ProxyActor"):
            return child
    return None


def _cpu_seconds(process: psutil.Process | None) -> float:
    if process is None:
        return 0.0
    times = process.cpu_times()
    return times.user + times.system


def ratios(medians: dict[str, float]) -> dict[str, float]:
    out = {"ray 1x2 / plain, 8 streams (target >= 0.9)": medians[label("ray 1x2", 8)] / medians[label("plain", 8)]}
    for streams in STREAMS:
        key = f"ray 2x1 / ray 1x2, {streams} streams"
        out[key] = medians[label("ray 2x1", streams)] / medians[label("ray 1x2", streams)]
    out["ray 1x2 / plain, 1 stream"] = medians[label("ray 1x2", 1)] / medians[label("plain", 1)]
    out["ray 1x2 / plain, 16 streams"] = medians[label("ray 1x2", 16)] / medians[label("plain", 16)]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "folder", type=Path, nargs="?", help="INT4 model folder [default: the embedded GGUF, converted]"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--out", type=Path, help="JSON results [default: benchmarks/results-serve-ray-CPU.json]")
    args = parser.parse_args()
    cpu = describe_cpu()
    print(f"CPU: {cpu.summary()}", flush=True)
    folder = args.folder or convert(embedded_model())
    model_name = resolve(folder).name  # the name the servers give the folder (its inference_model.json's)
    # Ray's usage statistics stay off, and each local Ray keeps its token in its own folder.
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    servers = {name: slmops_server(folder, *PARALLEL, *flags) for name, flags in CONTENDERS.items()}
    rows: dict[str, list[float]] = {}
    load_before = os.getloadavg()[0]
    try:
        for server in servers.values():
            server.wait_ready(600)  # two local Rays and a plain server start at once on 2 cores
        targets = {label: UrlTarget(s.url, model_name, endpoint="completions") for label, s in servers.items()}
        for target in targets.values():
            target.load()
        prompt = Prompt(PROMPT, 0, PROMPT)
        proxies = {name: proxy_process(s) for name, s in servers.items() if name != "plain"}
        for number in range(args.rounds):
            print(f"round {number + 1} of {args.rounds}", flush=True)
            measure_round(rows, targets, {k: v for k, v in proxies.items() if v}, prompt, args.tokens)
    finally:
        for server in servers.values():
            server.stop(60)
    load = (load_before, os.getloadavg()[0])
    medians = {key: statistics.median(values) for key, values in rows.items()}
    result = {
        "cpu": cpu.to_json(),
        "cpu_summary": cpu.summary(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "model": model_name,
        "tokens": args.tokens,
        "rounds": args.rounds,
        "load_average_1m": {"before": load[0], "after": load[1]},
        "contenders": {name: " ".join(["slmops serve", *PARALLEL, *flags]) for name, flags in CONTENDERS.items()},
        "rows": rows,
        "medians": medians,
        "ratios": ratios(medians),
    }
    report(result)
    out = args.out or Path(__file__).parent / f"results-serve-ray-{_slug(cpu.label)}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


def report(result: dict) -> None:
    load = result["load_average_1m"]
    print(
        f"\n{result['tokens']} new tokens per answer, medians of {result['rounds']} interleaved rounds; "
        f"1-minute load average {load['before']:.2f} before, {load['after']:.2f} after"
    )
    for key, values in result["rows"].items():
        print(f"  {key:36s} {result['medians'][key]:7.1f}   {' '.join(f'{v:.1f}' for v in values)}")
    for key, value in result["ratios"].items():
        print(f"  {key:46s} {value:.2f}x")


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-").replace("--", "-").replace("--", "-")


if __name__ == "__main__":
    sys.exit(main())
