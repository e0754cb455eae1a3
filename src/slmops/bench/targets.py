"""What a benchmark can measure: a model in-process, a bare Generator, llama.cpp, or a URL.

Every target turns one prompt into a :class:`RequestRecord` by timestamping each
token as it arrives, with the same clock, so their figures compare directly.
In-process targets feed exactly ``prompt.tokens`` token ids and generate exactly
``max_tokens`` tokens; a URL target sends text and reads the counts the server reports.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slmops.bench.stats import RequestRecord
from slmops.errors import ModelNotFound, SlmopsError, UsageError
from slmops.modelfolder.folder import ModelFolder

if TYPE_CHECKING:
    import httpx

Clock = Callable[[], float]


@dataclass
class Prompt:
    """A prompt of an exact length.

    In-process targets tokenize ``text`` (longer than needed) and keep its first
    ``tokens`` ids; targets that only take text send ``cut``, those ids decoded.
    """

    text: str
    tokens: int
    cut: str


class Target:
    """Base class: one thing to benchmark."""

    kind = "target"
    label = "target"
    threads: int | None = None
    max_concurrency = 1_000_000
    pid: int | None = None
    weight_bytes: int | None = None  # bytes of weights read to decode one token
    context_length: int | None = None

    def load(self) -> float:
        """Load the model; return the seconds it took."""
        return 0.0

    def encode(self, text: str) -> list[int] | None:
        """Token ids of ``text`` for this target's tokenizer, or None if it has none."""
        return None

    def decode(self, ids: list[int]) -> str | None:
        return None

    def request(self, prompt: Prompt, max_tokens: int, clock: Clock = time.perf_counter) -> RequestRecord:
        raise NotImplementedError

    def describe(self) -> dict:
        return {"label": self.label, "kind": self.kind, "threads": self.threads}

    def close(self) -> None:
        pass


def _failed(start: float, prompt_tokens: int, exc: Exception) -> RequestRecord:
    record = RequestRecord(start=start, prompt_tokens=prompt_tokens)
    record.error = f"{type(exc).__name__}: {exc}"
    return record


def _timed(
    generate: Callable[[], Iterable[object]], prompt_tokens: int, clock: Clock, max_tokens: int | None = None
) -> RequestRecord:
    """Run ``generate()`` and timestamp each token it yields, stopping after ``max_tokens``.

    ``generate`` is called after the start is taken, so its prefill is in the measured time.
    """
    record = RequestRecord(start=clock(), prompt_tokens=prompt_tokens)
    try:
        for _ in generate():
            record.add_chunk(clock())
            if max_tokens is not None and record.output_tokens >= max_tokens:
                break
    except Exception as exc:  # a failed request is a result, not a crash
        return _failed(record.start, prompt_tokens, exc)
    record.finish(clock())
    return record


def onnx_weight_bytes(folder: Path) -> int:
    """Bytes of an ONNX model's weights: its .onnx and external data files."""
    return sum(
        p.stat().st_size for p in folder.iterdir() if p.suffix in (".onnx", ".data") or p.name.endswith(".onnx.data")
    )


def threads_overlay(threads: int | None) -> str | None:
    """The genai_config overlay that sets onnxruntime's intra-op threads (None keeps its default)."""
    if not threads:
        return None
    return json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}})


class RawTarget(Target):
    """A bare onnxruntime-genai Generator loop on a model folder: the floor to compare with.

    ``threads=0`` keeps onnxruntime's own default; the folder is never modified.
    """

    kind = "raw"

    def __init__(self, folder: ModelFolder, threads: int | None, label: str | None = None) -> None:
        self.folder = folder
        self.threads = threads or None
        self.label = label or f"raw-ort-genai t={threads or 'default'}"
        self.weight_bytes = onnx_weight_bytes(folder.path)
        self.context_length = folder.context_length
        self.pid = os.getpid()

    def load(self) -> float:
        import onnxruntime_genai as og

        start = time.perf_counter()
        config = og.Config(str(self.folder.path))
        overlay = threads_overlay(self.threads)
        if overlay:
            config.overlay(overlay)
        self.model = og.Model(config)
        self.tokenizer = og.Tokenizer(self.model)
        return time.perf_counter() - start

    def encode(self, text: str) -> list[int]:
        return [int(t) for t in self.tokenizer.encode(text)]

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)

    def request(self, prompt: Prompt, max_tokens: int, clock: Clock = time.perf_counter) -> RequestRecord:
        import onnxruntime_genai as og

        ids = self.encode(prompt.text)[: prompt.tokens]
        total = len(ids) + max_tokens
        params = og.GeneratorParams(self.model)
        # min_length = max_length: the end-of-text token must not cut a case short.
        params.set_search_options(max_length=total, min_length=total, do_sample=False)

        def generate() -> Iterable[None]:
            generator = og.Generator(self.model, params)
            generator.append_tokens(ids)
            while not generator.is_done():
                generator.generate_next_token()
                yield None

        return _timed(generate, len(ids), clock)

    def describe(self) -> dict:
        import onnxruntime_genai as og

        return {**super().describe(), "model": str(self.folder.path), "library": f"onnxruntime-genai {og.__version__}"}


