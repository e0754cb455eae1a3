#!/usr/bin/env python3
"""Prompt-lookup speculation in `slmops serve`'s batched rows, over HTTP, against `--no-speculative`.

    .venv/bin/python benchmarks/serve_speculative.py [MODEL_FOLDER] [--rounds 3] [--max-tokens 300]
        [--only extract] [--json out.json]

Without MODEL_FOLDER, the embedded SmolLM2 GGUF is converted to INT4 first. Two servers run
the same folder, one with `--no-speculative`, each with 4 rows; inside every round each
scenario asks both, in an order shuffled per round, so load from other processes hits both
alike. Scenarios (greedy answers, streamed):

- 1 stream: each of the input-grounded tasks of ``slmops.bench.scenarios`` (copy, rewrite
  with corrections, extract to JSON, the extraction held to a JSON schema of its eight fields
  by ``response_format``, change one function) and the open chats, alone;
- 4 streams: the four grounded tasks without a schema at once, and four open chats at once.

Reported per scenario: the median over streams and rounds of each stream's decode tokens/s
(its completion tokens after the first, over the time from its first text to its last),
the ratio speculative / plain, and for 4 streams the aggregate decode tokens/s (every
stream's tokens over the time from the first stream's first text to the last one's end).
Also the completion tokens per CPU-second of the server process (its user and system time
over the scenario, prompts included), steadier than wall time on a machine others load.
The grounded tasks run without a repetition penalty, the open chats with the model's own.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from slmops.bench.scenario_decode import shuffled_rounds  # noqa: E402
from slmops.bench.scenarios import TASKS  # noqa: E402
from slmops.machine import describe_cpu  # noqa: E402
from slmops.serverprocess import ServerProcess  # noqa: E402
from speculative import model_folder, report  # noqa: E402

THREADS = 2
ROWS = 4
OPEN = {
    "chat-story": TASKS["chat-story"][1],
    "chat-explain": TASKS["chat-explain"][1],
    "chat-advice": "Give me some advice for my first week at a new job.",
    "chat-poem": "Write a poem about the sea at night.",
}
GROUNDED = [name for name, task in TASKS.items() if task.kind == "grounded"]


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Stream:
    first: float
    last: float
    tokens: int

    @property
    def decode_tokens_per_s(self) -> float:
        return (self.tokens - 1) / (self.last - self.first) if self.tokens > 1 and self.last > self.first else 0.0


def prompt_of(task: str) -> tuple[str, bool]:
    """The task's user message, and whether it is grounded in its input (no repetition penalty)."""
    if task in OPEN:
        return OPEN[task], False
    return TASKS[task].prompt, True


