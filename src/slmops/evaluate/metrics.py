"""The quality figures of a model against its reference, from next-token logits.

They are the figures llama.cpp's perplexity tool prints for a quant against its base
model, so a user can set an slmops export beside a GGUF quant of the same model:

- perplexity of each model on the text, and ΔPPL in percent;
- mean KL divergence of the test model's next-token distribution from the reference's;
- top-1 agreement ("same top p"): how often both models rank the same token first;
- Δp: the change in the probability given to the true next token, its percentiles and
  its root mean square.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

PERCENTILES = (1, 5, 10, 25, 50, 75, 90, 95, 99)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-probabilities, in float32 whatever the input's dtype (fp16 models)."""
    logits = np.asarray(logits, dtype=np.float32)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


@dataclass
class TokenStats:
    """Per-token figures of one or more windows, for the positions that are scored."""

    nll: np.ndarray  # -log p_test(true token)
    ref_nll: np.ndarray | None = None  # -log p_ref(true token)
    kld: np.ndarray | None = None  # KL(ref || test) of the whole next-token distribution
    same_top: np.ndarray | None = None  # argmax agrees

    @classmethod
    def compare(cls, test_lp: np.ndarray, targets: np.ndarray, ref_lp: np.ndarray | None = None) -> TokenStats:
        """Stats of test log-probs [n, V] on targets [n], against reference log-probs if given."""
        rows = np.arange(len(targets))
        nll = -test_lp[rows, targets].astype(np.float64)
        if ref_lp is None:
            return cls(nll)
        ref_lp = np.asarray(ref_lp, dtype=np.float32)
        kld = (np.exp(ref_lp) * (ref_lp - test_lp)).sum(axis=-1).astype(np.float64)
        same = ref_lp.argmax(axis=-1) == test_lp.argmax(axis=-1)
        # Rounding can make a KL of identical distributions a hair below zero.
        return cls(nll, -ref_lp[rows, targets].astype(np.float64), np.maximum(kld, 0.0), same)

    @classmethod
    def concat(cls, parts: list[TokenStats]) -> TokenStats:
        def join(name):
            arrays = [getattr(part, name) for part in parts]
            return None if not arrays or arrays[0] is None else np.concatenate(arrays)

        return cls(join("nll"), join("ref_nll"), join("kld"), join("same_top"))


@dataclass
class QualityFigures:
    """What `slmops eval` reports for the scored tokens of the text.

    Attributes:
        tokens: how many next-token predictions were scored.
        ppl: the model's perplexity; ppl_stderr its standard error (delta method).
        ref_ppl: the reference's perplexity, when there is a reference.
        delta_ppl_pct: (ppl / ref_ppl - 1) x 100.
        kld_mean, kld_median, kld_p99, kld_max: KL(reference || model) per token, in nats.
        same_top_pct: percent of tokens where both models rank the same token first.
        dp_mean_pct, dp_rms_pct: mean and RMS of Δp, p_model(true) - p_ref(true), in percent.
        dp_percentiles_pct: Δp percentiles (1st to 99th), in percent.
    """

    tokens: int
    ppl: float
    ppl_stderr: float
    ref_ppl: float | None = None
    delta_ppl_pct: float | None = None
    kld_mean: float | None = None
    kld_median: float | None = None
    kld_p99: float | None = None
    kld_max: float | None = None
    same_top_pct: float | None = None
    dp_mean_pct: float | None = None
    dp_rms_pct: float | None = None
    dp_percentiles_pct: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)


def summarize(stats: TokenStats) -> QualityFigures:
    """Aggregate per-token stats into the reported figures."""
    n = len(stats.nll)
    if n == 0:
        raise ValueError("no token was scored")
    mean_nll = float(stats.nll.mean())
    ppl = math.exp(mean_nll)
    # d exp(x) = exp(x) dx: the standard error of the mean NLL scaled by the perplexity.
    stderr = ppl * float(stats.nll.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    figures = QualityFigures(tokens=n, ppl=ppl, ppl_stderr=stderr)
    # compare() sets the three reference figures together, or none of them.
    if stats.ref_nll is None or stats.kld is None or stats.same_top is None:
        return figures
    figures.ref_ppl = math.exp(float(stats.ref_nll.mean()))
    figures.delta_ppl_pct = (ppl / figures.ref_ppl - 1.0) * 100.0
    figures.kld_mean = float(stats.kld.mean())
    figures.kld_median = float(np.median(stats.kld))
    figures.kld_p99 = float(np.percentile(stats.kld, 99))
    figures.kld_max = float(stats.kld.max())
    figures.same_top_pct = float(stats.same_top.mean() * 100.0)
    dp = np.exp(-stats.nll) - np.exp(-stats.ref_nll)
    figures.dp_mean_pct = float(dp.mean() * 100.0)
    figures.dp_rms_pct = float(math.sqrt(float((dp**2).mean())) * 100.0)
    figures.dp_percentiles_pct = {f"p{q}": float(np.percentile(dp, q) * 100.0) for q in PERCENTILES}
    return figures
