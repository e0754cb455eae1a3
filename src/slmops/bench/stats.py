"""Per-request timings and the statistics computed from them.

Figures follow the names users already read in vLLM's ``bench serve``:
TTFT (time to first token), TPOT (time per output token after the first,
``(E2EL - TTFT) / (output tokens - 1)``), ITL (gap between two consecutive
streamed chunks), E2EL (end-to-end latency), request throughput and goodput.
Every time is a ``time.perf_counter()`` reading in seconds; results are in ms.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

# Above this coefficient of variation a case is flagged as too noisy to trust.
NOISE_CV = 0.15


@dataclass
class RequestRecord:
    """What one request did, as timestamps taken by the client side.

    ``chunk_times`` holds the arrival time of every streamed piece that carried at
    least one token, and ``chunk_tokens`` how many tokens each carried.
    """

    start: float
    prompt_tokens: int
    chunk_times: list[float] = field(default_factory=list)
    chunk_tokens: list[int] = field(default_factory=list)
    end: float | None = None
    error: str | None = None

    def add_chunk(self, when: float, tokens: int = 1) -> None:
        self.chunk_times.append(when)
        self.chunk_tokens.append(tokens)

    def finish(self, when: float, output_tokens: int | None = None) -> None:
        """Close the request; ``output_tokens`` overrides the chunk count (server usage)."""
        self.end = when
        if output_tokens is not None and output_tokens != self.output_tokens and self.chunk_tokens:
            self.chunk_tokens[-1] += output_tokens - self.output_tokens

    @property
    def output_tokens(self) -> int:
        return sum(self.chunk_tokens)

    @property
    def ok(self) -> bool:
        return self.error is None and self.end is not None and bool(self.chunk_times)

    @property
    def ttft(self) -> float:
        return self.chunk_times[0] - self.start

    @property
    def e2el(self) -> float:
        assert self.end is not None, "the end-to-end latency of an unfinished request"
        return self.end - self.start

    @property
    def tpot(self) -> float | None:
        if self.output_tokens < 2:
            return None
        return (self.e2el - self.ttft) / (self.output_tokens - 1)

    @property
    def itls(self) -> list[float]:
        return [b - a for a, b in zip(self.chunk_times, self.chunk_times[1:])]

    @property
    def prefill_tps(self) -> float | None:
        return self.prompt_tokens / self.ttft if self.ttft > 0 else None

    @property
    def decode_tps(self) -> float | None:
        tpot = self.tpot
        return 1.0 / tpot if tpot else None


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default method), ``q`` in 0..100."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass
class Distribution:
    """Summary of one figure over the requests of a case."""

    mean: float
    median: float
    p90: float
    p99: float
    std: float
    min: float
    max: float
    count: int

    @classmethod
    def of(cls, values: list[float], scale: float = 1.0) -> Distribution | None:
        if not values:
            return None
        scaled = [v * scale for v in values]
        return cls(
            mean=statistics.fmean(scaled),
            median=percentile(scaled, 50),
            p90=percentile(scaled, 90),
            p99=percentile(scaled, 99),
            std=statistics.pstdev(scaled),
            min=min(scaled),
            max=max(scaled),
            count=len(scaled),
        )

    @property
    def cv(self) -> float:
        """Coefficient of variation: the spread relative to the mean."""
        return self.std / self.mean if self.mean else 0.0


@dataclass
class Goodput:
    """Service-level objectives a request must meet to count as good (ms, None = no limit)."""

    ttft_ms: float | None = None
    tpot_ms: float | None = None
    e2el_ms: float | None = None

    def met_by(self, record: RequestRecord) -> bool:
        limits = ((self.ttft_ms, record.ttft), (self.tpot_ms, record.tpot), (self.e2el_ms, record.e2el))
        return all(limit is None or (value is not None and value * 1000 <= limit) for limit, value in limits)

    @classmethod
    def parse(cls, specs: tuple[str, ...] | list[str]) -> Goodput | None:
        """Parse ``["ttft:200", "tpot:50"]`` (the ``--goodput`` syntax of vLLM)."""
        if not specs:
            return None
        values = {}
        for spec in specs:
            for item in spec.replace(",", " ").split():
                name, _, number = item.partition(":")
                if name not in ("ttft", "tpot", "e2el") or not number:
                    raise ValueError(f"bad goodput objective {item!r}: use ttft:MS, tpot:MS or e2el:MS")
                values[f"{name}_ms"] = float(number)
        return cls(**values)


@dataclass
class CaseStats:
    """The figures of one case (one target, prompt length, output length, concurrency)."""

    requests: int
    failed: int
    duration_s: float
    prompt_tokens: int
    output_tokens_mean: float
    ttft_ms: Distribution | None
    tpot_ms: Distribution | None
    itl_ms: Distribution | None
    e2el_ms: Distribution | None
    prefill_tps: Distribution | None
    decode_tps: Distribution | None
    request_throughput: float
    output_throughput: float
    total_token_throughput: float
    goodput: float | None
    noisy: bool


def summarize(records: list[RequestRecord], duration_s: float, goodput: Goodput | None = None) -> CaseStats:
    """Compute the figures of a case from its request records.

    Args:
        records: every request of the case (failed ones are counted, not measured).
        duration_s: wall time from the first request sent to the last one finished.
        goodput: objectives for goodput; None leaves goodput out.
    """
    done = [r for r in records if r.ok]
    out_tokens = sum(r.output_tokens for r in done)
    in_tokens = sum(r.prompt_tokens for r in done)
    per_s = 1.0 / duration_s if duration_s > 0 else 0.0
    decode = Distribution.of([r.decode_tps for r in done if r.decode_tps])
    e2el = Distribution.of([r.e2el for r in done], 1000)
    return CaseStats(
        requests=len(records),
        failed=len(records) - len(done),
        duration_s=duration_s,
        prompt_tokens=round(in_tokens / len(done)) if done else 0,
        output_tokens_mean=out_tokens / len(done) if done else 0.0,
        ttft_ms=Distribution.of([r.ttft for r in done], 1000),
        tpot_ms=Distribution.of([r.tpot for r in done if r.tpot is not None], 1000),
        itl_ms=Distribution.of([gap for r in done for gap in r.itls], 1000),
        e2el_ms=e2el,
        prefill_tps=Distribution.of([r.prefill_tps for r in done if r.prefill_tps]),
        decode_tps=decode,
        request_throughput=len(done) * per_s,
        output_throughput=out_tokens * per_s,
        total_token_throughput=(out_tokens + in_tokens) * per_s,
        goodput=sum(goodput.met_by(r) for r in done) * per_s if goodput else None,
        noisy=_noisy(decode, e2el),
    )


def _noisy(*distributions: Distribution | None) -> bool:
    return any(d is not None and d.count >= 3 and d.cv > NOISE_CV for d in distributions)


def median_is_stable(values: list[float], tolerance: float = 0.02) -> bool:
    """True when adding the last value moved the median by less than ``tolerance`` (relative)."""
    if len(values) < 4:
        return False
    before, after = statistics.median(values[:-1]), statistics.median(values)
    return before > 0 and abs(after - before) / before < tolerance
