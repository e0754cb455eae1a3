#!/usr/bin/env python3
"""Resident memory of `slmops serve` (this tree, and optionally an earlier commit) and llama-server.

    .venv/bin/python benchmarks/serve_memory.py [MODEL_FOLDER] [--before COMMIT] [--llama-server PATH]
        [--gguf PATH] [--json PATH]

Every server holds 8 rows (slots) of 2,048 tokens and runs on 2 threads. Reported per
server: resident memory once loaded and idle, the peak (VmHWM) while 8 streams of
~500-token prompts and 128-token answers run together, and the resident memory once
they are done. Memory does not depend on the machine's load, so the servers run at once.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx

from serve_prefix import (
    QUESTIONS,
    SLOTS,
    THREADS,
    Contender,
    _ask,
    chat,
    convert,
    find_llama_server,
    llama_server,
    memory,
    source_of,
    system_prompt,
    together,
)
from slmops.bench.scenario_serve import ready
from slmops.convert import embedded_model
from slmops.machine import describe_cpu
from slmops.server.process import ServerProcess

ROOT = Path(__file__).resolve().parent.parent


def slmops_server(folder: Path, source: Path, label: str, flags: tuple[str, ...] = ()) -> ServerProcess:
    env = dict(os.environ, SLMOPS_HOME=tempfile.mkdtemp(prefix="slmops-bench-"), PYTHONPATH=str(source))
    command = [sys.executable, "-m", "slmops", "serve", str(folder), "--log-level", "warning"]
    command += ["--parallel", str(SLOTS), "--threads", str(THREADS), *flags]
    return ServerProcess(command, env=env, label=label)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "folder", type=Path, nargs="?", help="INT4 model folder [default: the embedded GGUF, converted]"
    )
    parser.add_argument("--before", help="also measure `slmops serve` as of this commit")
    parser.add_argument("--llama-server", help="llama-server binary [default: on PATH or /opt/llama-server/bin]")
    parser.add_argument("--gguf", type=Path, help="GGUF for llama-server [default: the embedded SmolLM2 Q4_1]")
    parser.add_argument("--json", type=Path, help="write the figures here as JSON")
    parser.add_argument("--slmops-flag", action="append", default=[], help="extra `slmops serve` flag (repeatable)")
    args = parser.parse_args()
    cpu = describe_cpu().summary()
    print(f"CPU: {cpu}", flush=True)
    gguf = args.gguf or embedded_model()
    folder = args.folder or convert(gguf)
    label = " ".join(["slmops serve", *args.slmops_flag])
    contenders = [Contender(label, slmops_server(folder, ROOT / "src", label, tuple(args.slmops_flag)))]
    if args.before:
        label = f"slmops serve at {args.before}"
        contenders.append(Contender(label, slmops_server(folder, source_of(args.before), label)))
    binary = find_llama_server(args.llama_server)
    if binary:
        contenders.append(Contender("llama-server", llama_server(binary, gguf, 1)))
    try:
        with httpx.Client(timeout=1800, limits=httpx.Limits(max_connections=None)) as client:
            ready(client, contenders, 600)  # the model names they serve, and a first short answer
            for contender in contenders:
                measure(client, contender)
    finally:
        for contender in contenders:
            contender.server.stop()
    report(contenders, cpu, args.json)


def measure(client: httpx.Client, contender: Contender) -> None:
    pid = contender.server.process.pid
    chat(client, contender, [{"role": "user", "content": "Hello"}], 4)
    time.sleep(1)
    contender.facts["idle after loading (MB)"] = memory(pid)["rss_mb"]
    chats = [_ask(system_prompt(f"memory-{index}", 330), question) for index, question in enumerate(QUESTIONS)]
    together(client, contender, chats, 128)
    time.sleep(1)
    contender.facts["peak with 8 streams (MB)"] = memory(pid)["peak_rss_mb"]
    contender.facts["idle after the streams (MB)"] = memory(pid)["rss_mb"]
    print(f"{contender.label}: {contender.facts}", flush=True)


def report(contenders: list[Contender], cpu: str, path: Path | None) -> None:
    print(f"\nCPU: {cpu}; 8 rows x 2,048 tokens, {THREADS} threads (llama-server -t 1)")
    for name in contenders[0].facts:
        print(f"  {name:30s} " + "  ".join(f"{c.label}: {c.facts[name]:6.0f}" for c in contenders))
    if path:
        path.write_text(json.dumps({"cpu": cpu, "memory_mb": {c.label: c.facts for c in contenders}}, indent=2) + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
