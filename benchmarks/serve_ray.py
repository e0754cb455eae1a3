#!/usr/bin/env python3
"""`slmops serve` on Ray Serve against plain `slmops serve`, measured side by side in one run.

    .venv/bin/python benchmarks/serve_ray.py [MODEL_FOLDER] [--rounds 3] [--tokens 128] [--out FILE]
    .venv/bin/python benchmarks/serve_ray.py [MODEL_FOLDER] --set proxy --streams 8 [--rounds 5]

Without MODEL_FOLDER, the embedded SmolLM2-135M-Instruct GGUF is converted to INT4 first.
Three servers run at once on the same weights, each with 2 CPUs' worth of threads:
  - plain `slmops serve --threads 2`;
  - Ray Serve, 1 replica x 2 CPUs (2 threads), behind Ray's HTTP proxy;
  - Ray Serve, 2 replicas x 1 CPU (1 thread each), behind the proxy.
Per round, interleaved so machine load hits every contender alike, each gets 1, 8 and 16
concurrent streams of the same counting prompt (greedy, every answer the same length), sent
by slmops bench's own load generator (its --url target). The figures are medians over the
rounds of the aggregate tokens/s; the JSON holds every value, the CPU and the load average.

``--set proxy`` measures what the proxy costs instead: plain `slmops serve` twice (the two
plain servers differ only by the machine's noise), and Ray 1 x 2 with Ray Serve's defaults (as
`slmops serve --replicas` runs it), with gRPC from proxy to replica, and with gRPC and one
event loop in the replica and in the proxy. Besides tokens/s, it reads the CPU time every
server spent per token (its whole process tree), which the machine's load moves far less.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
from pathlib import Path

import psutil

from serve_throughput import PROMPT, aggregate, convert, http_batch, serve_arguments, slmops_server
from slmops.bench.targets import Prompt, UrlTarget
from slmops.cache.resolver import resolve
from slmops.convert import embedded_model
from slmops.machine import describe_cpu
from slmops.server.process import ServerProcess

STREAMS = (1, 8, 16)
# Every contender admits 16 rows at once: the streams never queue behind --parallel.
PARALLEL = ("--parallel", "16")
RAY_1X2 = ("--replicas", "1", "--cpus-per-replica", "2", "--threads", "2")
# Ray Serve's switches for how an SSE chunk crosses from the replica to the proxy: by gRPC
# rather than as an item of a Ray streaming generator, and with one event loop in the replica
# and in the proxy rather than two (user code and router each in a loop of their own).
# `slmops serve --replicas` leaves Ray's defaults (RAY_DEFAULTS): measured, neither switch
# made the whole server cheaper per token.
GRPC_ONE_LOOP = {
    "RAY_SERVE_PROXY_USE_GRPC": "1",
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
}
RAY_DEFAULTS = {name: "0" if value == "1" else "1" for name, value in GRPC_ONE_LOOP.items()}
CONTENDERS: dict[str, tuple[tuple[str, ...], dict[str, str]]] = {
    "plain": (("--threads", "2"), {}),
    "ray 1x2": (RAY_1X2, {}),
    "ray 2x1": (("--replicas", "2", "--cpus-per-replica", "1", "--threads", "1"), {}),
}
PROXY_CONTENDERS = {
    "plain": (("--threads", "2"), {}),
    "plain again": (("--threads", "2"), {}),
    "ray 1x2 Ray defaults": (RAY_1X2, RAY_DEFAULTS),
    "ray 1x2 gRPC": (RAY_1X2, {**RAY_DEFAULTS, "RAY_SERVE_PROXY_USE_GRPC": "1"}),
    "ray 1x2 gRPC one loop": (RAY_1X2, GRPC_ONE_LOOP),
}


def label(contender: str, streams: int) -> str:
    return f"{contender}, {streams} streams (tok/s)"


def start(folder: Path, flags: tuple[str, ...], environment: dict[str, str]) -> ServerProcess:
    saved = dict(os.environ)
    os.environ.update(environment)  # slmops_server hands this environment to the server
    try:
        return slmops_server(folder, *PARALLEL, *flags)
    finally:
        os.environ.clear()
        os.environ.update(saved)


def measure_round(
    rows: dict[str, list[float]],
    targets: dict[str, UrlTarget],
    servers: dict[str, ServerProcess],
    prompt: Prompt,
    tokens: int,
    stream_counts: tuple[int, ...],
) -> None:
    for streams in stream_counts:
        for contender, target in targets.items():
            proxy = proxy_process(servers[contender])
            proxy_before, tree_before = _cpu_seconds(proxy), tree_cpu_seconds(servers[contender])
            value = aggregate(http_batch(target, prompt, streams, tokens))
            rows.setdefault(label(contender, streams), []).append(value)
            per_token = 1000 / (streams * tokens)
            used = tree_cpu_seconds(servers[contender]) - tree_before
            rows.setdefault(f"{contender}, {streams} streams: server CPU ms per token", []).append(used * per_token)
            if proxy is not None:
                used = _cpu_seconds(proxy) - proxy_before
                rows.setdefault(f"{contender}, {streams} streams: proxy CPU ms per token", []).append(used * per_token)
            print(f"  {label(contender, streams):36s} {value:7.1f}", flush=True)


def tree_cpu_seconds(server: ServerProcess) -> float:
    """CPU time of the server and every process under it (Ray's proxy, replicas, raylet, ...).

    Unlike tokens/s it hardly moves with the machine's load: what the server costs per token.
    """
    root = psutil.Process(server.process.pid)
    total = 0.0
    for process in [root, *root.children(recursive=True)]:
        try:
            total += _cpu_seconds(process)
        except psutil.Error:  # a worker that ended meanwhile
            continue
    return total


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


def ratios(medians: dict[str, float], stream_counts: tuple[int, ...]) -> dict[str, float]:
    if label("ray 2x1", stream_counts[0]) not in medians:
        return proxy_ratios(medians, stream_counts)
    out = {}
    for streams in stream_counts:
        target = " (target >= 0.9)" if streams == 8 else ""
        out[f"ray 1x2 / plain, {streams} streams{target}"] = (
            medians[label("ray 1x2", streams)] / medians[label("plain", streams)]
        )
        key = f"ray 2x1 / ray 1x2, {streams} streams"
        out[key] = medians[label("ray 2x1", streams)] / medians[label("ray 1x2", streams)]
    return out


def proxy_ratios(medians: dict[str, float], stream_counts: tuple[int, ...]) -> dict[str, float]:
    out = {}
    for streams in stream_counts:
        plain = medians[label("plain", streams)]
        for contender in PROXY_CONTENDERS:
            if contender != "plain":
                out[f"{contender} / plain, {streams} streams"] = medians[label(contender, streams)] / plain
    return out


def main() -> None:
    parser = serve_arguments(__doc__.splitlines()[0])
    parser.add_argument("--set", choices=("layouts", "proxy"), default="layouts", help="what to compare")
    parser.add_argument("--streams", default="1,8,16", help="concurrent streams, comma-separated")
    parser.add_argument("--out", type=Path, help="JSON results [default: benchmarks/results-serve-ray-CPU.json]")
    args = parser.parse_args()
    cpu = describe_cpu()
    print(f"CPU: {cpu.summary()}", flush=True)
    folder = args.folder or convert(embedded_model())
    model_name = resolve(folder).name  # the name the servers give the folder (its inference_model.json's)
    # Ray's usage statistics stay off, and each local Ray keeps its token in its own folder.
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    contenders = PROXY_CONTENDERS if args.set == "proxy" else CONTENDERS
    stream_counts = tuple(int(count) for count in args.streams.split(","))
    servers = {name: start(folder, *setting) for name, setting in contenders.items()}
    rows: dict[str, list[float]] = {}
    load_before = os.getloadavg()[0]
    try:
        for server in servers.values():
            server.wait_ready(600)  # two local Rays and a plain server start at once on 2 cores
        targets = {label: UrlTarget(s.url, model_name, endpoint="completions") for label, s in servers.items()}
        for target in targets.values():
            target.load()
        prompt = Prompt(PROMPT, 0, PROMPT)
        for number in range(args.rounds):
            print(f"round {number + 1} of {args.rounds}", flush=True)
            measure_round(rows, targets, servers, prompt, args.tokens, stream_counts)
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
        "contenders": {
            name: " ".join([*(f"{k}={v}" for k, v in env.items()), "slmops serve", *PARALLEL, *flags])
            for name, (flags, env) in contenders.items()
        },
        "rows": rows,
        "medians": medians,
        "ratios": ratios(medians, stream_counts),
    }
    report(result)
    kind = "-proxy" if args.set == "proxy" else ""
    out = args.out or Path(__file__).parent / f"results-serve-ray{kind}-{_slug(cpu.label)}.json"
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
