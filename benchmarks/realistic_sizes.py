#!/usr/bin/env python3
"""slmops vs llama.cpp at realistic sizes: the same random weights, shaped like models users run.

    python benchmarks/realistic_sizes.py --llama-cpp LLAMA_CPP_TREE [--tiny] [--rounds 3]
        [--models qwen2.5-0.5b,llama-3.2-1b,gemma-3-1b] [--block-sizes 32,128] [--new-tokens 128]
        [--json out.json] [--markdown benchmarks/RESULTS.md] [--workdir DIR] [--keep] [--prepare-only]
    python benchmarks/realistic_sizes.py --from-json out.json --markdown benchmarks/RESULTS.md

A 135M model decodes at a speed set by its embedding and by per-token overhead; a 1B model by
how fast its weights stream from memory. So each model here has the published shapes of a real
checkpoint (its config.json as the hub has it: hidden and intermediate sizes, layers, heads,
KV heads, head_dim, vocabulary size, tied embeddings, rope and sliding-window settings) and
random weights (``from_config``: nothing is downloaded, and decode speed does not depend on
the weights' values). The tokenizer is SmolLM2's, taken from the GGUF slmops embeds, with its
special token ids; the vocabulary keeps the real model's size (llama.cpp's converter pads the
GGUF's vocabulary up to it with placeholder tokens, and the embedding and LM head have the real
shape), so the embedding and the LM head cost what they cost in the real model.

From each set of weights (saved as bf16 safetensors):

- slmops: ``slmops convert --precision int4`` at its default block size and at each --block-sizes;
- llama.cpp: its own ``convert_hf_to_gguf.py`` to an F16 GGUF, then ``llama-quantize`` to Q4_0
  and Q4_K_M.

Measured at 2 threads, at each context (a prompt of that many tokens, then --new-tokens tokens
generated greedily), in --rounds rounds; every round runs every contender of a model once, in a
shuffled order, each in its own process:

- slmops: a child process loads the folder with ``slmops.load`` (the load time), generates
  once briefly (warm-up), then once per context through ``Model.stream_generate``, the path
  every slmops command uses: TTFT, and decode tokens/s after the first token;
- llama.cpp: ``llama-bench`` decoding --new-tokens tokens at a depth of the context (``-p 0 -n
  N -d CONTEXT``), and its prompt processing of the context (``-p CONTEXT -n 0``, whose time is
  the TTFT), flash attention on and off (the faster of the two is llama.cpp's figure); the load
  time is llama-server's, from its start to its first healthy answer (``--no-warmup``, 2,048
  tokens of context).

Peak RSS: the kernel's high-water mark (``VmHWM`` in /proc/PID/status) of each child process,
read every 50 ms while it runs (llama.cpp maps its GGUF: the pages it touched count). Reported:
medians over the rounds, file sizes, and slmops's decode ÷ each llama.cpp quant and ÷ the faster
of them (the goal is ≥ 1.5×); the JSON also has each conversion's wall time (when it was made:
``--prepare-only`` makes them ahead, on a machine that may be busy). ``--markdown FILE`` writes the table as a section of FILE headed
with the CPU (benchmarks/RESULTS.md takes it): a rerun on the same CPU replaces its section and
keeps everything else in the file.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from runtime_vs_generator import llama_bench_command, load_slmops, run_slmops  # this folder's other scripts
from slmops.machine import cpu_summary, describe_cpu

THREADS = 2
TINY_LAYERS = 2
DEFAULT_BLOCK = 32  # slmops convert's default int4 block size
QUANTS = ("Q4_0", "Q4_K_M")
GOAL = 1.5  # slmops decode ÷ the faster llama.cpp quant
SECTION_START = "<!-- realistic sizes: {label} -->"
SECTION_END = "<!-- end realistic sizes -->"


@dataclass(frozen=True)
class RealModel:
    """A model users run, by the shapes of its published config.json.

    Attributes:
        name: a short name for tables, e.g. "qwen2.5-0.5b".
        checkpoint: the hub checkpoint the shapes are from.
        parameters: its published parameter count (a tied embedding counted once).
        config: its config.json, as published, less the special token ids.
    """

    name: str
    checkpoint: str
    parameters: int
    config: dict

    def config_json(self, special_tokens: dict, layers: int | None = None) -> dict:
        """config.json for the random model: the published one with these special token ids,
        cut to ``layers`` layers if given."""
        config = {**self.config, **special_tokens, "torch_dtype": "bfloat16"}
        if layers:
            config["num_hidden_layers"] = layers
        return config


MODELS = (
    RealModel(
        "qwen2.5-0.5b",
        "Qwen/Qwen2.5-0.5B-Instruct",
        494_032_768,
        {
            "architectures": ["Qwen2ForCausalLM"],
            "model_type": "qwen2",
            "hidden_act": "silu",
            "hidden_size": 896,
            "intermediate_size": 4864,
            "num_hidden_layers": 24,
            "num_attention_heads": 14,
            "num_key_value_heads": 2,
            "max_position_embeddings": 32768,
            "max_window_layers": 21,
            "sliding_window": 32768,
            "use_sliding_window": False,
            "rms_norm_eps": 1e-06,
            "rope_theta": 1000000.0,
            "tie_word_embeddings": True,
            "vocab_size": 151936,
        },
    ),
    RealModel(
        "llama-3.2-1b",
        "meta-llama/Llama-3.2-1B-Instruct",
        1_235_814_400,
        {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "attention_bias": False,
            "head_dim": 64,
            "hidden_act": "silu",
            "hidden_size": 2048,
            "intermediate_size": 8192,
            "num_hidden_layers": 16,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "max_position_embeddings": 131072,
            "mlp_bias": False,
            "rms_norm_eps": 1e-05,
            "rope_scaling": {
                "factor": 32.0,
                "high_freq_factor": 4.0,
                "low_freq_factor": 1.0,
                "original_max_position_embeddings": 8192,
                "rope_type": "llama3",
            },
            "rope_theta": 500000.0,
            "tie_word_embeddings": True,
            "vocab_size": 128256,
        },
    ),
    RealModel(
        "gemma-3-1b",
        "google/gemma-3-1b-it",
        999_885_952,
        {
            "architectures": ["Gemma3ForCausalLM"],
            "model_type": "gemma3_text",
            "attention_bias": False,
            "attn_logit_softcapping": None,
            "final_logit_softcapping": None,
            "head_dim": 256,
            "hidden_activation": "gelu_pytorch_tanh",
            "hidden_size": 1152,
            "intermediate_size": 6912,
            "num_hidden_layers": 26,
            "num_attention_heads": 4,
            "num_key_value_heads": 1,
            "max_position_embeddings": 32768,
            "query_pre_attn_scalar": 256,
            "rms_norm_eps": 1e-06,
            "rope_local_base_freq": 10000,
            "rope_scaling": None,
            "rope_theta": 1000000,
            "sliding_window": 512,
            "sliding_window_pattern": 6,
            "vocab_size": 262144,
        },
    ),
)


@dataclass
class Contender:
    """One converted model to measure: an slmops folder or a llama.cpp GGUF."""

    label: str  # e.g. "slmops int4 b32", "llama.cpp Q4_K_M"
    kind: str  # "slmops" or "llama.cpp"
    path: Path
    conversion_s: float
    rounds: list[dict] = field(default_factory=list)

    def size_mib(self) -> float:
        files = self.path.iterdir() if self.path.is_dir() else [self.path]
        return sum(f.stat().st_size for f in files if f.suffix in (".onnx", ".data", ".gguf")) / 2**20


@dataclass
class Tools:
    """llama.cpp's converter and binaries."""

    converter: Path
    quantize: Path
    bench: Path
    server: Path | None