def ask(client: httpx.Client, url: str, model: str, task: str, max_tokens: int) -> Stream:
    content, grounded = prompt_of(task)
    body = {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if grounded:
        body["repetition_penalty"] = 1.0
    schema = TASKS[task].schema if task in TASKS else None
    if schema:
        body["response_format"] = {"type": "json_schema", "json_schema": {"name": task, "schema": schema}}
    first = last = None
    tokens = 0
    with client.stream("POST", url + "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            raise SystemExit(f"HTTP {response.status_code}: {response.read()[:300]!r}")
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            for choice in event.get("choices") or []:
                if (choice.get("delta") or {}).get("content"):
                    last = time.perf_counter()
                    first = first or last
            tokens = (event.get("usage") or {}).get("completion_tokens") or tokens
    now = time.perf_counter()
    return Stream(first or now, last or now, tokens)


def together(client: httpx.Client, url: str, model: str, tasks: list[str], max_tokens: int) -> list[Stream]:
    with ThreadPoolExecutor(len(tasks)) as pool:
        return list(pool.map(lambda task: ask(client, url, model, task, max_tokens), tasks))


def scenarios(only: str | None = None) -> dict[str, list[str]]:
    """The scenarios by name, the streams each asks at once; ``only``: those whose name contains it."""
    alone = {f"1 stream: {task}": [task] for task in [*GROUNDED, "chat-story", "chat-explain"]}
    unguided = [task for task in GROUNDED if TASKS[task].schema is None]
    every = {**alone, "4 streams: grounded": unguided, "4 streams: open chat": list(OPEN)}
    return {name: tasks for name, tasks in every.items() if only is None or only in name}


def start(folder: str, speculative: bool) -> ServerProcess:
    env = dict(os.environ, SLMOPS_HOME=tempfile.mkdtemp(prefix="slmops-bench-"))
    command = [sys.executable, "-m", "slmops", "serve", folder, "--parallel", str(ROWS), "--threads", str(THREADS)]
    command += [] if speculative else ["--no-speculative"]
    return ServerProcess(command, env=env, label="speculative" if speculative else "plain")


def served_name(client: httpx.Client, url: str) -> str:
    return client.get(url + "/v1/models").json()["data"][0]["id"]


def measure(servers: dict[str, ServerProcess], rounds: int, max_tokens: int, only: str | None = None) -> dict:
    chosen = scenarios(only)
    runs: dict = {name: {mode: [] for mode in servers} for name in chosen}
    with httpx.Client(timeout=600) as client:
        names = {mode: served_name(client, server.url) for mode, server in servers.items()}
        for mode, server in servers.items():  # warm-up: the model loads on first use
            ask(client, server.url, names[mode], "chat-story", 8)
        for number, name, mode in shuffled_rounds(list(chosen), list(servers), rounds):
            before = cpu_seconds(servers[mode].process.pid)
            streams = together(client, servers[mode].url, names[mode], chosen[name], max_tokens)
            cpu = cpu_seconds(servers[mode].process.pid) - before
            runs[name][mode].append((streams, sum(stream.tokens for stream in streams) / cpu if cpu else 0.0))
            settle(servers[mode].process.pid)
            rates = ", ".join(f"{stream.decode_tokens_per_s:.1f}" for stream in streams)
            print(f"round {number} {name:28} {mode:11} tok/s {rates}", file=sys.stderr, flush=True)
    return runs


def settle(pid: int, quiet: float = 0.3, most: float = 10.0) -> None:
    """Wait until the server is idle again: after its answers it prefills them again for its
    prefix cache, work that would otherwise run beside the other server's next scenario."""
    end, last = time.perf_counter() + most, cpu_seconds(pid)
    while time.perf_counter() < end:
        time.sleep(quiet)
        now = cpu_seconds(pid)
        if now - last < 0.05 * quiet:
            return
        last = now


def aggregate(streams: list[Stream]) -> float:
    span = max(stream.last for stream in streams) - min(stream.first for stream in streams)
    return sum(stream.tokens - 1 for stream in streams) / span if span > 0 else 0.0


def summarize(runs: dict) -> dict:
    summary = {}
    for name, modes in runs.items():
        per_cpu = {mode: statistics.median(rate for _, rate in rounds) for mode, rounds in modes.items()}
        modes = {mode: [streams for streams, _ in rounds] for mode, rounds in modes.items()}
        per_stream = {
            mode: statistics.median(stream.decode_tokens_per_s for streams in rounds for stream in streams)
            for mode, rounds in modes.items()
        }
        together_rate = {
            mode: statistics.median(aggregate(streams) for streams in rounds) for mode, rounds in modes.items()
        }
        summary[name] = {
            "decode_tokens_per_s": per_stream,
            "ratio": per_stream["speculative"] / per_stream["plain"] if per_stream["plain"] else None,
            "aggregate_tokens_per_s": together_rate,
            "aggregate_ratio": together_rate["speculative"] / together_rate["plain"]
            if together_rate["plain"]
            else None,
            "tokens_per_server_cpu_s": per_cpu,
            "cpu_ratio": per_cpu["speculative"] / per_cpu["plain"] if per_cpu["plain"] else None,
            "completion_tokens": {mode: [stream.tokens for stream in rounds[0]] for mode, rounds in modes.items()},
        }
    return summary


def table(summary: dict) -> str:
    lines = [
        "| scenario | plain tok/s per stream | speculative | ratio | aggregate plain | aggregate speculative | ratio "
        "| ratio per server CPU-s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in summary.items():
        speeds, total = row["decode_tokens_per_s"], row["aggregate_tokens_per_s"]
        lines.append(
            f"| {name} | {speeds['plain']:.1f} | {speeds['speculative']:.1f} | {row['ratio']:.2f}× | "
            f"{total['plain']:.1f} | {total['speculative']:.1f} | {row['aggregate_ratio']:.2f}× | {row['cpu_ratio']:.2f}× |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", help="A model folder [default: the embedded GGUF, converted to INT4]")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=300)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "slmops-speculative")
    parser.add_argument("--only", help="Run only the scenarios whose name contains this, e.g. extract.")
    parser.add_argument("--json", type=Path, help="Write the result as JSON.")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    folder = model_folder(args.folder, args.workdir)
    servers = {"speculative": start(folder, True), "plain": start(folder, False)}
    load = []
    try:
        for server in servers.values():
            server.wait_ready()
        load.append(os.getloadavg()[0])
        runs = measure(servers, args.rounds, args.max_tokens, args.only)
        load.append(os.getloadavg()[0])
    finally:
        for server in servers.values():
            server.stop()
    cpu = describe_cpu()
    summary = summarize(runs)
    title = f"\n{Path(folder).name}, {ROWS} rows, {THREADS} threads, {args.rounds} rounds, on {cpu.summary()}"
    document = {
        "model": Path(folder).name,
        "rows": ROWS,
        "threads": THREADS,
        "rounds": args.rounds,
        "max_tokens": args.max_tokens,
        "load_average": load,
        "cpu_info": cpu.to_json(),
        "scenarios": summary,
    }
    report(title, load, table(summary), document, args.json)


if __name__ == "__main__":
    main()
