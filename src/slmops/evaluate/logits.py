"""Next-token log-probabilities of a model over windows of a text.

Three sources give the same thing, ``scored(index, window, first)``: the log-probs
[n, vocab] at the scored positions of one window.

- :class:`OnnxLogits`: an onnxruntime-genai model folder (what slmops converts);
- :class:`TorchLogits`: a Hugging Face folder run with torch (the unconverted model);
- :class:`SavedLogits`: log-probs that ``--save-logits`` wrote earlier, so a slow
  reference (the FP32 export, the torch model) is run once for many comparisons.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from slmops.errors import UsageError
from slmops.evaluate.metrics import log_softmax
from slmops.modelfolder.folder import ModelFolder

SAVED_FORMAT = "slmops-logits/1"


@dataclass(frozen=True)
class WindowPlan:
    """Windows of ``size`` tokens, ``stride`` apart; each target token is scored once.

    Every window after the first scores only its last ``stride`` predictions, so each of
    them sees at least ``size - stride`` tokens of context (the sliding-window perplexity).
    Windows that do not overlap (``stride == size``) leave each later window's first token
    unscored: nothing in its window predicts it.
    """

    size: int
    stride: int
    starts: tuple[int, ...]

    @classmethod
    def make(cls, n_tokens: int, size: int, stride: int | None = None, limit: int = 0) -> WindowPlan:
        stride = stride or size // 2
        if size < 2 or not 0 < stride <= size:
            raise UsageError(f"Invalid window {size} / stride {stride}: need 2 <= window and 0 < stride <= window.")
        if n_tokens < size:
            raise UsageError(
                f"The text has {n_tokens} tokens, fewer than one window of {size}; use a longer text or --window."
            )
        starts = tuple(range(0, n_tokens - size + 1, stride))
        return cls(size, stride, starts[:limit] if limit > 0 else starts)

    def first_scored(self, index: int) -> int:
        """Index in window ``index`` of the first position whose prediction counts."""
        return 0 if index == 0 else max(0, self.size - self.stride - 1)

    def windows(self, tokens: np.ndarray):
        for index, start in enumerate(self.starts):
            yield index, tokens[start : start + self.size], self.first_scored(index)

    def scored_count(self) -> int:
        return sum(self.size - 1 - self.first_scored(index) for index in range(len(self.starts)))

    def fingerprint(self, tokens: np.ndarray) -> str:
        """Identifies the scored token windows: saved log-probs only fit the same ones."""
        digest = hashlib.sha256(f"{self.size}/{self.stride}/{len(self.starts)}".encode())
        for _, window, _ in self.windows(tokens):
            digest.update(np.asarray(window, dtype=np.int64).tobytes())
        return digest.hexdigest()


class OnnxLogits:
    """Log-probs from an onnxruntime-genai model folder, one forward pass per window."""

    def __init__(self, folder: ModelFolder, threads: int | None = None) -> None:
        import onnxruntime_genai as og

        from slmops.runtime.threads import default_threads

        self.folder = folder.path
        config = og.Config(str(self.folder))
        options = {"intra_op_num_threads": threads or default_threads()}
        config.overlay(json.dumps({"model": {"decoder": {"session_options": options}}}))
        self._og = og
        self.model = og.Model(config)
        self.tokenizer = og.Tokenizer(self.model)
        self.vocab_size = int(folder.genai_config["model"]["vocab_size"])
        self.context_length = folder.context_length
        self.name = self.folder.name

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self.tokenizer.encode(text), dtype=np.int32)

    def logits(self, window: np.ndarray) -> np.ndarray:
        params = self._og.GeneratorParams(self.model)
        params.set_search_options(max_length=len(window), num_beams=1, do_sample=False)
        generator = self._og.Generator(self.model, params)
        generator.append_tokens(np.asarray(window, dtype=np.int32))
        return generator.get_output("logits")[0]

    def scored(self, index: int, window: np.ndarray, first: int) -> np.ndarray:
        return log_softmax(self.logits(window)[first:-1])


class TorchLogits:
    """Log-probs from a Hugging Face model folder, run with torch in fp32."""

    def __init__(self, folder: Path):
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        self.folder = Path(folder)
        self._torch = torch
        self.model = AutoModelForCausalLM.from_pretrained(self.folder, dtype=torch.float32).eval()
        config = AutoConfig.from_pretrained(self.folder)
        self.vocab_size = int(config.vocab_size)
        self.name = self.folder.name

    def scored(self, index: int, window: np.ndarray, first: int) -> np.ndarray:
        ids = self._torch.tensor(np.asarray(window, dtype=np.int64)[None, :])
        with self._torch.no_grad():
            logits = self.model(input_ids=ids).logits[0].float().numpy()
        return log_softmax(logits[first:-1])


class SavedLogits:
    """Reference log-probs written by :class:`LogitsWriter` (``--save-logits``)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        try:
            self.meta = json.loads((self.folder / "meta.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise UsageError(
                f"{folder} holds no saved logits ({exc}); write them with `slmops eval --save-logits`."
            ) from exc
        if self.meta.get("format") != SAVED_FORMAT:
            raise UsageError(f"{folder} has saved logits of an unknown format {self.meta.get('format')!r}.")
        self.values = np.load(self.folder / "logprobs.npy", mmap_mode="r")
        self.offsets = self.meta["offsets"]
        self.vocab_size = int(self.meta["vocab_size"])
        self.name = self.meta.get("model", self.folder.name)

    def check(self, plan: WindowPlan, tokens: np.ndarray) -> None:
        if self.meta["fingerprint"] != plan.fingerprint(tokens):
            raise UsageError(
                f"The saved logits in {self.folder} were computed on other tokens or windows "
                f"(window {self.meta['window']}, stride {self.meta['stride']}, {self.meta['windows']} windows); "
                "use the same text and window flags, or save them again."
            )

    def scored(self, index: int, window: np.ndarray, first: int) -> np.ndarray:
        start, stop = self.offsets[index], self.offsets[index + 1]
        return np.asarray(self.values[start:stop], dtype=np.float32)


class LogitsWriter:
    """Saves the scored log-probs of each window as float16 (half the size, error < 1e-3 nats)."""

    def __init__(self, folder: Path, plan: WindowPlan, tokens: np.ndarray, vocab_size: int, model: str):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        shape = (plan.scored_count(), vocab_size)
        self.values = np.lib.format.open_memmap(self.folder / "logprobs.npy", mode="w+", dtype=np.float16, shape=shape)
        counts = [plan.size - 1 - plan.first_scored(index) for index in range(len(plan.starts))]
        self.meta: dict[str, Any] = {
            "format": SAVED_FORMAT,
            "model": model,
            "window": plan.size,
            "stride": plan.stride,
            "windows": len(plan.starts),
            "vocab_size": vocab_size,
            "offsets": [int(x) for x in np.concatenate([[0], np.cumsum(counts)])],
            "fingerprint": plan.fingerprint(tokens),
        }

    def write(self, index: int, log_probs: np.ndarray) -> None:
        start, stop = self.meta["offsets"][index], self.meta["offsets"][index + 1]
        self.values[start:stop] = log_probs.astype(np.float16)

    def close(self) -> None:
        self.values.flush()
        # meta.json last: a folder without it is an interrupted save, never read as complete.
        (self.folder / "meta.json").write_text(json.dumps(self.meta, indent=1) + "\n", encoding="utf-8")