# --- the random models and their conversions ------------------------------------------------


def hf_config(config_json: dict):
    """A transformers config from a config.json dictionary."""
    from transformers import AutoConfig

    values = {key: value for key, value in config_json.items() if key != "model_type"}
    return AutoConfig.for_model(config_json["model_type"], **values)


def parameter_count(config_json: dict) -> int:
    """Parameters of the model a config.json describes (tied weights once), without allocating them."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        network = AutoModelForCausalLM.from_config(hf_config(config_json))
    return sum(parameter.numel() for parameter in network.parameters())


def smollm2_tokenizer(folder: Path) -> dict:
    """SmolLM2's tokenizer files from the embedded GGUF into ``folder``; returns its special token ids."""
    from slmops.convert import embedded_model
    from slmops.convert.gguf_source import hf_config as gguf_config
    from slmops.convert.gguf_source import read_gguf, write_tokenizer

    gguf_file = read_gguf(embedded_model())
    write_tokenizer(gguf_file, folder)
    config = gguf_config(gguf_file)
    return {key: config[key] for key in ("bos_token_id", "eos_token_id", "pad_token_id") if key in config}


def build_hf_folder(config_json: dict, tokenizer: Path, folder: Path) -> None:
    """Random bf16 weights in the shapes of ``config_json``, saved with it and the tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    network = AutoModelForCausalLM.from_config(hf_config(config_json), dtype=torch.bfloat16)
    network.save_pretrained(folder)
    del network
    # The config as the hub has it, rather than as this transformers version would rewrite it.
    (folder / "config.json").write_text(json.dumps(config_json, indent=2) + "\n", encoding="utf-8")
    tokens = {key: config_json[key] for key in ("bos_token_id", "eos_token_id", "pad_token_id") if key in config_json}
    (folder / "generation_config.json").write_text(json.dumps(tokens, indent=2) + "\n", encoding="utf-8")
    for item in tokenizer.iterdir():
        shutil.copy(item, folder / item.name)
    pad_vocabulary(folder / "tokenizer.json", config_json["vocab_size"])


def pad_vocabulary(path: Path, size: int) -> None:
    """Placeholder tokens up to ``size`` in a tokenizer.json's vocabulary: llama.cpp's Gemma 3
    converter cuts the embedding down to the tokenizer's vocabulary, which would shrink it and
    the LM head from the real model's 262,144 rows to SmolLM2's 49,152."""
    tokenizer = json.loads(path.read_text(encoding="utf-8"))
    vocab = tokenizer["model"]["vocab"]
    for token_id in range(max(vocab.values()) + 1, size):
        vocab[f"[PAD{token_id}]"] = token_id
    path.write_text(json.dumps(tokenizer, ensure_ascii=False), encoding="utf-8")


class Workdir:
    """The folder of models and conversions; a step already done (by an earlier run) is not redone."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.record = path / "prepared.json"
        path.mkdir(parents=True, exist_ok=True)
        self.done: dict[str, float] = json.loads(self.record.read_text()) if self.record.exists() else {}

    def make(self, name: str, step) -> tuple[Path, float]:
        """``step(partial_path)`` makes ``name``; returns its path and the seconds it took (then or before)."""
        final = self.path / name
        if name in self.done and final.exists():
            return final, self.done[name]
        partial = self.path / f"{name}.partial"
        _remove(partial)
        start = time.perf_counter()
        step(partial)
        self.done[name] = time.perf_counter() - start
        _remove(final)
        partial.rename(final)
        self.record.write_text(json.dumps(self.done, indent=2), encoding="utf-8")
        return final, self.done[name]


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def run_quietly(command: list, env: dict | None = None) -> None:
    """Run a tool; on failure, stop with its last lines of output."""
    result = subprocess.run([str(part) for part in command], capture_output=True, text=True, env=env)
    if result.returncode:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
        sys.exit(f"{' '.join(str(part) for part in command[:4])[:200]} failed:\n{tail}")


