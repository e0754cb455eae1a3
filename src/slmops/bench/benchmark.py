"""`slmops bench MODEL`: the library function under the command."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from slmops.bench import report
from slmops.bench.prompts import PromptSource, load_paragraphs
from slmops.bench.runner import BenchResult, CaseResult, Sweep, above_roofline, run_benchmark, set_bandwidth
from slmops.bench.system import memory_bandwidth, system_info
from slmops.bench.targets import LlamaCppTarget, RawTarget, RuntimeTarget, Target, UrlTarget
from slmops.cache.resolver import resolve
from slmops.errors import UsageError


@dataclass
class TargetSpec:
    """Which targets to put side by side (the first one is what the ratios are about).

    Attributes:
        model: a cached model name or model folder, run in-process by slmops.
        more_models: further models (e.g. other precisions) run in the same way.
        url: an OpenAI-compatible server to stream from.
        url_model: the model name to ask the server for (default: its first).
        endpoint: "chat" or "completions".
        pid: the server's process, for memory and CPU (default: found from a loopback port).
        api_key: sent as a bearer token.
        ignore_eos: ask the server to ignore end-of-text (vLLM and llama-server accept it).
        raw: add a bare onnxruntime-genai Generator loop on the (first) model's folder.
        raw_threads: the thread counts of the raw targets (0 = onnxruntime's default).
        llama_cpp: a GGUF file to run with llama-cpp-python, as a reference.
        threads: threads of the slmops and llama.cpp targets (None: the runtime's choice).
        speculative: let the slmops targets draft tokens by prompt lookup (greedy answers).
    """

    model: str | None = None
    more_models: tuple[str, ...] = ()
    url: str | None = None
    url_model: str | None = None
    endpoint: str = "chat"
    pid: int | None = None
    api_key: str | None = None
    ignore_eos: bool = False
    raw: bool = False
    raw_threads: tuple[int, ...] = ()
    llama_cpp: str | None = None
    threads: int | None = None
    speculative: bool = True
    extra: list[Target] = field(default_factory=list)

    def build(self) -> list[Target]:
        if not (self.model or self.url or self.extra):
            raise UsageError("Give a MODEL (cached name or folder), --url, or both.")
        threads = self.threads or _default_threads()
        targets: list[Target] = []
        if self.model:
            named = bool(self.more_models)
            targets += [RuntimeTarget(m, threads, named, self.speculative) for m in (self.model, *self.more_models)]
        if self.url:
            targets.append(UrlTarget(self.url, self.url_model, self.endpoint, self.pid, self.api_key, self.ignore_eos))
        if self.raw:
            if not self.model:
                raise UsageError("--raw runs on the MODEL's folder; give a MODEL too.")
            folder = resolve(self.model)
            targets += [RawTarget(folder, t) for t in (self.raw_threads or (threads,))]
        if self.llama_cpp:
            targets.append(LlamaCppTarget(self.llama_cpp, threads))
        return targets + list(self.extra)


def _default_threads() -> int:
    from slmops.runtime.threads import default_threads

    return default_threads()


def benchmark(
    spec: TargetSpec,
    sweep: Sweep,
    prompts: str | Path | None = None,
    roofline: bool = True,
    on_case=None,
    refresh_bandwidth: bool = False,
) -> BenchResult:
    """Measure the targets of ``spec`` over the cases of ``sweep``.

    Args:
        spec: what to measure.
        sweep: prompt lengths, output lengths, concurrency, repetitions.
        prompts: a JSONL file of texts to cut prompts from (default: the shipped text).
        roofline: measure (once, then cached) the memory bandwidth for the roofline.
        on_case: called with each finished :class:`CaseResult`, its index and the case count.
        refresh_bandwidth: measure the bandwidth again instead of using the cached value.

    Returns:
        A :class:`BenchResult`; ``.to_dict()`` is the JSON document.
    """
    targets = spec.build()
    try:
        bandwidth = memory_bandwidth(refresh_bandwidth) if roofline else None
        source = _LazySource(load_paragraphs(prompts), targets)
        result = run_benchmark(targets, sweep, source, system_info(), bandwidth, on_case)
    finally:
        for target in targets:
            target.close()
    if above_roofline(result):
        # Most often the bandwidth was probed on a busy machine; a fresh probe keeps the better figure.
        set_bandwidth(result, memory_bandwidth(refresh=True))
        for case in above_roofline(result):
            result.warnings.append(
                f"{case.target} prompt={case.prompt_tokens} out={case.output_tokens} c={case.concurrency}: "
                f"decodes at {case.roofline_pct:.0f}% of the memory-bandwidth roofline: part of its weights stay "
                f"in the CPU's cache, or the bandwidth ({result.memory_bandwidth_gb_s:.1f} GB/s) was measured on a "
                f"busy machine (run with --refresh-bandwidth when it is idle)"
            )
    return result


class _LazySource(PromptSource):
    """Cuts prompts with the first in-process target's tokenizer, once the targets are loaded."""

    def __init__(self, paragraphs: list[str], targets: list[Target]):
        super().__init__(paragraphs)
        self.targets = targets

    def prompt(self, tokens: int, variant: int = 0):
        if self.encode is None:
            for target in self.targets:
                if target.kind != "url" and getattr(target, "decode", None):
                    self.encode, self.decode = target.encode, target.decode
                    break
        return super().prompt(tokens, variant)


def write_outputs(
    document: dict, json_path=None, markdown_path=None, plot_path=None, title: str | None = None
) -> list[Path]:
    """Write the JSON, Markdown and PNG files asked for; return their paths."""
    import json

    written = []
    if json_path:
        Path(json_path).write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
        written.append(Path(json_path))
    if markdown_path:
        Path(markdown_path).write_text(report.markdown(document, title or "slmops bench results"), encoding="utf-8")
        written.append(Path(markdown_path))
    if plot_path:
        written.append(report.plot(document, plot_path))
    return written


__all__ = ["BenchResult", "CaseResult", "Sweep", "TargetSpec", "benchmark", "write_outputs"]
