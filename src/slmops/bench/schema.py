"""The JSON document `slmops bench --json` writes: one versioned schema, checked on write and read.

Times are in milliseconds, rates per second, memory in MiB. A figure that could
not be measured (e.g. TPOT of a one-token answer) is null. ``docs/bench.md``
describes every field; bump ``SCHEMA_VERSION`` when a field changes meaning.
"""

from __future__ import annotations

import jsonschema

from slmops.errors import UsageError

SCHEMA_VERSION = 1

_NUM = {"type": "number"}
_NUM_OR_NULL = {"type": ["number", "null"]}
_INT_OR_NULL = {"type": ["integer", "null"]}
_DIST = {
    "type": ["object", "null"],
    "required": ["mean", "median", "p90", "p99", "std", "min", "max", "count"],
    "properties": {k: _NUM for k in ("mean", "median", "p90", "p99", "std", "min", "max")}
    | {"count": {"type": "integer"}},
    "additionalProperties": False,
}
_STATS = {
    "type": "object",
    "required": [
        "requests",
        "failed",
        "duration_s",
        "prompt_tokens",
        "output_tokens_mean",
        "ttft_ms",
        "tpot_ms",
        "itl_ms",
        "e2el_ms",
        "prefill_tps",
        "decode_tps",
        "request_throughput",
        "output_throughput",
        "total_token_throughput",
        "goodput",
        "noisy",
    ],
    "properties": {
        "requests": {"type": "integer", "minimum": 0},
        "failed": {"type": "integer", "minimum": 0},
        "duration_s": _NUM,
        "prompt_tokens": {"type": "integer"},
        "output_tokens_mean": _NUM,
        **{k: _DIST for k in ("ttft_ms", "tpot_ms", "itl_ms", "e2el_ms", "prefill_tps", "decode_tps")},
        "request_throughput": _NUM,
        "output_throughput": _NUM,
        "total_token_throughput": _NUM,
        "goodput": _NUM_OR_NULL,
        "noisy": {"type": "boolean"},
    },
    "additionalProperties": False,
}
_CASE = {
    "type": "object",
    "required": [
        "target",
        "prompt_tokens",
        "output_tokens",
        "concurrency",
        "stats",
        "queue_delay_ms",
        "roofline_pct",
        "rss_peak_mb",
        "rss_steady_mb",
        "cpu_percent",
        "errors",
    ],
    "properties": {
        "target": {"type": "string"},
        "prompt_tokens": {"type": "integer", "minimum": 1},
        "output_tokens": {"type": "integer", "minimum": 1},
        "concurrency": {"type": "integer", "minimum": 1},
        "stats": _STATS,
        "queue_delay_ms": _NUM_OR_NULL,
        "roofline_pct": _NUM_OR_NULL,
        "rss_peak_mb": _NUM_OR_NULL,
        "rss_steady_mb": _NUM_OR_NULL,
        "cpu_percent": _NUM_OR_NULL,
        "errors": {"type": "array", "items": {"type": "string"}},
    },
    "additionalProperties": False,
}
_TARGET = {
    "type": "object",
    "required": ["label", "kind", "threads", "model", "library", "load_s", "weight_bytes", "roofline_tps", "pid"],
    "properties": {
        "label": {"type": "string"},
        "kind": {"enum": ["slmops", "raw", "llama.cpp", "url"]},
        "threads": _INT_OR_NULL,
        "model": {"type": ["string", "null"]},
        "library": {"type": "string"},
        "url": {"type": "string"},
        "load_s": _NUM,
        "weight_bytes": _INT_OR_NULL,
        "roofline_tps": _NUM_OR_NULL,
        "pid": _INT_OR_NULL,
    },
    "additionalProperties": False,
}
_RATIO = {
    "type": "object",
    "required": [
        "prompt_tokens",
        "output_tokens",
        "concurrency",
        "target",
        "reference",
        "decode_speedup",
        "ttft_speedup",
    ],
    "properties": {
        "prompt_tokens": {"type": "integer"},
        "output_tokens": {"type": "integer"},
        "concurrency": {"type": "integer"},
        "target": {"type": "string"},
        "reference": {"type": "string"},
        "decode_speedup": _NUM_OR_NULL,
        "ttft_speedup": _NUM_OR_NULL,
    },
    "additionalProperties": False,
}
_CPU_INFO = {
    "type": "object",
    "required": ["model", "label", "flags", "instruction_set"],
    "properties": {
        "model": {"type": "string"},
        "label": {"type": "string"},
        "flags": {"type": "array", "items": {"type": "string"}},
        "instruction_set": {"type": "string"},
    },
}

SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "slmops bench result",
    "type": "object",
    "required": [
        "schema",
        "schema_version",
        "created",
        "system",
        "memory_bandwidth_gb_s",
        "settings",
        "targets",
        "cases",
        "ratios",
        "warnings",
    ],
    "properties": {
        "schema": {"const": "slmops-bench"},
        "schema_version": {"const": SCHEMA_VERSION},
        "created": {"type": "string"},
        "system": {
            "type": "object",
            "required": ["cpu", "physical_cores", "logical_cpus", "usable_cpus", "ram_gb", "os", "python", "libraries"],
            # cpu_info came later: results written before it have only the model name in cpu
            "properties": {"cpu_info": _CPU_INFO},
        },
        "memory_bandwidth_gb_s": _NUM_OR_NULL,
        "settings": {
            "type": "object",
            "required": ["prompt_lengths", "output_lengths", "concurrency", "reps", "warmup", "goodput"],
        },
        "targets": {"type": "array", "minItems": 1, "items": _TARGET},
        "cases": {"type": "array", "items": _CASE},
        "ratios": {"type": "array", "items": _RATIO},
        "warnings": {"type": "array", "items": {"type": "string"}},
    },
    "additionalProperties": False,
}


def validate(document: dict, source: str = "the result") -> None:
    """Raise a UsageError naming the first field that breaks the schema."""
    try:
        jsonschema.validate(document, SCHEMA)
    except jsonschema.ValidationError as exc:
        where = "/".join(str(part) for part in exc.absolute_path) or "(top level)"
        raise UsageError(f"{source} is not a slmops bench result (at {where}: {exc.message}).") from exc