def slmops_convert(hf: Path, block: int, output: Path) -> None:
    command = [sys.executable, "-m", "slmops", "convert", hf, "-o", output, "--precision", "int4"]
    run_quietly([*command, "--block-size", block, "--log-level", "0"])


# transformers 5 ignores the tokenizer class a qwen2 folder's tokenizer_config.json names and
# rebuilds Qwen's own pre-tokenizer around the vocabulary; on SmolLM2's vocabulary llama.cpp's
# converter then does not recognise the tokenizer. With that override off, the tokenizer is read
# as tokenizer.json has it, as transformers 4 read it.
RUN_CONVERTER = (
    "import os, runpy, sys\n"
    "from transformers.models.auto import tokenization_auto\n"
    "getattr(tokenization_auto, 'MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS', set()).discard('qwen2')\n"
    "sys.argv = sys.argv[1:]\n"
    "sys.path.insert(0, os.path.dirname(sys.argv[0]))\n"
    "runpy.run_path(sys.argv[0], run_name='__main__')\n"
)


def llama_cpp_convert(tools: Tools, hf: Path, output: Path) -> None:
    """llama.cpp's converter, with the gguf-py package beside it (the version it was written for)."""
    paths = [str(tools.converter.parent / "gguf-py"), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path for path in paths if path)}
    command = [sys.executable, "-c", RUN_CONVERTER, tools.converter, hf, "--outtype", "f16", "--outfile", output]
    run_quietly(command, env)