class LlamaCppTarget(Target):
    """llama.cpp in-process through llama-cpp-python, on a GGUF file (a reference, optional)."""

    kind = "llama.cpp"
    max_concurrency = 1  # one context: requests cannot overlap

    def __init__(self, gguf: str | Path, threads: int | None, context_length: int = 4096):
        self.path = Path(gguf)
        if not self.path.is_file():
            raise ModelNotFound(f"{self.path} is not a file; give --llama-cpp a .gguf model file.")
        self.threads = threads or os.cpu_count()
        self.label = f"llama.cpp t={self.threads}"
        self.weight_bytes = self.path.stat().st_size
        self.context_length = context_length
        self.pid = os.getpid()

    def load(self) -> float:
        try:
            from llama_cpp import Llama
        except ImportError as exc:
            raise SlmopsError("--llama-cpp needs llama-cpp-python: pip install 'slmops[bench]'.") from exc
        start = time.perf_counter()
        self.llm = Llama(
            model_path=str(self.path),
            n_ctx=self.context_length,
            n_threads=self.threads,
            n_threads_batch=self.threads,
            n_batch=512,
            verbose=False,
        )
        return time.perf_counter() - start

    def encode(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)

    def decode(self, ids: list[int]) -> str:
        return self.llm.detokenize(ids).decode("utf-8", errors="replace")

    def request(self, prompt: Prompt, max_tokens: int, clock: Clock = time.perf_counter) -> RequestRecord:
        ids = self.encode(prompt.text)[: prompt.tokens]
        self.llm.reset()  # no prompt cache between requests: every case pays its prefill
        # Greedy, and the loop (not the end-of-text token) decides the length.
        return _timed(lambda: self.llm.generate(ids, top_k=1, temp=0.0, reset=True), len(ids), clock, max_tokens)

    def describe(self) -> dict:
        import llama_cpp

        return {**super().describe(), "model": str(self.path), "library": f"llama-cpp-python {llama_cpp.__version__}"}


class RuntimeTarget(Target):
    """A cached model name or model folder run by the slmops runtime, in-process.

    It consumes the runtime's own token stream (``Model.stream_generate``), the one
    that `slmops model run` and `slmops serve` use, so it measures what users get.
    """

    kind = "slmops"

    def __init__(self, name_or_path: str, threads: int | None, named: bool = False, speculative: bool = True):
        self.name = name_or_path
        self.threads = threads
        self.speculative = speculative  # prompt-lookup drafts (greedy answers)
        self.named = named  # several models in one run: their labels carry their names
        self.label = f"slmops t={threads or 'auto'}"
        self.pid = os.getpid()

    def load(self) -> float:
        from slmops import runtime

        start = time.perf_counter()
        self.model = runtime.load(self.name, threads=self.threads)
        seconds = time.perf_counter() - start
        self.threads = self.model.threads
        self.label = f"slmops {self.model.name} t={self.threads}" if self.named else f"slmops t={self.threads}"
        self.context_length = self.model.context_length
        self.weight_bytes = onnx_weight_bytes(self.model.path)
        return seconds

    def encode(self, text: str) -> list[int]:
        return self.model.encode(text)

    def decode(self, ids: list[int]) -> str:
        return self.model.decode(ids)

    def request(self, prompt: Prompt, max_tokens: int, clock: Clock = time.perf_counter) -> RequestRecord:
        ids = self.encode(prompt.text)[: prompt.tokens]
        # Greedy; every response is one token, even when its text is still "".
        return _timed(
            lambda: self.model.stream_generate(
                ids, max_tokens=max_tokens, temperature=0.0, speculative=self.speculative
            ),
            len(ids),
            clock,
        )

    def describe(self) -> dict:
        import onnxruntime_genai as og

        return {
            **super().describe(),
            "model": str(self.model.path),
            "library": f"slmops runtime on onnxruntime-genai {og.__version__}",
        }


