#!/usr/bin/env python3
"""Prompt-lookup speculative decoding against the plain loop, on tasks that copy and on open chat.

    python benchmarks/speculative.py [MODEL] [--threads 2] [--rounds 3] [--max-tokens 400]
        [--tasks copy,rewrite,extract,code,chat-story,chat-explain] [--json out.json]
        [--llama-lookup PATH [--gguf PATH] [--llama-threads N] [--llama-draft 12]]

MODEL is a cached model name or a model folder; without it, the SmolLM2 GGUF slmops embeds
is converted to INT4 once into --workdir. The same loaded model answers every task twice
per round, speculative (the default) and with ``speculative=False``, in an order shuffled
each round, so load from other processes hits both alike. Both are greedy (temperature 0);
the grounded tasks run without a repetition penalty (it would push a copy away from its
source), the open chats with the model's own (SmolLM2's 1.1: without it, a greedy 135M model
soon repeats itself, which would make its answers copy after all).

Tasks (defined in ``slmops.bench.scenarios``, which `slmops bench --scenario grounded|chat` runs
too, with fewer rounds and shorter answers): four grounded in their input (copy a passage; rewrite a ~300-word passage with its
spelling mistakes corrected; extract 8 fields of a document to JSON; change one function of
a 60-line Python file and give the whole file back) and two open chats. Reported per task:
median decode tokens/s (after the first token, as ``decode_tokens_per_s`` counts) of each
mode, their ratio, the same per CPU-second of the process (steadier on a shared machine), tokens drafted and accepted, and how many leading tokens the two answers
share (on INT4 kernels the many-position forward may round differently from the
one-position one, so a near tie can flip). Targets: ≥ 1.8× on the grounded tasks, ≥ 0.97× on
open chat.

With ``--llama-lookup`` (llama.cpp's ``llama-lookup`` example, built from its sources; nothing of
it comes with slmops), llama.cpp answers the same rendered prompts from the GGUF (by default the
embedded SmolLM2 Q4_1 the INT4 model is converted from) in the same shuffled rounds, with its
n-gram lookup (``--spec-draft-n-max``) and without it (0), greedy, with the same repetition
penalty; its own "decoded ... t/s" line is its decode speed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import slmops
import slmops.runtime
from slmops.bench.scenario_decode import shuffled_rounds
from slmops.bench.scenarios import TARGETS, TASKS
from slmops.machine import describe_cpu
from slmops.runtime.model import common_prefix


def model_folder(name: str | None, workdir: Path) -> str:
    if name:
        return name
    from slmops.convert import convert, embedded_model

    folder = workdir / "smollm2-135m-instruct-int4"
    if not (folder / "genai_config.json").exists():
        convert(embedded_model(), folder, precision="int4")
    return str(folder)


def answer(model, task: str, max_tokens: int, speculative: bool) -> dict:
    chosen = TASKS[task]
    stream = model.stream_chat(
        [{"role": "user", "content": chosen.prompt}],
        temperature=0.0,
        repetition_penalty=1.0 if chosen.kind == "grounded" else None,
        max_tokens=max_tokens,
        speculative=speculative,
        guidance=chosen.guidance,
    )
    # CPU seconds of this process (every onnxruntime thread) from the first token to the last: less
    # swayed than wall time by other processes on a shared machine.
    cpu, responses = [], []
    for response in stream:
        responses.append(response)
        cpu.append(time.process_time())
    result = slmops.runtime.collect(responses)
    cpu_s = cpu[-1] - cpu[0]
    return {
        "decode_tokens_per_s": result.decode_tokens_per_s,
        "decode_tokens_per_cpu_s": (len(responses) - 1) / cpu_s if cpu_s > 0 else 0.0,
        "ttft_s": result.ttft_s,
        "completion_tokens": result.completion_tokens,
        "drafted_tokens": result.drafted_tokens,
        "accepted_tokens": result.accepted_tokens,
        "tokens": result.tokens,
    }


@dataclass
class LlamaLookup:
    """llama.cpp's ``llama-lookup`` binary, the GGUF it reads and how it runs."""

    binary: str
    gguf: Path
    threads: int
    draft: int

    def answer(self, model, task: str, max_tokens: int, lookup: bool) -> dict:
        kind, prompt, _ = TASKS[task]  # llama-lookup takes no JSON schema: a schema's task runs without it
        text = model.render([{"role": "user", "content": prompt}])
        penalty = 1.0 if kind == "grounded" else model.defaults.repetition_penalty
        command = [self.binary, "-m", str(self.gguf), "-p", text, "-n", str(max_tokens), "-t", str(self.threads)]
        command += [
            "--temp",
            "0",
            "--repeat-penalty",
            str(penalty),
            "--spec-draft-n-max",
            str(self.draft if lookup else 0),
        ]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        log = done.stderr
        decoded = re.search(r"decoded\s+(\d+) tokens in\s+([\d.]+) seconds, speed:\s+([\d.]+) t/s", log)
        if done.returncode or decoded is None:
            raise SystemExit(f"llama-lookup failed ({done.returncode}): {log[-500:]}")
        return {
            "decode_tokens_per_s": float(decoded.group(3)),
            "completion_tokens": int(decoded.group(1)),
            "drafted_tokens": _count(log, "n_drafted"),
            "accepted_tokens": _count(log, "n_accept"),
        }