def prepare(model: RealModel, work: Workdir, tools: Tools, tokens: dict, args) -> list[Contender]:
    """The random model's folder and every conversion of it (each made once per work folder)."""
    config = model.config_json(tokens, TINY_LAYERS if args.tiny else None)
    prefix = f"{model.name}{'-tiny' if args.tiny else ''}"
    log = lambda text: print(f"{prefix}: {text}", file=sys.stderr, flush=True)  # noqa: E731
    log("building the random bf16 model")
    hf, _ = work.make(f"{prefix}-hf", lambda path: build_hf_folder(config, work.path / "tokenizer", path))
    contenders = []
    for block in args.block_sizes:
        log(f"slmops convert int4, block {block}")
        folder, seconds = work.make(
            f"{prefix}-int4-b{block}", lambda path, block=block: slmops_convert(hf, block, path)
        )
        contenders.append(Contender(f"slmops int4 b{block}", "slmops", folder, seconds))
    log("llama.cpp convert_hf_to_gguf.py to F16")
    f16, f16_seconds = work.make(f"{prefix}-f16.gguf", lambda path: llama_cpp_convert(tools, hf, path))
    for quant in QUANTS:
        log(f"llama-quantize {quant}")
        command = lambda path, quant=quant: run_quietly([tools.quantize, f16, path, quant, os.cpu_count() or 1])  # noqa: E731
        gguf, seconds = work.make(f"{prefix}-{quant}.gguf", command)
        contenders.append(Contender(f"llama.cpp {quant}", "llama.cpp", gguf, f16_seconds + seconds))
    return contenders


# --- one measurement of one contender, in its own process ------------------------------------


