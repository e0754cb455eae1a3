"""The serving scenarios of `slmops bench --scenario`: multi-turn, shared system prompt, burst.

Each runs over HTTP against servers started on loopback as child processes (`slmops serve`
on the model folder, and llama-server on a GGUF when asked), streamed as an OpenAI client
sees them. The servers take turns inside every round, in a rotating order, so that load
from other processes hits them alike; every round opens its prompts with a new tag, so
nothing of an earlier round is cached.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from slmops.bench import scenarios
from slmops.bench.scenarios import Count
from slmops.bench.stats import percentile
from slmops.errors import SlmopsError
from slmops.serverprocess import ServerProcess

Figures = dict[str, list[float]]
FIRST_TURN_TOKENS = 32
SHORT_ANSWER_TOKENS = 16
BURST_ANSWER_TOKENS = 64


@dataclass
class Reply:
    """One streamed answer: when it was sent, when its first and last text came, what usage said."""

    start: float
    first: float
    last: float
    text: str
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0

    @property
    def ttft(self) -> float:
        return self.first - self.start


@dataclass
class Contender:
    """A server the scenarios ask, and what it measured: scenario → figure → one value per round (or stream)."""

    label: str
    server: ServerProcess
    model: str = ""
    rows: dict[str, dict[str, list[float]]] = field(default_factory=dict)

    def add(self, scenario: str, figures: Figures) -> None:
        mine = self.rows.setdefault(scenario, {})
        for figure, values in figures.items():
            mine.setdefault(figure, []).extend(values)


@dataclass
class Sizes:
    """Prompt sizes in tokens of the model measured, and how to count them."""

    count: Count
    conversation: int
    system_prompt: int
    burst_prompt: int


# ---- one streamed request --------------------------------------------------------


def chat(client: httpx.Client, contender: Contender, messages: list[dict], max_tokens: int) -> Reply:
    """One greedy streamed chat request, timed from sending it to its first and last text."""
    body = {
        "model": contender.model,
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    try:
        return _stream(client, contender, body)
    except httpx.RemoteProtocolError:  # a pooled connection the server had closed: once more
        return _stream(client, contender, body)


def _stream(client: httpx.Client, contender: Contender, body: dict) -> Reply:
    start, first, last = time.perf_counter(), None, None
    pieces: list[str] = []
    usage: dict = {}
    with client.stream("POST", contender.server.url + "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            raise SlmopsError(f"{contender.label} answered HTTP {response.status_code}: {response.read()[:300]!r}")
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            for choice in event.get("choices") or []:
                text = (choice.get("delta") or {}).get("content") or ""
                if text:
                    last = time.perf_counter()
                    first = first or last
                    pieces.append(text)
            usage = _usage(event) or usage
    end = time.perf_counter()
    return Reply(start, first or end, last or end, "".join(pieces), **usage)


def _usage(event: dict) -> dict:
    """Token counts from an OpenAI ``usage`` block, or from llama-server's ``timings``."""
    usage, timings = event.get("usage") or {}, event.get("timings") or {}
    if not usage and not timings:
        return {}
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or timings.get("cache_n") or 0
    return {
        "prompt_tokens": usage.get("prompt_tokens") or timings.get("prompt_n", 0),
        "cached_tokens": cached,
        "completion_tokens": usage.get("completion_tokens") or timings.get("predicted_n", 0),
    }


def together(client: httpx.Client, contender: Contender, chats: list[list[dict]], max_tokens: int) -> list[Reply]:
    """The chats sent at once, one thread each."""
    with ThreadPoolExecutor(len(chats)) as pool:
        return list(pool.map(lambda messages: chat(client, contender, messages, max_tokens), chats))


# ---- one round of each scenario --------------------------------------------------


def multi_turn(client: httpx.Client, contender: Contender, tag: str, sizes: Sizes) -> Figures:
    history = scenarios.conversation(tag, sizes.count, sizes.conversation)
    first = chat(client, contender, history, FIRST_TURN_TOKENS)
    follow = [*history, {"role": "assistant", "content": first.text}, {"role": "user", "content": "Tell me more."}]
    second = chat(client, contender, follow, SHORT_ANSWER_TOKENS)
    return {
        "first turn TTFT s": [first.ttft],
        "next turn TTFT s": [second.ttft],
        "next turn prompt tokens": [second.prompt_tokens],
        "next turn cached tokens": [second.cached_tokens],
    }


def system_prompt(client: httpx.Client, contender: Contender, tag: str, sizes: Sizes) -> Figures:
    system = scenarios.system_prompt(tag, sizes.count, sizes.system_prompt)
    questions = scenarios.QUESTIONS[: scenarios.USERS]
    replies = [chat(client, contender, scenarios.ask(system, question), SHORT_ANSWER_TOKENS) for question in questions]
    return {
        "user 1 TTFT s": [replies[0].ttft],
        "users 2-8 median TTFT s": [statistics.median(reply.ttft for reply in replies[1:])],
        "prompt tokens": [replies[0].prompt_tokens],
        "users 2-8 cached tokens": [statistics.median(reply.cached_tokens for reply in replies[1:])],
    }


