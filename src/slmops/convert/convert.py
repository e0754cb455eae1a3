"""`convert`: a fine-tuned model (HF folder, GGUF file or LoRA adapter) to an ONNX model folder.

All writes go to a hidden staging folder beside the destination that is renamed
into place at the very end, so a failed, killed or interrupted conversion leaves
no partial output and an existing output survives unless ``force`` is given.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import psutil

from slmops.convert.embedding import (
    BUILDER_OPTIONS,
    as_causal_lm,
    backbone_architecture,
    check_backbone,
    check_task,
    embedding_settings,
)
from slmops.convert.options import CALIBRATED_HEADS, POST_BUILD_ALGOS, PRECISIONS, QuantizationOptions
from slmops.convert.progress import Stages
from slmops.convert.report import ConversionReport, library_versions
from slmops.convert.sources import Source, inspect_source, size_of, source_hash
from slmops.errors import UsageError
from slmops.memory import peak_rss_mb
from slmops.modelfolder import prompt_template
from slmops.modelfolder.folder import genai_context_length, read_genai_config
from slmops.modelfolder.inference_model import (
    EMBEDDING_TASK,
    Defaults,
    EmbeddingSettings,
    InferenceModel,
    default_model_config,
)

SAMPLING_KEYS = ("temperature", "top_p", "top_k", "repetition_penalty")
EMBEDDING_NOTE = "untied embeddings: the input embedding gathers its own 8-bit table (GatherBlockQuantized), not fp32"
_STAGING = ".{name}.partial-{pid}"


def convert(
    source: Path | None,
    output: Path,
    *,
    precision: str = "int4",
    name: str | None = None,
    base: Path | None = None,
    quantization: QuantizationOptions | None = None,
    force: bool = False,
    log_level: int = 1,
    task: str = "text-generation",
    pooling: str | None = None,
) -> ConversionReport:
    """Convert a model to an onnxruntime-genai folder ready for the cache.

    Args:
        source: a Hugging Face folder, a .gguf file, a LoRA adapter folder, or None
            for the embedded SmolLM2-135M-Instruct GGUF.
        output: the folder to create (model.onnx, genai_config.json, tokenizer,
            inference_model.json, conversion.json).
        precision: int4, int8, fp16, bf16 or fp32.
        name: the model's name in inference_model.json (default: the output folder's name).
        base: the base model folder of a LoRA adapter (default: the adapter's own base path).
        quantization: block size, symmetry, accuracy level and algorithm for int4/int8.
        force: replace an existing output folder.
        log_level: 0 silent, 1 progress bars, 2 also stage timings, 3-4 the builder's own output.
        task: text-generation, or embedding for a model that outputs its last hidden state
            (served by /v1/embeddings, ``Embedder.embed``).
        pooling: for an embedding model, mean or last (token); default: what the source
            declares (a sentence-transformers Pooling config, a GGUF pooling_type), else mean.

    Returns:
        The ConversionReport, also saved as conversion.json.

    Raises:
        ConversionError: the source is missing, malformed or unsupported, or the build failed.
        UsageError: the precision or the output path is invalid.
    """
    started = time.perf_counter()
    if precision not in PRECISIONS:
        raise UsageError(f"precision '{precision}' is not supported; choose one of {', '.join(PRECISIONS)}.")
    quantization = quantization or QuantizationOptions()
    _check_quantization(quantization, precision)
    check_task(task, pooling)
    output = Path(output).expanduser().absolute()
    src = inspect_source(source, base)
    check_backbone(src, task)
    _check_output(output, force)
    output.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_staging(output)
    staging = output.parent / _STAGING.format(name=output.name, pid=os.getpid())
    with _interrupts_as_keyboard_interrupt() as interrupts, Stages(log_level) as stages:
        try:
            staging.mkdir()
            report = _convert_in(src, staging, output, precision, name, quantization, stages, log_level, task, pooling)
            report.wall_seconds = round(time.perf_counter() - started, 2)
            report.peak_rss_mb = round(peak_rss_mb(), 1)
            report.stages = stages.durations()
            report.write(staging / "model")
            if interrupts:
                raise KeyboardInterrupt
            _move_into_place(staging / "model", output)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return report


def _convert_in(
    src: Source, staging: Path, output: Path, precision, name, quantization, stages, log_level, task, pooling
) -> ConversionReport:
    model_dir = staging / "model"
    # Hashing a multi-GB checkpoint takes seconds; hashlib releases the GIL, so it overlaps the build.
    hashing = ThreadPoolExecutor(max_workers=1)
    digest = hashing.submit(source_hash, src)
    hashing.shutdown(wait=False)
    source_notes: list[str] = []
    with stages.stage("load"):
        hf_dir, config = _hf_folder(src, staging, source_notes)
        if backbone_architecture(config):
            hf_dir, config = as_causal_lm(hf_dir, staging / "causal", config)
    options = quantization.builder_options(precision, config)
    if task == EMBEDDING_TASK:  # no LM head, so nothing to share the embedding with
        options = {key: value for key, value in options.items() if key != "shared_embeddings"} | BUILDER_OPTIONS
    report = _new_report(src, output, name, precision, quantization, options)
    report.notes.extend(source_notes)
    embedding = embedding_settings(src, config, pooling, report.notes) if task == EMBEDDING_TASK else None
    stages.expect_layers(int(config.get("num_hidden_layers", 0)))
    _build(hf_dir, staging, precision, report, stages, log_level, quantization)
    if src.kind == "gguf" and precision in ("int4", "int8") and not quantization.post_build(precision):
        _take_gguf_blocks(src, hf_dir, config, model_dir, precision, quantization, report, stages)
    tied = bool(config.get("tie_word_embeddings", True))  # transformers' default when unset
    if tied and precision in ("int4", "int8") and not quantization.post_build(precision):
        if quantization.tied_embedding == "lm_head":
            with stages.stage("share the tied embedding"):
                _share_tied_embedding(staging / "model", report)
    elif not tied and precision in ("int4", "int8") and quantization.algo != "calibrated":
        with stages.stage("quantize the embedding"):
            _quantize_embedding(staging / "model", report)
    with stages.stage("write metadata"):
        if embedding is not None:
            _write_embedding_model(model_dir, report.name, src, precision, embedding)
        else:
            _write_inference_model(hf_dir, model_dir, report.name, src, precision, report.notes)
    report.output_bytes = size_of(model_dir)
    report.source_sha256 = digest.result()
    return report


def _new_report(src: Source, output: Path, name, precision: str, quantization, options: dict) -> ConversionReport:
    report = ConversionReport(
        source=str(src.path),
        source_kind=src.kind,
        source_sha256="",
        output=str(output),
        name=name or output.name,
        precision=precision,
        quantization=quantization.model_dump() if precision in ("int4", "int8") else {},
        builder_options=options,
        source_bytes=size_of(src.path) + (size_of(src.base) if src.base else 0),
        versions=library_versions(),
    )
    if options.get("shared_embeddings") == "false":
        report.notes.append("tied embeddings: the input embedding is kept unshared and unquantized for these settings")
    if options.get("windowed_kv_cache") == "false":
        report.notes.append("sliding-window layers keep a full-length KV cache, so any max_length works")
    return report


def _build(
    hf_dir: Path,
    staging: Path,
    precision: str,
    report: ConversionReport,
    stages,
    log_level: int,
    quantization: QuantizationOptions,
) -> None:
    from slmops.convert.build import run_builder

    model_dir = staging / "model"
    # The builder's fp16/bf16 graphs do not run on the CPU provider, and it has no HQQ or GPTQ:
    # build fp32, then halve the weights or quantize the MatMuls.
    post_build = quantization.post_build(precision)
    graph_precision = "fp32" if precision in ("fp16", "bf16") or post_build else precision
    run_builder(
        hf_dir,
        model_dir,
        graph_precision,
        report.builder_options,
        staging / "builder-cache",
        staging / "build.log",
        stages.on_builder_line,
        log_level,
    )
    if post_build:
        from slmops.convert.weight_only import note, quantize_graph

        with stages.stage(f"quantize ({quantization.algo})"):
            notes = quantize_graph(model_dir, quantization, echo=stages.say)
        report.notes += [note(quantization), *notes]
    elif graph_precision != precision:
        from slmops.convert.float_storage import store_weights_as

        with stages.stage(f"store {precision}"):
            store_weights_as(model_dir, precision)
        report.notes.append(
            f"{precision} weights with fp32 compute: onnxruntime's CPU provider has no {precision} kernels"
        )


def _take_gguf_blocks(
    src: Source, hf_dir: Path, config: dict, model_dir: Path, precision: str, quantization, report, stages
) -> None:
    """The GGUF's own Q4_0/Q4_1/Q8_0 blocks instead of the builder's requantized ones (convert/exact_import.py)."""
    from slmops.convert.exact_import import import_blocks
    from slmops.convert.gguf_families import FAMILIES

    family = FAMILIES.get(src.gguf.architecture) if src.gguf is not None else None
    if src.gguf is None or family is None or quantization.gguf_blocks != "exact":
        return
    if quantization.block_size != 32:
        report.notes.append(f"GGUF weights requantized: --block-size {quantization.block_size} is not the GGUF's 32")
        return
    with stages.stage("take the GGUF's blocks"):
        share = quantization.tied_embedding == "lm_head"
        least_bits = 8 if precision == "int8" else 4
        result = import_blocks(src.gguf, family, config, hf_dir, model_dir, share, least_bits)
    report.gguf_weights = result.to_json()
    if result.embedding_from_head:
        report.notes = [note for note in report.notes if not note.startswith("tied embeddings:")]
    report.notes.extend(result.notes())


def _share_tied_embedding(model_dir: Path, report: ConversionReport) -> None:
    """An fp32 copy of a tied embedding beside its quantized LM head becomes a lookup into the head."""
    from slmops.convert.tied_head import NOTE, share_quantized_lm_head

    bits = share_quantized_lm_head(model_dir)
    if bits is not None:
        report.notes = [note for note in report.notes if not note.startswith("tied embeddings:")]
        report.notes.append(NOTE.format(bits=bits))


def _quantize_embedding(model_dir: Path, report: ConversionReport) -> None:
    """An untied embedding the quantizer left in fp32 becomes an 8-bit table (calibrated INT4 does this itself)."""
    import onnx

    from slmops.convert.calibrated import embedding_table_8bit
    from slmops.convert.graph_file import save_graph

    # Weights stay on disk until there is a table to replace: a graph whose embedding the quantizer
    # already took is not read in full for nothing.
    model = onnx.load(str(model_dir / "model.onnx"), load_external_data=False)
    if embedding_table_8bit(model.graph, model_dir=model_dir):
        onnx.load_external_data_for_model(model, str(model_dir))
        save_graph(model, model_dir)
        report.notes.append(EMBEDDING_NOTE)


def _check_quantization(quantization: QuantizationOptions, precision: str) -> None:
    if quantization.algo in POST_BUILD_ALGOS and precision == "int8":
        raise UsageError(
            f"--algo {quantization.algo} quantizes to int4 only; use --precision int4, or another --algo for int8."
        )
    head_only = quantization.algo == "calibrated" and quantization.matmul_mixed_precision in CALIBRATED_HEADS
    if quantization.post_build(precision) and quantization.matmul_mixed_precision and not head_only:
        raise UsageError(
            f"--algo {quantization.algo} has no mixed precision; leave the LM head unquantized with "
            "--lm-head-precision fp32 instead."
        )


def _hf_folder(src: Source, staging: Path, notes: list[str]) -> tuple[Path, dict]:
    """A Hugging Face folder holding the model to build (the source itself when it is one)."""
    if src.kind == "gguf":
        from slmops.convert.gguf_source import gguf_to_hf

        folder = staging / "hf"
        return folder, gguf_to_hf(src.path, folder, src.gguf, notes)
    if src.kind == "adapter":
        from slmops.convert.adapter import merge_adapter

        assert src.base is not None, "inspect_source sets the base of every adapter"
        folder = staging / "merged"
        merge_adapter(src.base, src.path, folder)
        return folder, src.config
    return src.path, src.config


def _write_inference_model(hf_dir: Path, model_dir: Path, name: str, src: Source, precision: str, notes: list) -> None:
    template = None
    chat_template = prompt_template.chat_template_of(model_dir) or prompt_template.chat_template_of(hf_dir)
    if chat_template:
        try:
            template = prompt_template.derive(chat_template, **prompt_template.special_tokens_of(model_dir))
        except prompt_template.TemplateError as exc:
            notes.append(f"no PromptTemplate: {exc}; the runtime uses the tokenizer's chat template")
    else:
        notes.append("the model has no chat template: inference_model.json has no PromptTemplate")
    InferenceModel(
        Name=name,
        Description=f"{src.path.name} converted to {precision.upper()} ONNX by slmops",
        Version="1.0",
        PromptTemplate=template,
        ModelConfig=_model_config(hf_dir, model_dir),
    ).write(model_dir)


def _write_embedding_model(
    model_dir: Path, name: str, src: Source, precision: str, embedding: EmbeddingSettings
) -> None:
    """An embedding model's inference_model.json: no PromptTemplate or sampling, its pooling instead."""
    context = genai_context_length(read_genai_config(model_dir))
    InferenceModel(
        Name=name,
        Description=f"{src.path.name} converted to a {precision.upper()} ONNX embedding model by slmops",
        Version="1.0",
        ModelConfig=Defaults(max_length=context),
        Task=EMBEDDING_TASK,
        Embedding=embedding,
    ).write(model_dir)


def _model_config(hf_dir: Path, model_dir: Path) -> Defaults:
    """Generation defaults: generation_config.json's sampling values over the documented example's."""
    path = hf_dir / "generation_config.json"
    generation = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    if generation.get("do_sample"):
        sampling = {key: generation[key] for key in SAMPLING_KEYS if generation.get(key) is not None}
    else:  # a greedy model: only its repetition penalty carries over
        penalty = generation.get("repetition_penalty")
        sampling = {"repetition_penalty": penalty} if penalty else {}
    return default_model_config(genai_context_length(read_genai_config(model_dir)), **sampling)


def _check_output(output: Path, force: bool) -> None:
    if output.is_file():
        raise UsageError(f"{output} is a file; pass a folder path for the converted model.")
    if output.is_dir() and any(output.iterdir()) and not force:
        raise UsageError(f"{output} already exists; pass --force to replace it, or choose another output folder.")


def _move_into_place(built: Path, output: Path) -> None:
    """Swap the built folder in with renames, so the output is never half there."""
    old = None
    if output.exists():
        old = output.parent / _STAGING.format(name=output.name, pid=f"{os.getpid()}-old")
        os.replace(output, old)
    try:
        os.replace(built, output)
    except OSError:
        if old is not None:
            os.replace(old, output)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _remove_stale_staging(output: Path) -> None:
    """Staging folders of conversions that were killed (their process is gone)."""
    for folder in output.parent.glob(_STAGING.format(name=output.name, pid="*")):
        pid = folder.name.rsplit(".partial-", 1)[-1].removesuffix("-old")
        if pid.isdigit() and not psutil.pid_exists(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def _interrupts_as_keyboard_interrupt():
    """SIGTERM and SIGINT unwind like Ctrl-C, so the staging folder is removed on the way out.

    Yields a list that records the signals received: library code that swallows the
    KeyboardInterrupt cannot make an interrupted conversion look finished.
    """
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def handler(signum, frame):
        received.append(signum)
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield received
    finally:
        for sig, old_handler in previous.items():
            signal.signal(sig, old_handler)