def run_watched(command: list, env: dict | None = None) -> tuple[str, float]:
    """Run ``command`` to its end; its stdout, and its peak resident memory in MiB (the kernel's
    high-water mark of the child, read while it runs: a finished process has none left to read)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen([str(part) for part in command], stdout=out, stderr=err, text=True, env=env)
        peak_kb = 0
        while process.poll() is None:
            peak_kb = max(peak_kb, high_water_kb(process.pid))
            time.sleep(0.05)
        out.seek(0)
        err.seek(0)
        if process.returncode:
            tail = "\n".join(err.read().strip().splitlines()[-10:])
            raise RuntimeError(f"{Path(str(command[0])).name} exited with {process.returncode}:\n{tail}")
        return out.read(), peak_kb / 1024


def high_water_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            return next((int(line.split()[1]) for line in status if line.startswith("VmHWM:")), 0)
    except OSError:  # the process ended between two reads
        return 0


def slmops_child(folder: str, contexts: list[int], new_tokens: int) -> dict:
    """In the child process: load, warm up, then one generation per context (with ``--slmops-child``)."""
    from slmops.bench.prompts import PromptSource, shipped_paragraphs

    model, load_s = load_slmops(folder, THREADS)
    ids = model.encode(PromptSource(shipped_paragraphs()).text(max(contexts)))
    run_slmops(model, ids[:16], 8)  # first allocations, first kernels
    cases = {}
    for context in contexts:
        ttft, decode, tokens = run_slmops(model, ids[:context], new_tokens)
        cases[str(context)] = {"decode_tps": {"": decode}, "ttft_ms": {"": ttft * 1000}, "tokens": tokens}
    return {"load_s": load_s, "cases": cases}


def measure_slmops(contender: Contender, args) -> dict:
    contexts = ",".join(map(str, args.contexts))
    command = [sys.executable, __file__, "--slmops-child", contender.path, "--contexts", contexts]
    stdout, peak = run_watched([*command, "--new-tokens", args.new_tokens])
    return {**json.loads(stdout.splitlines()[-1]), "peak_rss_mb": peak}


def measure_llama_cpp(contender: Contender, tools: Tools, args) -> dict:
    contexts = ",".join(map(str, args.contexts))
    flash = ("-fa", "on,off")
    # warmup=False: the depth's prefill before the timed generation warms the kernels up.
    decode = ("-p", "0", "-n", str(args.new_tokens), "-d", contexts, *flash)
    decoded, decode_peak = run_watched(
        llama_bench_command(str(tools.bench), contender.path, THREADS, *decode, warmup=False)
    )
    prefill = ("-p", contexts, "-n", "0", *flash)
    prefilled, prefill_peak = run_watched(llama_bench_command(str(tools.bench), contender.path, THREADS, *prefill))
    cases: dict[str, dict] = {
        str(c): {"decode_tps": {}, "ttft_ms": {}, "tokens": args.new_tokens} for c in args.contexts
    }
    for row in map(json.loads, (decoded + prefilled).splitlines()):
        setting = f"fa-{'on' if row['flash_attn'] in (1, True, 'on') else 'off'}"
        if row["n_gen"]:
            cases[str(row["n_depth"])]["decode_tps"][setting] = row["avg_ts"]
        else:
            cases[str(row["n_prompt"])]["ttft_ms"][setting] = row["avg_ns"] / 1e6
    load_s = llama_server_load_s(tools.server, contender.path) if tools.server else None
    return {"load_s": load_s, "peak_rss_mb": max(decode_peak, prefill_peak), "cases": cases}


def llama_server_load_s(server: Path, gguf: Path) -> float:
    """Seconds from starting llama-server on ``gguf`` to its first healthy answer."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [server, "-m", gguf, "-t", THREADS, "-c", 2048, "--no-warmup", "--host", "127.0.0.1", "--port", port]
    start = time.perf_counter()
    process = subprocess.Popen([str(part) for part in command], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not _healthy(f"http://127.0.0.1:{port}/health"):
            if process.poll() is not None:
                raise RuntimeError(f"llama-server exited with {process.returncode} loading {gguf}")
            time.sleep(0.02)
        return time.perf_counter() - start
    finally:
        process.terminate()
        process.wait()


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as answer:
            return answer.status == 200
    except OSError:  # not listening yet, or 503 while loading
        return False


def measure(models: dict[str, list[Contender]], tools: Tools, args) -> None:
    """Every round: every model's contenders once each, in a fresh random order."""
    for round_index in range(args.rounds):
        for name, contenders in models.items():
            order = random.Random(round_index).sample(contenders, len(contenders))
            for contender in order:
                if contender.kind == "slmops":
                    result = measure_slmops(contender, args)
                else:
                    result = measure_llama_cpp(contender, tools, args)
                contender.rounds.append(result)
                decodes = {c: max(case["decode_tps"].values()) for c, case in result["cases"].items()}
                figures = ", ".join(f"{rate:.1f} tok/s at {c}" for c, rate in decodes.items())
                print(f"round {round_index + 1} {name} {contender.label}: {figures}", file=sys.stderr, flush=True)


# --- medians, ratios, tables ------------------------------------------------------------------


def best_setting(values_by_setting: dict[str, list[float]], higher_is_better: bool) -> tuple[str, float]:
    """The setting whose median is best, and that median."""
    medians = {setting: statistics.median(values) for setting, values in values_by_setting.items()}
    pick = max if higher_is_better else min
    setting = pick(medians, key=lambda name: medians[name])
    return setting, medians[setting]


def summarize(rounds: list[dict]) -> dict:
    """Medians over the rounds of one contender; per context, its best setting's decode and TTFT."""
    loads = [result["load_s"] for result in rounds if result["load_s"] is not None]
    cases = {}
    for context in rounds[0]["cases"]:
        decode, ttft = {}, {}
        for result in rounds:
            case = result["cases"][context]
            for setting, value in case["decode_tps"].items():
                decode.setdefault(setting, []).append(value)
            for setting, value in case["ttft_ms"].items():
                ttft.setdefault(setting, []).append(value)
        decode_setting, decode_tps = best_setting(decode, higher_is_better=True)
        ttft_setting, ttft_ms = best_setting(ttft, higher_is_better=False)
        cases[context] = {
            "decode_tps": decode_tps,
            "decode_setting": decode_setting,
            "ttft_ms": ttft_ms,
            "ttft_setting": ttft_setting,
            "tokens": min(result["cases"][context]["tokens"] for result in rounds),
        }
    return {
        "load_s": statistics.median(loads) if loads else None,
        "peak_rss_mb": statistics.median(result["peak_rss_mb"] for result in rounds),
        "cases": cases,
    }


def ratios(summaries: dict[str, dict]) -> dict:
    """Per slmops contender and context: its decode ÷ each llama.cpp quant's and ÷ the faster one's,
    and its TTFT ÷ the quicker llama.cpp TTFT (below 1, slmops answers sooner)."""
    ours = {label: s for label, s in summaries.items() if label.startswith("slmops")}
    theirs = {label: s for label, s in summaries.items() if label.startswith("llama.cpp")}
    result: dict[str, dict] = {}
    for label, summary in ours.items():
        for context, case in summary["cases"].items():
            decodes = {other: s["cases"][context]["decode_tps"] for other, s in theirs.items()}
            faster = max(decodes, key=lambda other: decodes[other])
            quicker = min(s["cases"][context]["ttft_ms"] for s in theirs.values())
            result.setdefault(label, {})[context] = {
                **{f"decode_vs_{other}": case["decode_tps"] / rate for other, rate in decodes.items()},
                "faster_llama_cpp": faster,
                "decode_vs_faster": case["decode_tps"] / decodes[faster],
                "ttft_vs_quicker": case["ttft_ms"] / quicker,
            }
    return result


def document(models: dict[str, list[Contender]], parameters: dict[str, int], args) -> dict:
    out: dict = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu_info": describe_cpu().to_json(),
        "settings": {
            "threads": THREADS,
            "rounds": args.rounds,
            "contexts": args.contexts,
            "new_tokens": args.new_tokens,
            "tiny": args.tiny,
        },
        "models": {},
    }
    for name, contenders in models.items():
        summaries = {c.label: summarize(c.rounds) for c in contenders}
        for contender in contenders:
            summaries[contender.label].update(size_mib=contender.size_mib(), conversion_s=contender.conversion_s)
        out["models"][name] = {
            "parameters": parameters[name],
            "contenders": summaries,
            "ratios": ratios(summaries),
        }
    return out


