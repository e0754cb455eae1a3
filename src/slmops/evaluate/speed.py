"""Load time, decode speed, TTFT and peak RSS of one model, measured in a fresh process.

A child process per model keeps one model's memory out of the next one's peak RSS,
and keeps the sweep's own arrays (logits, references) out of every figure.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from slmops.evaluate.completion import COMPLETION, mode_of

PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."


@dataclass
class Speed:
    load_s: float
    ttft_s: float
    decode_tokens_per_s: float
    peak_rss_mb: float

    def to_json(self) -> dict:
        return asdict(self)


def measure(folder: Path, new_tokens: int = 64, repeats: int = 3, timeout_s: float = 600) -> Speed:
    """Best of ``repeats`` greedy answers of ``new_tokens`` tokens, in a child process."""
    command = [sys.executable, "-m", "slmops.evaluate.speed", str(folder), str(new_tokens), str(repeats)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"measuring {folder} failed: {last}")
    return Speed(**json.loads(done.stdout.strip().splitlines()[-1]))


def _child(folder: str, new_tokens: int, repeats: int) -> dict:
    from slmops.memory import peak_rss_mb
    from slmops.runtime import load

    model = load(folder)
    runs = [_answer(model, new_tokens) for _ in range(repeats)]
    return {
        "load_s": model.load_s,
        "ttft_s": min(run.ttft_s for run in runs),
        "decode_tokens_per_s": max(run.decode_tokens_per_s for run in runs),
        "peak_rss_mb": peak_rss_mb(),
    }


def _answer(model, new_tokens: int):
    # One token a step, without prompt lookup: what drafting gains depends on the answer's text, and
    # an export whose greedy answer loops drafts itself (a Qwen2.5-0.5B INT4 export repeating one
    # sentence measured 137 tokens/s with drafting, 86 without; a closer export that did not loop, 86).
    options = {"max_tokens": new_tokens, "temperature": 0.0, "speculative": False}
    if mode_of(model) == COMPLETION:  # a base model refuses chats: it completes the prompt's text
        return model.generate(PROMPT, **options)
    return model.chat([{"role": "user", "content": PROMPT}], **options)


if __name__ == "__main__":
    print(json.dumps(_child(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))))