def _count(log: str, name: str) -> int:
    found = re.search(rf"{name}\s*=\s*(\d+)", log)
    return int(found.group(1)) if found else 0


def measure(model, tasks: list[str], rounds: int, max_tokens: int, llama: LlamaLookup | None = None) -> dict:
    modes = ("speculative", "plain", *(("llama-lookup", "llama-plain") if llama else ()))
    runs: dict = {task: {mode: [] for mode in modes} for task in tasks}
    answer(model, "chat-story", 8, True)  # warm-up
    for number, task, mode in shuffled_rounds(tasks, modes, rounds):
        if mode.startswith("llama") and llama is not None:
            run = llama.answer(model, task, max_tokens, mode == "llama-lookup")
        else:
            run = answer(model, task, max_tokens, mode == "speculative")
        runs[task][mode].append(run)
        print(
            f"round {number} {task:13} {mode:12} {run['decode_tokens_per_s']:7.1f} tok/s "
            f"{run.get('decode_tokens_per_cpu_s', 0.0):7.1f} tok/CPU-s "
            f"{run['completion_tokens']:4d} tokens, accepted {run['accepted_tokens']}/{run['drafted_tokens']}",
            file=sys.stderr,
        )
    return runs


def summarize(runs: dict) -> dict:
    summary = {}
    for task, modes in runs.items():
        speeds = {mode: statistics.median(run["decode_tokens_per_s"] for run in items) for mode, items in modes.items()}
        per_cpu = {
            mode: statistics.median(run["decode_tokens_per_cpu_s"] for run in items)
            for mode, items in modes.items()
            if not mode.startswith("llama")
        }
        spec, plain = modes["speculative"][0], modes["plain"][0]
        kind = TASKS[task][0]
        ratio = speeds["speculative"] / speeds["plain"] if speeds["plain"] else None
        summary[task] = {
            "kind": kind,
            "decode_tokens_per_s": speeds,
            "ratio": ratio,
            "decode_tokens_per_cpu_s": per_cpu,
            "cpu_ratio": per_cpu["speculative"] / per_cpu["plain"] if per_cpu["plain"] else None,
            "target": TARGETS[kind],
            "met": ratio is not None and ratio >= TARGETS[kind],
            "completion_tokens": {"speculative": spec["completion_tokens"], "plain": plain["completion_tokens"]},
            "drafted_tokens": spec["drafted_tokens"],
            "accepted_tokens": spec["accepted_tokens"],
            "shared_leading_tokens": common_prefix(spec["tokens"], plain["tokens"]),
            "rounds": {mode: [run["decode_tokens_per_s"] for run in items] for mode, items in modes.items()},
        }
        if "llama-lookup" in modes:
            lookup = modes["llama-lookup"][0]
            summary[task]["llama"] = {
                "ratio": speeds["llama-lookup"] / speeds["llama-plain"] if speeds["llama-plain"] else None,
                "drafted_tokens": lookup["drafted_tokens"],
                "accepted_tokens": lookup["accepted_tokens"],
            }
    return summary