def _f(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def contender_rows(doc: dict) -> list[list[str]]:
    rows = []
    for name, model in doc["models"].items():
        for label, s in model["contenders"].items():
            figures = []
            for case in s["cases"].values():
                short = "" if case["tokens"] >= doc["settings"]["new_tokens"] else f" ({case['tokens']} tok)"
                figures += [f"{_f(case['decode_tps'])}{short}", _f(case["ttft_ms"], 0)]
            sizes = [_f(s["size_mib"], 0), _f(s["load_s"], 2), _f(s["peak_rss_mb"], 0)]
            rows.append([name, f"{model['parameters'] / 1e6:,.0f}M", label, *sizes, *figures])
    return rows


def ratio_rows(doc: dict) -> list[list[str]]:
    rows = []
    for name, model in doc["models"].items():
        for label, by_context in model["ratios"].items():
            for context, r in by_context.items():
                versus = [f"{r[f'decode_vs_llama.cpp {quant}']:.2f}" for quant in QUANTS]
                faster = r["faster_llama_cpp"].removeprefix("llama.cpp ")
                goal = "yes" if r["decode_vs_faster"] >= GOAL else "no"
                vs_faster, ttft = f"{r['decode_vs_faster']:.2f} ({faster})", f"{r['ttft_vs_quicker']:.2f}"
                rows.append([name, label, context, *versus, vs_faster, ttft, goal])
    return rows


def headers(doc: dict) -> tuple[list[str], list[str]]:
    per_context = []
    for context in doc["settings"]["contexts"]:
        per_context += [f"decode tok/s @{context}", f"TTFT ms @{context}"]
    contenders = ["model", "params", "contender", "file MiB", "load s", "peak RSS MiB", *per_context]
    versus = [f"÷ {quant}" for quant in QUANTS]
    ratio = ["model", "slmops", "context", *versus, "÷ faster", "TTFT ÷ quicker", "decode ≥ 1.5× faster?"]
    return contenders, ratio


def text_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in [header, *rows]]
    return "\n".join(line.rstrip() for line in lines)


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