def burst(client: httpx.Client, contender: Contender, tag: str, sizes: Sizes) -> Figures:
    replies = together(
        client, contender, scenarios.burst_chats(tag, sizes.count, sizes.burst_prompt), BURST_ANSWER_TOKENS
    )
    span = max(reply.last for reply in replies) - min(reply.start for reply in replies)
    tokens = sum(reply.completion_tokens for reply in replies)
    return {
        "TTFT s": [reply.ttft for reply in replies],
        "aggregate tok/s": [tokens / span if span > 0 else 0.0],
        "completion tokens": [tokens],
    }


ROUNDS: dict[str, Callable[[httpx.Client, Contender, str, Sizes], Figures]] = {
    "multi-turn": multi_turn,
    "system-prompt": system_prompt,
    "burst": burst,
}


# ---- the servers -----------------------------------------------------------------


@dataclass
class ServeSettings:
    """How the servers run.

    Attributes:
        folder: the model folder `slmops serve` serves.
        threads: CPU threads of each server.
        speculative: whether `slmops serve` drafts by prompt lookup (its default).
        llama_server: a llama-server binary to measure beside it, or None.
        gguf: the GGUF llama-server serves.
        context: tokens each of the 8 rows (llama-server slots) holds.
        llama_threads: llama-server's ``-t`` (None: ``threads``).
    """

    folder: Path
    threads: int
    speculative: bool = True
    llama_server: str | None = None
    gguf: Path | None = None
    context: int = 2048
    llama_threads: int | None = None


def start_servers(settings: ServeSettings, home: Path, contenders: list[Contender]) -> None:
    """Start `slmops serve` (SLMOPS_HOME ``home``), and llama-server when asked, into ``contenders``
    (so that the caller stops the first when the second fails to start); not yet ready."""
    env = dict(os.environ, SLMOPS_HOME=str(home), PYTHONUNBUFFERED="1")
    command = [sys.executable, "-m", "slmops", "serve", str(settings.folder), "--log-level", "warning"]
    command += ["--parallel", str(scenarios.STREAMS), "--threads", str(settings.threads)]
    command += [] if settings.speculative else ["--no-speculative"]
    contenders.append(Contender("slmops serve", ServerProcess(command, home / "serve.log", env, "slmops serve")))
    if settings.llama_server and settings.gguf:
        llama = [settings.llama_server, "-m", str(settings.gguf), "--parallel", str(scenarios.STREAMS)]
        threads = str(settings.llama_threads or settings.threads)
        llama += ["-c", str(scenarios.STREAMS * settings.context), "-t", threads, "-tb", threads]
        log = home / "llama-server.log"
        contenders.append(Contender("llama-server", ServerProcess(llama, log, label="llama-server")))


def ready(client: httpx.Client, contenders: list[Contender], timeout: float = 300.0) -> None:
    """Wait for every server, learn the model name it serves, and warm it up with one short answer."""
    for contender in contenders:
        contender.server.wait_ready(timeout)
        contender.model = client.get(contender.server.url + "/v1/models").json()["data"][0]["id"]
        chat(client, contender, [{"role": "user", "content": "Hello"}], 4)


def sizes_for(folder: Path, context: int) -> Sizes:
    """Prompt sizes for the model in ``folder``, counted by its tokenizer.json (by words without one)."""
    count = token_counter(folder)
    return Sizes(
        count,
        scenarios.sized(scenarios.CONVERSATION_TOKENS, context, scenarios.CONVERSATION_SHARE),
        scenarios.sized(scenarios.SYSTEM_PROMPT_TOKENS, context, scenarios.SYSTEM_PROMPT_SHARE),
        scenarios.sized(scenarios.BURST_PROMPT_TOKENS, context, scenarios.BURST_SHARE),
    )


def token_counter(folder: Path) -> Count:
    path = folder / "tokenizer.json"
    if not path.exists():
        return lambda text: round(len(text.split()) * 1.4)  # about what English prose costs in BPE tokens
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(path))
    return lambda text: len(tokenizer.encode(text, add_special_tokens=False).ids)


def run_serving(
    settings: ServeSettings, names: list[str], rounds: int, on_step: Callable[[str], None]
) -> list[Contender]:
    """Start the servers, run ``names`` for ``rounds`` interleaved rounds, stop them; their measurements."""
    sizes = sizes_for(settings.folder, settings.context)
    contenders: list[Contender] = []
    with tempfile.TemporaryDirectory(prefix="slmops-bench-") as home:
        try:
            start_servers(settings, Path(home), contenders)
            with httpx.Client(timeout=600, limits=httpx.Limits(max_connections=None)) as client:
                ready(client, contenders)
                for index in range(rounds):
                    order = contenders if index % 2 == 0 else contenders[::-1]
                    tag = os.urandom(4).hex()
                    for name in names:
                        for contender in order:
                            on_step(f"{name}, round {index + 1}, {contender.label}")
                            figures = ROUNDS[name](client, contender, f"{tag}-{contender.label}", sizes)
                            contender.add(name, figures)
        finally:
            for contender in contenders:
                contender.server.stop()
    return contenders


def summary(contender: Contender, scenario: str) -> dict[str, float]:
    """The figures of ``scenario`` for one contender: medians over rounds (burst: over every stream)."""
    rows = contender.rows[scenario]
    if scenario == "burst":
        ttfts = rows["TTFT s"]
        return {
            "median TTFT s": statistics.median(ttfts),
            "p95 TTFT s": percentile(ttfts, 95),
            "aggregate tok/s": statistics.median(rows["aggregate tok/s"]),
        }
    return {name: statistics.median(values) for name, values in rows.items()}