class UrlTarget(Target):
    """Any OpenAI-compatible server, streamed with httpx; each SSE chunk is timestamped."""

    kind = "url"

    def __init__(
        self,
        url: str,
        model: str | None = None,
        endpoint: str = "chat",
        pid: int | None = None,
        api_key: str | None = None,
        ignore_eos: bool = False,
        timeout: float = 300.0,
    ):
        if endpoint not in ("chat", "completions"):
            raise UsageError("--endpoint must be chat or completions.")
        self.base = url.rstrip("/").removesuffix("/v1")
        self.model, self.endpoint, self.ignore_eos, self.timeout = model, endpoint, ignore_eos, timeout
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.label = f"url {self.base}"
        self.pid = pid or local_server_pid(self.base)
        self._http: httpx.Client | None = None

    def _client(self):
        # One pooled client shared by every thread: a client per request would put
        # its setup (an SSL context) inside the measured time.
        if self._http is None:
            import httpx

            limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
            self._http = httpx.Client(timeout=self.timeout, headers=self.headers, limits=limits)
        return self._http

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None

    def load(self) -> float:
        start = time.perf_counter()
        try:
            response = self._client().get(f"{self.base}/v1/models")
            response.raise_for_status()
            models = [m["id"] for m in response.json().get("data", [])]
        except Exception as exc:
            raise SlmopsError(f"Cannot reach {self.base}/v1/models ({exc}); is the server running?") from exc
        if self.model is None:
            if not models:
                raise UsageError(f"{self.base} lists no model; name one with --model-name.")
            self.model = models[0]
        self.label = f"url {self.model}"
        return time.perf_counter() - start

    def body(self, text: str, max_tokens: int) -> dict:
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": max_tokens,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if self.endpoint == "chat":
            body["messages"] = [{"role": "user", "content": text}]
        else:
            body["prompt"] = text
        if self.ignore_eos:
            body["ignore_eos"] = True
        return body

    def request(self, prompt: Prompt, max_tokens: int, clock: Clock = time.perf_counter) -> RequestRecord:
        path = "/v1/chat/completions" if self.endpoint == "chat" else "/v1/completions"
        record = RequestRecord(start=clock(), prompt_tokens=prompt.tokens)
        usage = None
        try:
            with self._client().stream("POST", self.base + path, json=self.body(prompt.cut, max_tokens)) as response:
                if response.status_code != 200:
                    response.read()
                    raise SlmopsError(f"HTTP {response.status_code}: {response.text[:200]}")
                for line in response.iter_lines():
                    usage = read_sse_line(line, record, clock) or usage
        except Exception as exc:
            return _failed(record.start, prompt.tokens, exc)
        if usage:
            record.prompt_tokens = usage.get("prompt_tokens") or record.prompt_tokens
        record.finish(clock(), usage.get("completion_tokens") if usage else None)
        if not record.chunk_times:
            record.error = "the server streamed no token"
        return record

    def describe(self) -> dict:
        return {**super().describe(), "model": self.model, "url": self.base, "library": "remote server"}


def read_sse_line(line: str, record: RequestRecord, clock: Clock) -> dict | None:
    """Record one SSE line of an OpenAI stream; return its usage block if it has one."""
    if not line.startswith("data:"):
        return None
    data = line[5:].strip()
    if not data or data == "[DONE]":
        return None
    chunk = json.loads(data)
    if "error" in chunk:
        raise SlmopsError(str(chunk["error"]))
    for choice in chunk.get("choices") or []:
        piece = (choice.get("delta") or {}).get("content") or choice.get("text")
        if piece:
            record.add_chunk(clock())
    return chunk.get("usage")


def local_server_pid(base_url: str) -> int | None:
    """The pid listening on a loopback URL's port, to watch its memory and CPU."""
    from urllib.parse import urlparse

    import psutil

    parsed = urlparse(base_url)
    if parsed.hostname not in ("127.0.0.1", "localhost", "::1"):
        return None
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
                return conn.pid
    except (psutil.AccessDenied, OSError):
        return None
    return None