def settings_line(doc: dict) -> str:
    s = doc["settings"]
    layers = f"{TINY_LAYERS}-layer versions of the published shapes" if s["tiny"] else "the published shapes"
    return (
        f"{s['threads']} threads, {s['rounds']} interleaved rounds, medians; a prompt of "
        f"{' or '.join(map(str, s['contexts']))} tokens, then {s['new_tokens']} tokens generated; "
        f"random weights in {layers}."
    )


def checkpoints(doc: dict) -> str:
    names = {model.name: model.checkpoint for model in MODELS}
    return ", ".join(f"`{names.get(name, name)}`" for name in doc["models"])


def markdown_section(doc: dict) -> list[str]:
    label = doc["cpu_info"]["label"]
    contenders, ratio = headers(doc)
    return [
        SECTION_START.format(label=label),
        f"## Realistic sizes: {label}",
        "",
        f"Written by `benchmarks/realistic_sizes.py` on {doc['date'][:10]}. CPU: {cpu_summary(doc['cpu_info'])}.",
        "",
        f"{settings_line(doc)} Shapes from the published config.json of {checkpoints(doc)}, with SmolLM2's "
        "tokenizer padded to each vocabulary. The same bf16 weights converted by `slmops convert --precision "
        "int4` (block size bN) and by llama.cpp's `convert_hf_to_gguf.py` + `llama-quantize`. slmops runs "
        "`Model.stream_generate` in a fresh process, its load time is `slmops.load()`'s. llama.cpp's figures "
        "are `llama-bench`'s (`-p 0 -n N -d CONTEXT` for decode, `-p CONTEXT` for TTFT), flash attention "
        "on or off, whichever was faster; its load time is llama-server's, start to healthy. Peak RSS is "
        "each process's VmHWM; llama.cpp's includes the pages of the GGUF it maps.",
        "",
        *markdown_table(contenders, contender_rows(doc)),
        "",
        "slmops decode tokens/s ÷ llama.cpp's (the goal: ≥ 1.5× the faster quant); TTFT ÷ the quicker "
        "llama.cpp TTFT (below 1, slmops answers sooner).",
        "",
        *markdown_table(ratio, ratio_rows(doc)),
        SECTION_END,
    ]


def merge_section(existing: str, label: str, section: list[str]) -> str:
    """``existing`` with this CPU's realistic-size section replaced, or added at the end."""
    block = "\n".join(section) + "\n"
    start = existing.find(SECTION_START.format(label=label))
    if start < 0:
        return existing.rstrip("\n") + "\n\n" + block if existing.strip() else block
    end = existing.index(SECTION_END, start) + len(SECTION_END) + 1
    return existing[:start] + block + existing[end:]


def report(doc: dict) -> None:
    contenders, ratio = headers(doc)
    print(settings_line(doc))
    print(text_table(contenders, contender_rows(doc)))
    print()
    print("slmops decode ÷ llama.cpp (goal ≥ 1.5× the faster quant):")
    print(text_table(ratio, ratio_rows(doc)))


# --- the command line ---------------------------------------------------------------------------


