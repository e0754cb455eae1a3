"""The service's counters, rendered in Prometheus' text format at /metrics.

Kept by hand (a few dicts and two histograms) rather than with a client library:
one process, one registry, and nothing more to install.
"""

from __future__ import annotations

import collections
import threading
from dataclasses import dataclass, field

import psutil

TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
TOKEN_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)


@dataclass
class Histogram:
    buckets: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * len(self.buckets)

    def observe(self, value: float) -> None:
        self.total += value
        self.count += 1
        for index, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[index] += 1

    def lines(self, name: str) -> list[str]:
        out = [f'{name}_bucket{{le="{bound}"}} {count}' for bound, count in zip(self.buckets, self.counts)]
        out += [
            f'{name}_bucket{{le="+Inf"}} {self.count}',
            f"{name}_sum {self.total:.6f}",
            f"{name}_count {self.count}",
        ]
        return out


class Metrics:
    """Everything /metrics reports; safe to update from the scheduler threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: collections.Counter = collections.Counter()  # (path, status) -> count
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.ttft = Histogram(TTFT_BUCKETS)
        self.per_token = Histogram(TOKEN_BUCKETS)

    def request(self, path: str, status: int) -> None:
        with self.lock:
            self.requests[(path, status)] += 1

    def token(self, response, previous_elapsed: float | None) -> None:
        """Record one generated token (``previous_elapsed`` is None for the first)."""
        with self.lock:
            self.completion_tokens += min(1, response.completion_tokens)  # an answer of max_tokens 0 has none
            if previous_elapsed is None:
                self.prompt_tokens += response.prompt_tokens
                self.ttft.observe(response.ttft_s)
            else:
                self.per_token.observe(max(0.0, response.elapsed_s - previous_elapsed))

    def render(
        self, queued: int, active: int, loaded: int, loading: int = 0, prefix: tuple[int, int, int, int] = (0, 0, 0, 0)
    ) -> str:
        """The Prometheus text exposition of the counters and the current gauges.

        ``prefix`` is the prefix caches' hits, reused tokens, evictions and bytes held, summed
        over the loaded models (the counters restart when a model is loaded again).
        """
        with self.lock:
            lines = ["# TYPE slmops_requests_total counter"]
            lines += [
                f'slmops_requests_total{{path="{path}",status="{status}"}} {count}'
                for (path, status), count in sorted(self.requests.items())
            ]
            lines += [
                "# TYPE slmops_prompt_tokens_total counter",
                f"slmops_prompt_tokens_total {self.prompt_tokens}",
                "# TYPE slmops_completion_tokens_total counter",
                f"slmops_completion_tokens_total {self.completion_tokens}",
                "# TYPE slmops_time_to_first_token_seconds histogram",
                *self.ttft.lines("slmops_time_to_first_token_seconds"),
                "# TYPE slmops_time_per_output_token_seconds histogram",
                *self.per_token.lines("slmops_time_per_output_token_seconds"),
            ]
        lines += [
            "# TYPE slmops_queue_depth gauge",
            f"slmops_queue_depth {queued}",
            "# TYPE slmops_active_sequences gauge",
            f"slmops_active_sequences {active}",
            "# TYPE slmops_loaded_models gauge",
            f"slmops_loaded_models {loaded}",
            "# TYPE slmops_loading_models gauge",
            f"slmops_loading_models {loading}",
            "# TYPE slmops_prefix_cache_hits_total counter",
            f"slmops_prefix_cache_hits_total {prefix[0]}",
            "# TYPE slmops_prefix_cache_reused_tokens_total counter",
            f"slmops_prefix_cache_reused_tokens_total {prefix[1]}",
            "# TYPE slmops_prefix_cache_evictions_total counter",
            f"slmops_prefix_cache_evictions_total {prefix[2]}",
            "# TYPE slmops_prefix_cache_bytes gauge",
            f"slmops_prefix_cache_bytes {prefix[3]}",
            "# TYPE slmops_process_resident_memory_bytes gauge",
            f"slmops_process_resident_memory_bytes {psutil.Process().memory_info().rss}",
        ]
        return "\n".join(lines) + "\n"
