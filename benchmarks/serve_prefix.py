#!/usr/bin/env python3
"""Prefix reuse over HTTP: time to first token of prompts that begin as earlier ones did.

    .venv/bin/python benchmarks/serve_prefix.py [MODEL_FOLDER] [--rounds 3] [--llama-server PATH]
        [--gguf PATH] [--json PATH] [--slmops-flag=--prefix-cache=0 ...] [--before COMMIT]

Without MODEL_FOLDER, the embedded SmolLM2-135M-Instruct GGUF is converted to INT4 first;
llama-server (when found) serves the GGUF the INT4 model came from, with 8 slots of 2,048
tokens and its default ``cache_prompt``. Every round opens with a new random tag at the
start of each system prompt, so nothing of an earlier round is cached; the servers take
turns inside each round, so machine load hits them alike. Scenarios, each a ratio of
medians over the rounds:

1. multi-turn: a ~1,000-token conversation; TTFT of its next turn (the history, the
   answer just given, a new question) over TTFT of the turn before it, the next turn sent
   as soon as the answer ends; and again (``multi-turn-think``) with ``--think`` seconds
   between them, the same for both servers, as a user reading the answer would leave;
2. shared system prompt, users one after another: a ~500-token system prompt and 8
   different questions; median TTFT of users 2-8 over user 1's (the cold one);
3. shared system prompt, a burst: 8 users arrive together with one new system prompt;
   their median TTFT over that of 8 users arriving together with 8 different system
   prompts of the same length (nothing to share);
4. another user: a ~1,000-token chat answered, and while its user reads (``--think``
   seconds) another user's short question; its TTFT (beside llama-server's: no ratio).

Each server's resident memory after loading and its peak (VmHWM) at the end are reported.
``--before COMMIT`` adds `slmops serve` as of an earlier commit, in the same rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from serve_throughput import convert, find_llama_server
from slmops.bench.scenario_serve import Reply, chat, ready, together
from slmops.bench.scenarios import QUESTIONS, paragraphs
from slmops.convert import embedded_model
from slmops.machine import describe_cpu
from slmops.server.process import ServerProcess

THREADS = 2
SLOTS = 8
CONTEXT_PER_SLOT = 2048


@dataclass
class Contender:
    label: str
    server: ServerProcess
    model: str = ""  # learnt from the server by ready()
    rows: dict[str, list[float]] = field(default_factory=dict)
    facts: dict[str, float] = field(default_factory=dict)

    def add(self, name: str, value: float) -> None:
        self.rows.setdefault(name, []).append(value)

    def median(self, name: str) -> float:
        return statistics.median(self.rows[name])


# ---- the scenarios --------------------------------------------------------------


def system_prompt(tag: str, words: int) -> str:
    text, blocks = f"Session {tag}. You answer questions about the reference text below.\n", paragraphs()
    for block in blocks:
        if len(text.split()) >= words:
            break
        text += "\n" + block
    return text


def conversation(tag: str, words: int) -> list[dict]:
    """A chat of about ``words`` words: a system prompt and earlier turns, ending with a question."""
    messages = [{"role": "system", "content": f"Session {tag}. You are a helpful assistant."}]
    blocks = paragraphs()
    index = 0
    while sum(len(message["content"].split()) for message in messages) < words:
        messages += [
            {"role": "user", "content": f"Here is a passage:\n{blocks[index]}\nWhat is it about?"},
            {"role": "assistant", "content": blocks[index + 1]},
        ]
        index += 2
    return [*messages, {"role": "user", "content": "Which of these passages did you like best, and why?"}]


THINK = 1.5  # seconds between an answer and the next turn in multi-turn-think (--think)


def multi_turn(client: httpx.Client, contender: Contender, tag: str) -> None:
    _turns(client, contender, tag, 0.0, "multi-turn")


def multi_turn_think(client: httpx.Client, contender: Contender, tag: str) -> None:
    _turns(client, contender, f"{tag}-think", THINK, f"multi-turn, {THINK:g} s to read")  # a new chat


def _turns(client: httpx.Client, contender: Contender, tag: str, think: float, name: str) -> None:
    history = conversation(tag, 620)  # ~1,000 tokens
    first = chat(client, contender, history, 48)
    follow = [*history, {"role": "assistant", "content": first.text}, {"role": "user", "content": "Tell me more."}]
    time.sleep(think)
    second = chat(client, contender, follow, 16)
    contender.add(f"{name}: first turn TTFT (s)", first.ttft)
    contender.add(f"{name}: next turn TTFT (s)", second.ttft)
    contender.add(f"{name}: next turn prompt tokens", second.prompt_tokens)
    contender.add(f"{name}: next turn cached tokens", second.cached_tokens)


def shared_in_turn(client: httpx.Client, contender: Contender, tag: str) -> None:
    system = system_prompt(tag, 330)  # ~500 tokens
    replies = [chat(client, contender, _ask(system, question), 16) for question in QUESTIONS]
    contender.add("shared system prompt, one by one: user 1 TTFT (s)", replies[0].ttft)
    contender.add("shared system prompt, one by one: users 2-8 median TTFT (s)", _median(replies[1:]))
    contender.add("shared system prompt: prompt tokens", replies[0].prompt_tokens)
    contender.add("shared system prompt, one by one: users 2-8 cached tokens", _median(replies[1:], "cached_tokens"))


def shared_burst(client: httpx.Client, contender: Contender, tag: str) -> None:
    alone = together(
        client, contender, [_ask(system_prompt(f"{tag}-{i}", 330), q) for i, q in enumerate(QUESTIONS)], 16
    )
    system = system_prompt(f"{tag}-shared", 330)
    shared = together(client, contender, [_ask(system, question) for question in QUESTIONS], 16)
    contender.add("burst of 8, different system prompts: median TTFT (s)", _median(alone))
    contender.add("burst of 8, one shared system prompt: median TTFT (s)", _median(shared))


def another_user(client: httpx.Client, contender: Contender, tag: str) -> None:
    chat(client, contender, conversation(f"{tag}-reading", 620), 48)
    time.sleep(THINK)
    reply = chat(client, contender, [{"role": "user", "content": f"{tag}: {QUESTIONS[0]}"}], 16)
    contender.add("another user while a chat is read: TTFT (s)", reply.ttft)


def _ask(system: str, question: str) -> list[dict]:
    return [{"role": "system", "content": system}, {"role": "user", "content": question}]


def _median(replies: list[Reply], attribute: str = "ttft") -> float:
    return statistics.median(getattr(reply, attribute) for reply in replies)


# ---- the contenders -------------------------------------------------------------


def slmops_server(folder: Path, flags: list[str], source: Path | None = None, label: str = "") -> ServerProcess:
    """`slmops serve` of this environment, or of the ``source`` tree (an earlier commit's src)."""
    env = dict(os.environ, SLMOPS_HOME=tempfile.mkdtemp(prefix="slmops-bench-"))
    if source is not None:
        env["PYTHONPATH"] = str(source)
    command = [sys.executable, "-m", "slmops", "serve", str(folder), "--log-level", "info"]
    command += ["--parallel", str(SLOTS), "--threads", str(THREADS), *flags]
    return ServerProcess(command, env=env, label=label or " ".join(["slmops serve", *flags]))


def source_of(commit: str) -> Path:
    """The ``src`` folder of this repository as of ``commit``, in a temporary folder."""
    folder = Path(tempfile.mkdtemp(prefix="slmops-before-"))
    root = Path(__file__).resolve().parent.parent
    archive = subprocess.run(["git", "-C", str(root), "archive", commit, "src"], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True)
    return folder / "src"


def llama_server(binary: str, gguf: Path, threads: int) -> ServerProcess:
    command = [binary, "-m", str(gguf), "--parallel", str(SLOTS), "-c", str(SLOTS * CONTEXT_PER_SLOT)]
    command += ["-t", str(threads), "-tb", str(threads)]
    return ServerProcess(command, label="llama-server")


def memory(pid: int) -> dict[str, float]:
    """Resident and peak resident memory of ``pid``, in MB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return {"rss_mb": fields["VmRSS"], "peak_rss_mb": fields["VmHWM"]}


# ---- the run -------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "folder", type=Path, nargs="?", help="INT4 model folder [default: the embedded GGUF, converted]"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--llama-server", help="llama-server binary [default: on PATH or /opt/llama-server/bin]")
    parser.add_argument("--gguf", type=Path, help="GGUF for llama-server [default: the embedded SmolLM2 Q4_1]")
    # llama.cpp syncs its threads at every graph node: on a CPU shared with other work one
    # preempted thread stalls the others (-t 2 ran 5 s a token here at a load average of 12).
    parser.add_argument("--llama-threads", type=int, default=THREADS, help="llama-server -t [default: 2]")
    parser.add_argument("--json", type=Path, help="write the figures here as JSON")
    parser.add_argument("--slmops-flag", action="append", default=[], help="extra `slmops serve` flag (repeatable)")
    parser.add_argument(
        "--scenario", action="append", choices=sorted(SCENARIOS), help="run only these (repeatable) [default: all]"
    )
    parser.add_argument("--think", type=float, default=THINK, help="seconds to read an answer in multi-turn-think")
    parser.add_argument("--before", help="also measure `slmops serve` as of this commit, in the same rounds")
    args = parser.parse_args()
    globals()["THINK"] = args.think
    cpu = describe_cpu().summary()
    print(f"CPU: {cpu}", flush=True)
    gguf = args.gguf or embedded_model()
    folder = args.folder or convert(gguf)
    binary = find_llama_server(args.llama_server)
    if binary is None:
        print("llama-server not found (--llama-server PATH); measuring slmops alone.", flush=True)
    contenders = [Contender("slmops serve", slmops_server(folder, args.slmops_flag))]
    if args.before:
        label = f"slmops serve at {args.before}"
        server = slmops_server(folder, args.slmops_flag, source_of(args.before), label)
        contenders.append(Contender(label, server))
    if binary:
        contenders.append(
            Contender(f"llama-server -t {args.llama_threads}", llama_server(binary, gguf, args.llama_threads))
        )
    load = [os.getloadavg()[0]]
    try:
        with httpx.Client(timeout=600) as client:
            ready(client, contenders)  # the model names they serve, and a first short answer
        time.sleep(2)  # let the loads settle before reading their memory
        for contender in contenders:
            contender.facts |= {f"after load: {k}": v for k, v in memory(contender.server.process.pid).items()}
        measure(contenders, args.rounds, [SCENARIOS[name] for name in args.scenario or SCENARIOS])
        for contender in contenders:
            contender.facts |= {f"at the end: {k}": v for k, v in memory(contender.server.process.pid).items()}
        load.append(os.getloadavg()[0])
        reserved = [line for line in contenders[0].server.log_tail(20000).splitlines() if "reserved" in line]
    finally:
        for contender in contenders:
            contender.server.stop()
    report(contenders, cpu, load, reserved, args.json)


def measure(contenders: list[Contender], rounds: int, scenarios: list) -> None:
    with httpx.Client(timeout=600, limits=httpx.Limits(max_connections=None)) as client:
        for index in range(rounds):
            tag = secrets.token_hex(4)
            order = contenders if index % 2 == 0 else contenders[::-1]
            for scenario in scenarios:
                for contender in order:
                    scenario(client, contender, f"{tag}-{contender.label}")
                    latest = {name: round(values[-1], 3) for name, values in contender.rows.items()}
                    print(f"  {contender.label}, {scenario.__name__}: {latest}", flush=True)
            print(f"round {index + 1} of {rounds} done", flush=True)


SCENARIOS = {
    "multi-turn": multi_turn,
    "multi-turn-think": multi_turn_think,
    "one-by-one": shared_in_turn,
    "burst": shared_burst,
    "another-user": another_user,
}
RATIOS = (
    ("multi-turn: next turn TTFT (s)", "multi-turn: first turn TTFT (s)", 0.15),
    (
        "shared system prompt, one by one: users 2-8 median TTFT (s)",
        "shared system prompt, one by one: user 1 TTFT (s)",
        0.3,
    ),
    (
        "burst of 8, one shared system prompt: median TTFT (s)",
        "burst of 8, different system prompts: median TTFT (s)",
        0.3,
    ),
)


def report(contenders: list[Contender], cpu: str, load: list[float], reserved: list[str], path: Path | None) -> None:
    print(f"\nCPU: {cpu}; {THREADS} threads each; 1-minute load average {load[0]:.2f} before, {load[-1]:.2f} after")
    for line in reserved:
        print(f"  {line.strip()}")
    result: dict = {"cpu": cpu, "threads": THREADS, "load_average": load, "contenders": {}}
    for contender in contenders:
        print(f"\n{contender.label}")
        for name, values in contender.rows.items():
            print(f"  {name:62s} {contender.median(name):8.3f}   {' '.join(f'{v:.3f}' for v in values)}")
        ratios = {}
        for numerator, denominator, target in RATIOS:
            if numerator not in contender.rows:
                continue
            ratio = contender.median(numerator) / contender.median(denominator)
            ratios[numerator.split(":")[0]] = ratio
            print(f"  ratio {numerator.split(':')[0]:56s} {ratio:8.3f}   (target <= {target})")
        for name, value in contender.facts.items():
            print(f"  {name:62s} {value:8.0f}")
        result["contenders"][contender.label] = {"rows": contender.rows, "ratios": ratios, "memory_mb": contender.facts}
    turns = [name for name in contenders[0].rows if name.endswith("next turn TTFT (s)")]
    theirs = contenders[-1] if contenders[-1].label.startswith("llama-server") else None
    for ours in [contender for contender in contenders if contender is not theirs] if theirs else []:
        for name in turns:
            ratio = ours.median(name) / theirs.median(name)
            print(f"\n{ours.label}, {name.split(':')[0]}: next turn TTFT / llama-server's: {ratio:.2f}x (target <= 1)")
    if path:
        path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