def find_tools(args) -> Tools:
    tree = Path(args.llama_cpp) if args.llama_cpp else None
    bin_dir = tree / "build" / "bin" if tree else None

    def pick(given: str | None, name: str, required: bool = True) -> Path | None:
        path = given or (str(bin_dir / name) if bin_dir else shutil.which(name))
        if path and Path(path).exists():
            return Path(path)
        if required:
            sys.exit(f"llama.cpp's {name} not found: give --{name.removeprefix('llama-')} PATH or --llama-cpp TREE.")
        return None

    converter = pick(args.converter or (str(tree / "convert_hf_to_gguf.py") if tree else None), "convert_hf_to_gguf.py")
    return Tools(
        converter=converter,
        quantize=pick(args.quantize, "llama-quantize"),
        bench=pick(args.bench, "llama-bench"),
        server=pick(args.server, "llama-server", required=False),
    )


def parse_args() -> argparse.Namespace:
    numbers = lambda text: [int(n) for n in text.split(",")]  # noqa: E731
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llama-cpp", help="a built llama.cpp source tree (convert_hf_to_gguf.py, build/bin/)")
    parser.add_argument("--converter", help="llama.cpp's convert_hf_to_gguf.py (gguf-py beside it)")
    parser.add_argument("--quantize", help="the llama-quantize binary")
    parser.add_argument("--bench", help="the llama-bench binary")
    parser.add_argument("--server", help="the llama-server binary (for llama.cpp's load time; optional)")
    parser.add_argument("--models", default=",".join(m.name for m in MODELS), help="which, comma-separated")
    parser.add_argument("--tiny", action="store_true", help=f"{TINY_LAYERS}-layer versions: a quick end-to-end run")
    parser.add_argument("--block-sizes", type=numbers, default=[DEFAULT_BLOCK, 128], help="slmops int4 blocks")
    parser.add_argument("--contexts", type=numbers, default=[128, 1024], help="prompt tokens, e.g. 128,1024")
    parser.add_argument("--new-tokens", type=int, default=128, help="tokens generated after each prompt")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "slmops-realistic-sizes"))
    parser.add_argument("--keep", action="store_true", help="keep the work folder (models and conversions)")
    parser.add_argument("--prepare-only", action="store_true", help="build and convert, measure nothing")
    parser.add_argument("--json", help="write the results as JSON")
    parser.add_argument("--markdown", help="write the section into this file (e.g. benchmarks/RESULTS.md)")
    parser.add_argument("--from-json", help="print and write the tables of a saved --json result; measure nothing")
    parser.add_argument("--slmops-child", help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.slmops_child:
        print(json.dumps(slmops_child(args.slmops_child, args.contexts, args.new_tokens)))
        return
    if args.from_json:
        write_outputs(json.loads(Path(args.from_json).read_text(encoding="utf-8")), args)
        return
    print(f"CPU: {describe_cpu().summary()}", file=sys.stderr, flush=True)
    chosen = [m for m in MODELS if m.name in args.models.split(",")]
    if not chosen:
        sys.exit(f"No model named {args.models}; known: {', '.join(m.name for m in MODELS)}.")
    tools = find_tools(args)
    work = Workdir(Path(args.workdir))
    tokenizer = work.path / "tokenizer"
    tokenizer.mkdir(exist_ok=True)
    tokens = smollm2_tokenizer(tokenizer)
    models = {m.name: prepare(m, work, tools, tokens, args) for m in chosen}
    if args.prepare_only:
        print(f"Prepared in {work.path}.")
        return
    parameters = {m.name: parameter_count(m.config_json(tokens, TINY_LAYERS if args.tiny else None)) for m in chosen}
    measure(models, tools, args)
    write_outputs(document(models, parameters, args), args)
    if not args.keep:
        shutil.rmtree(work.path)


def write_outputs(doc: dict, args) -> None:
    print(f"CPU: {cpu_summary(doc['cpu_info'])}")
    report(doc)
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    if args.markdown:
        path = Path(args.markdown)
        existing = path.read_text(encoding="utf-8") if path.exists() else ""
        path.write_text(merge_section(existing, doc["cpu_info"]["label"], markdown_section(doc)), encoding="utf-8")


if __name__ == "__main__":
    main()