def table(summary: dict) -> str:
    lines = [
        "| task | kind | plain tok/s | speculative tok/s | ratio | target | ratio per CPU-s | accepted/drafted "
        "| tokens | same first |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for task, row in summary.items():
        speeds = row["decode_tokens_per_s"]
        lines.append(
            f"| {task} | {row['kind']} | {speeds['plain']:.1f} | {speeds['speculative']:.1f} | "
            f"{row['ratio']:.2f}× | ≥ {row['target']}× | {row['cpu_ratio']:.2f}× | "
            f"{row['accepted_tokens']}/{row['drafted_tokens']} | "
            f"{row['completion_tokens']['speculative']} | {row['shared_leading_tokens']} |"
        )
    if any("llama" in row for row in summary.values()):
        lines += [
            "",
            "| task | llama.cpp plain tok/s | llama-lookup tok/s | ratio | accepted/drafted |",
            "|---|---:|---:|---:|---:|",
        ]
        for task, row in summary.items():
            speeds, llama = row["decode_tokens_per_s"], row["llama"]
            lines.append(
                f"| {task} | {speeds['llama-plain']:.1f} | {speeds['llama-lookup']:.1f} | {llama['ratio']:.2f}× | "
                f"{llama['accepted_tokens']}/{llama['drafted_tokens']} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", nargs="?", help="A cached model name or model folder (default: SmolLM2 INT4).")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=400)
    parser.add_argument("--tasks", default=",".join(TASKS), help="Comma-separated, from: " + ", ".join(TASKS))
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "slmops-speculative")
    parser.add_argument("--json", type=Path, help="Write the result as JSON.")
    parser.add_argument("--llama-lookup", help="llama.cpp's llama-lookup binary: measure it too, as a reference.")
    parser.add_argument("--gguf", type=Path, help="GGUF for llama-lookup [default: the embedded SmolLM2 Q4_1].")
    # llama.cpp's threads wait for each other at every graph node: on a loaded CPU fewer may run faster.
    parser.add_argument("--llama-threads", type=int, help="llama-lookup -t [default: --threads].")
    parser.add_argument("--llama-draft", type=int, default=12, help="llama-lookup --spec-draft-n-max [default: 12].")
    args = parser.parse_args()
    tasks = [task for task in args.tasks.split(",") if task]
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown:
        parser.error(f"unknown tasks {', '.join(unknown)}; known: {', '.join(TASKS)}")
    args.workdir.mkdir(parents=True, exist_ok=True)
    model = slmops.load(model_folder(args.model, args.workdir), threads=args.threads)
    cpu = describe_cpu()
    llama = None
    if args.llama_lookup:
        from slmops.convert import embedded_model

        threads = args.llama_threads or args.threads
        llama = LlamaLookup(args.llama_lookup, args.gguf or embedded_model(), threads, args.llama_draft)
    load = [os.getloadavg()[0]]
    runs = measure(model, tasks, args.rounds, args.max_tokens, llama)
    load.append(os.getloadavg()[0])
    summary = summarize(runs)
    title = f"{model.name}, {args.threads} threads, {args.rounds} rounds, on {cpu.summary()}"
    document = {
        "model": model.name,
        "threads": args.threads,
        "rounds": args.rounds,
        "max_tokens": args.max_tokens,
        "cpu_info": cpu.to_json(),
        "load_average": load,
        "llama_lookup": None
        if llama is None
        else {"gguf": llama.gguf.name, "threads": llama.threads, "draft": llama.draft},
        "repetition_penalty": {"grounded": 1.0, "open": model.defaults.repetition_penalty},
        "tasks": summary,
    }
    report(title, load, table(summary), document, args.json)


def report(title: str, load: list[float], results: str, document: dict, path: Path | None) -> None:
    """Print ``results`` under ``title`` and the load average; write ``document``, dated, to ``path`` if given."""
    print(title)
    print(f"load average (1 min) at start and end: {load[0]:.1f}, {load[-1]:.1f}\n")
    print(results)
    if path:
        date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        path.write_text(json.dumps({"date": date, **document}, indent=2) + "\n", encoding="utf-8")
        print(f"Wrote {path}")


if __name__ == "__main__":
    main()
