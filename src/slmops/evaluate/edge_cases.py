"""Edge cases and invalid input for checklist item 5.

Each case must end in a clean answer or a clear slmops error (a
:class:`slmops.errors.SlmopsError`, whose message tells the user what to do). Any
other exception is a crash; a case still running after the timeout is a hang.

A base model (no chat template) is driven by raw completions, so its cases give their
text as the prompt to complete (``stream_generate``); the chat-only cases (a message
without content, an unknown role...) become a prompt that is not text, chat messages
handed in as a prompt, and one chat request, which it must refuse clearly.

The cases run in a child process that opens the model again: a segfault or an abort
inside onnxruntime then ends the child, not the validation, and is reported as a
crash of the case that was running. The child says on a pipe which case it starts
and how each ended; after a crash or a hang, a new child runs the cases left.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from slmops.errors import SlmopsError
from slmops.evaluate.completion import COMPLETION, mode_of

MAX_PIECES = 16  # an answer that starts is an answer: never wait for a huge one to end
LOAD_TIMEOUT_S = 300.0  # a child that cannot open the model in this time fails the remaining cases
STDERR_TAIL = 800  # characters of a crashed child's stderr kept as evidence


@dataclass(frozen=True)
class EdgeCase:
    """One case: a chat's ``request`` (its messages), or with ``raw`` a prompt to complete as it is."""

    name: str
    request: object
    options: dict
    raw: bool = False


def cases(model) -> list[EdgeCase]:
    over_context = "word " * (int(getattr(model, "context_length", 4096)) + 64)
    if mode_of(model) == COMPLETION:
        return completion_cases(over_context)
    user = lambda text: [{"role": "user", "content": text}]  # noqa: E731
    return [
        EdgeCase("empty prompt", user(""), {}),
        EdgeCase("whitespace only", user(" \n\t  "), {}),
        EdgeCase("prompt over the context length", user(over_context), {}),
        EdgeCase("emoji, CJK and RTL text", user("😀 Přeložte: 你好，世界。 مرحبا بالعالم שלום"), {}),
        EdgeCase("control characters and NUL", user("hello\x00world\x01\x07\x1b[31m\x7f"), {}),
        EdgeCase("huge max_tokens", user("Say hi."), {"max_tokens": 10**9}),
        EdgeCase("negative temperature", user("Say hi."), {"temperature": -1.0}),
        EdgeCase("message without content", [{"role": "user"}], {}),
        EdgeCase("message list that is not a list", "just a string", {}),
        EdgeCase("unknown role", [{"role": "wizard", "content": "hi"}], {}),
    ]


def completion_cases(over_context: str) -> list[EdgeCase]:
    """A base model's cases: the same texts given as raw prompts, and the mistakes a caller of
    raw completion makes instead of malformed chats."""
    raw = lambda name, text, **options: EdgeCase(name, text, options, raw=True)  # noqa: E731
    return [
        raw("empty prompt", ""),
        raw("whitespace only", " \n\t  "),
        raw("prompt over the context length", over_context),
        raw("emoji, CJK and RTL text", "😀 Přeložte: 你好，世界。 مرحبا بالعالم שלום"),
        raw("control characters and NUL", "hello\x00world\x01\x07\x1b[31m\x7f"),
        raw("huge max_tokens", "Say hi.", max_tokens=10**9),
        raw("negative temperature", "Say hi.", temperature=-1.0),
        raw("prompt that is not text", None),
        raw("chat messages as the prompt", [{"role": "user", "content": "hi"}]),
        EdgeCase("chat request to a base model", [{"role": "user", "content": "hi"}], {}),
    ]


def run_case(model, case: EdgeCase, timeout_s: float) -> dict:
    """Run one case in a thread so that a hang is seen and reported, not waited on."""
    outcome: dict = {}
    started = time.perf_counter()
    thread = threading.Thread(
        target=lambda: outcome.update(attempt(model, case)), daemon=True, name=f"edge-case {case.name}"
    )
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        outcome = {"ok": False, "outcome": f"hang: no result after {timeout_s:.0f} s"}
    return {"case": case.name, "seconds": round(time.perf_counter() - started, 3), **outcome}


def attempt(model, case: EdgeCase) -> dict:
    """``ok`` and what happened: an answer or a clear error is ok; any other exception is a crash."""
    try:
        pieces = []
        for piece in _pieces(model, case, {"max_tokens": 16, "temperature": 0.0, **case.options}):
            pieces.append(piece)
            if len(pieces) >= MAX_PIECES:
                break
        text = "".join(pieces)
        return {"ok": isinstance(text, str), "outcome": f"answered ({len(text)} characters)"}
    except SlmopsError as exc:
        return {"ok": True, "outcome": f"clear error: {exc}"}
    except Exception as exc:  # the point of the check: anything else is a crash
        return {"ok": False, "outcome": f"crash: {type(exc).__name__}: {exc}"}


def _pieces(model, case: EdgeCase, options: dict) -> Iterator[str]:
    if not case.raw:
        return model.stream(case.request, **options)
    return (response.text for response in model.stream_generate(case.request, **options))


