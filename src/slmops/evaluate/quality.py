"""Perplexity and divergence from a reference: the library function under `slmops eval`."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from slmops.cache.resolver import resolve
from slmops.errors import ModelNotFound, UsageError
from slmops.evaluate.logits import LogitsWriter, OnnxLogits, SavedLogits, TorchLogits, WindowPlan
from slmops.evaluate.metrics import QualityFigures, TokenStats, summarize
from slmops.evaluate.progress import progress_bar
from slmops.machine import describe_cpu
from slmops.modelfolder.folder import GENAI_CONFIG

DEFAULT_WINDOW = 512
DEFAULT_WINDOWS = 12


@dataclass
class QualityReport:
    """The figures of one model on one text, and how they were measured."""

    model: str
    reference: str | None
    text: str
    window: int
    stride: int
    windows: int
    figures: QualityFigures
    seconds: float
    # the logits come from onnxruntime's CPU kernels, which differ by instruction set
    cpu_info: dict = field(default_factory=lambda: describe_cpu().to_json())

    def to_json(self) -> dict:
        data = asdict(self)
        data["figures"] = self.figures.to_json()
        return data


def shipped_text() -> Path:
    """The licence texts shipped with slmops (see data/eval-text.md)."""
    return Path(str(resources.files("slmops") / "data" / "eval-text.txt"))


def open_reference(name_or_path: str | Path | None):
    """A log-probs source for ``--reference``: saved logits, a Hugging Face folder, or an ONNX model."""
    if name_or_path is None:
        return None
    path = Path(name_or_path).expanduser()
    if (path / "meta.json").exists() and (path / "logprobs.npy").exists():
        return SavedLogits(path)
    if (path / "config.json").exists() and not (path / GENAI_CONFIG).exists():
        return TorchLogits(path)
    try:
        return OnnxLogits(resolve(name_or_path))
    except ModelNotFound:
        raise
    except Exception as exc:  # onnxruntime-genai raises plain RuntimeErrors
        raise UsageError(f"Cannot load the reference {name_or_path}: {exc}") from exc


def evaluate_quality(
    model: str | Path,
    *,
    reference: str | Path | None = None,
    text: str | Path | None = None,
    window: int | None = None,
    stride: int | None = None,
    windows: int = DEFAULT_WINDOWS,
    save_logits: str | Path | None = None,
    show_progress: bool = True,
) -> QualityReport:
    """Perplexity of ``model`` on a text, and its divergence from ``reference``.

    Args:
        model: a cache name or an onnxruntime-genai model folder.
        reference: the unquantized model (ONNX folder or cache name, a Hugging Face folder
            run with torch, or a folder of logits saved by ``save_logits``); None for PPL only.
        text: a UTF-8 text file; None for the shipped licence texts.
        window: tokens per window (default 512, at most the model's context); stride:
            tokens between window starts (default half a window).
        windows: how many windows to score (0: the whole text).
        save_logits: a folder to save the reference's log-probs to (the model's own when
            there is no reference), for reuse as ``reference``.
        show_progress: draw a progress bar on the terminal.

    Returns:
        A :class:`QualityReport`.
    """
    started = time.perf_counter()
    source = OnnxLogits(resolve(model))
    ref = open_reference(reference)
    if ref is not None and ref.vocab_size != source.vocab_size:
        raise UsageError(
            f"The reference's vocabulary ({ref.vocab_size}) differs from the model's ({source.vocab_size}); compare models of one tokenizer."
        )
    text_path = Path(text) if text else shipped_text()
    tokens = source.encode(_read_text(text_path))
    if isinstance(ref, SavedLogits):
        window, stride, windows = ref.meta["window"], ref.meta["stride"], ref.meta["windows"]
    window = min(window or DEFAULT_WINDOW, source.context_length)
    plan = WindowPlan.make(len(tokens), window, stride, windows)
    if isinstance(ref, SavedLogits):
        ref.check(plan, tokens)
    saver_source = ref if ref is not None else source
    writer = (
        LogitsWriter(Path(save_logits), plan, tokens, saver_source.vocab_size, saver_source.name)
        if save_logits
        else None
    )
    stats = _score(plan, tokens, source, ref, writer, show_progress)
    if writer:
        writer.close()
    return QualityReport(
        model=str(model),
        reference=None if reference is None else str(reference),
        text=text_path.name,
        window=plan.size,
        stride=plan.stride,
        windows=len(plan.starts),
        figures=summarize(stats),
        seconds=time.perf_counter() - started,
    )


def _score(plan: WindowPlan, tokens: np.ndarray, source, ref, writer, show_progress: bool) -> TokenStats:
    parts = []
    with progress_bar("eval", len(plan.starts), show_progress) as advance:
        for index, window, first in plan.windows(tokens):
            ref_lp = ref.scored(index, window, first) if ref is not None else None
            test_lp = source.scored(index, window, first)
            if writer:
                writer.write(index, ref_lp if ref_lp is not None else test_lp)
            parts.append(TokenStats.compare(test_lp, np.asarray(window[first + 1 :]), ref_lp))
            advance()
    return TokenStats.concat(parts)


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"Cannot read the text {path}: {exc}. Give a UTF-8 text file with --text.") from exc
