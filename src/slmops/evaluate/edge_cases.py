"""Edge cases and invalid input for checklist item 5.

Each case must end in a clean answer or a clear slmops error (a
:class:`slmops.errors.SlmopsError`, whose message tells the user what to do). Any
other exception is a crash; a case still running after the timeout is a hang.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from slmops.errors import SlmopsError

MAX_PIECES = 16  # an answer that starts is an answer: never wait for a huge one to end


@dataclass(frozen=True)
class EdgeCase:
    name: str
    messages: object
    options: dict


def cases(model) -> list[EdgeCase]:
    over_context = "word " * (int(getattr(model, "context_length", 4096)) + 64)
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


def run_case(model, case: EdgeCase, timeout_s: float) -> dict:
    """Run one case in a thread so that a hang is seen and reported, not waited on."""
    outcome: dict = {}

    def target():
        try:
            pieces = []
            for piece in model.stream(case.messages, **{"max_tokens": 16, "temperature": 0.0, **case.options}):
                pieces.append(piece)
                if len(pieces) >= MAX_PIECES:
                    break
            text = "".join(pieces)
            outcome.update(ok=isinstance(text, str), outcome=f"answered ({len(text)} characters)")
        except SlmopsError as exc:
            outcome.update(ok=True, outcome=f"clear error: {exc}")
        except Exception as exc:  # the point of the check: anything else is a crash
            outcome.update(ok=False, outcome=f"crash: {type(exc).__name__}: {exc}")

    started = time.perf_counter()
    thread = threading.Thread(target=target, daemon=True, name=f"edge-case {case.name}")
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        outcome = {"ok": False, "outcome": f"hang: no result after {timeout_s:.0f} s"}
    return {"case": case.name, "seconds": round(time.perf_counter() - started, 3), **outcome}