def run_all(model, timeout_s: float) -> list[dict]:
    """Every case's outcome, run in child processes when the model can be reopened in one."""
    spec = child_spec(model)
    if spec is None:  # an object only this process can make: the cases run here, in threads
        return [{**run_case(model, case, timeout_s), "process": "in-process"} for case in cases(model)]
    names = [case.name for case in cases(model)]
    outcomes: dict[int, dict] = {}
    while len(outcomes) < len(names):
        remaining = [index for index in range(len(names)) if index not in outcomes]
        outcomes.update(_run_child(spec, remaining, names, timeout_s))
    return [outcomes[index] for index in range(len(names))]


def child_spec(model) -> dict | None:
    """How a child process opens the same model: its folder, or its importable class (test doubles)."""
    from slmops.runtime.model import Model

    if isinstance(model, Model):
        return {"folder": str(model.path), "threads": model.threads}
    kind = type(model)
    if "<locals>" in kind.__qualname__ or kind.__module__ == "__main__":
        return None
    return {"factory": f"{kind.__module__}:{kind.__qualname__}"}


def _run_child(spec: dict, indices: list[int], names: list[str], timeout_s: float) -> dict[int, dict]:
    """Run ``indices`` in one child; stop at its first crash or hang, which is charged to the running case."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path for path in sys.path if path)}
    command = [sys.executable, "-m", "slmops.evaluate.edge_cases", json.dumps(spec), ",".join(map(str, indices))]
    outcomes: dict[int, dict] = {}
    with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as stderr:
        # Leaving the with-block closes the child's stdout and waits for it.
        with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, env=env) as child:
            lines = _Lines(child.stdout)
            running, started, deadline = None, time.perf_counter(), time.monotonic() + LOAD_TIMEOUT_S
            try:
                while len(outcomes) < len(indices):
                    line = lines.next(deadline)
                    if line is None or line == "":
                        failure = _hang(timeout_s, running is None) if line is None else _crash(child, stderr)
                        return outcomes | _failed(indices, outcomes, running, names, failure, started, child.pid)
                    message = json.loads(line)
                    if "start" in message:
                        running, started, deadline = message["start"], time.perf_counter(), time.monotonic() + timeout_s
                    else:
                        outcomes[message["index"]] = {**message["outcome"], "process": child.pid}
                        running = None
                return outcomes
            finally:
                if child.poll() is None:
                    child.kill()


def _failed(indices, outcomes, running, names, failure: str, started: float, pid: int) -> dict[int, dict]:
    """The running case failed; if the child never got to a case, every remaining one did."""
    blamed = [running] if running is not None else [index for index in indices if index not in outcomes]
    seconds = round(time.perf_counter() - started, 3)
    return {
        index: {"case": names[index], "seconds": seconds, "ok": False, "outcome": failure, "process": pid}
        for index in blamed
    }


def _hang(timeout_s: float, loading: bool) -> str:
    if loading:
        return f"hang: the child process did not open the model in {LOAD_TIMEOUT_S:.0f} s"
    return f"hang: no result after {timeout_s:.0f} s (child process killed)"


def _crash(child: subprocess.Popen, stderr) -> str:
    code = child.wait()
    stderr.seek(0)
    tail = " ".join(stderr.read()[-STDERR_TAIL:].split())
    how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
    return f"crash: the process {how}" + (f"; stderr: ...{tail[-200:]}" if tail else "")


class _Lines:
    """Lines of a pipe, each waited for until a deadline (None on timeout, '' at end of file)."""

    def __init__(self, pipe):
        self.fd, self.buffer = pipe.fileno(), b""
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.fd, selectors.EVENT_READ)

    def next(self, deadline: float) -> str | None:
        while b"\n" not in self.buffer:
            wait = deadline - time.monotonic()
            if wait <= 0 or not self.selector.select(wait):
                return None
            chunk = os.read(self.fd, 65536)
            if not chunk:
                return ""
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.decode("utf-8")


def _open(spec: dict):
    if "folder" in spec:
        from slmops.runtime import load

        return load(spec["folder"], threads=spec.get("threads"))
    import importlib

    module, _, qualname = spec["factory"].partition(":")
    factory: Any = importlib.import_module(module)
    for part in qualname.split("."):
        factory = getattr(factory, part)
    return factory()


def _child_main(spec: str, indices: str) -> None:
    # The protocol gets its own copy of stdout; anything else printed to fd 1 goes to stderr.
    protocol = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)
    model = _open(json.loads(spec))
    every = cases(model)
    for index in map(int, indices.split(",")):
        protocol.write(json.dumps({"start": index}) + "\n")
        started = time.perf_counter()
        outcome = {"case": every[index].name, **attempt(model, every[index])}
        outcome["seconds"] = round(time.perf_counter() - started, 3)
        protocol.write(json.dumps({"index": index, "outcome": outcome}) + "\n")


if __name__ == "__main__":
    _child_main(sys.argv[1], sys.argv[2])
