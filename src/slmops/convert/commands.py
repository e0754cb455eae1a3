"""`slmops convert`, `slmops auto-opt` and `slmops run --config`: thin wrappers over the library."""

from __future__ import annotations

from pathlib import Path

import click

from slmops.convert.embedding import POOLINGS, TASKS
from slmops.convert.options import ALGOS, BLOCK_SIZES, LM_HEAD, PRECISIONS

# `convert` and `run --config` log alike; `auto-opt` takes Olive's own --log_level scale instead.
log_level_option = click.option(
    "--log-level",
    "--log_level",
    "log_level",
    type=click.IntRange(0, 4),
    default=1,
    show_default=True,
    help="0 silent, 1 progress bars, 2 also stage timings, 3-4 the model builder's own output.",
)


@click.command()
@click.argument("source", required=False, type=click.Path(path_type=Path))
@click.option(
    "-o", "--output", required=True, type=click.Path(path_type=Path), help="Folder to create for the ONNX model."
)
@click.option("--precision", type=click.Choice(PRECISIONS), default="int4", show_default=True, help="Weight precision.")
@click.option("--name", help="Model name in inference_model.json [default: the output folder's name].")
@click.option("--base", type=click.Path(path_type=Path), help="Base model folder when SOURCE is a LoRA adapter.")
@click.option(
    "--block-size",
    type=click.Choice([str(size) for size in BLOCK_SIZES]),
    default="32",
    show_default=True,
    help="Weights per int4/int8 quantization block.",
)
@click.option(
    "--symmetric/--asymmetric",
    default=True,
    show_default=True,
    help="Signed symmetric or unsigned asymmetric int4/int8.",
)
@click.option(
    "--accuracy-level",
    type=click.IntRange(0, 4),
    help="Activation precision in quantized MatMuls: 1 fp32, 2 fp16, 3 bf16, 4 int8.",
)
@click.option(
    "--algo",
    type=click.Choice(ALGOS),
    default="default",
    show_default=True,
    help="Quantization algorithm: the builder's (default, rtn, k_quant...) or, int4 only, onnxruntime's hqq "
    "(no calibration) or gptq (calibrated on shipped text) applied to the FP32 graph, or calibrated (slmops': "
    "grids and rounding chosen by calibration activations, fast integer zero points, an LM head read at 4 bits and its top tokens rescored).",
)
@click.option(
    "--lm-head-precision",
    type=click.Choice(["int4", "int8", "fp32"]),
    help="Quantize the LM head (last MatMul) to this instead; fp32 leaves it unquantized (free when it is "
    "the tied embedding).",
)
@click.option("--mixed-precision", help="Builder matmul_mixed_precision, e.g. 'last_matmul:int8,mixed_layers:int8'.")
@click.option(
    "--gguf-blocks",
    type=click.Choice(["exact", "requantize"]),
    default="exact",
    show_default=True,
    help="A GGUF's Q4_0, Q4_1 and Q8_0 weights: taken into the graph as they are (needs --block-size 32), "
    "or dequantized and requantized like any other.",
)
@click.option(
    "--task",
    type=click.Choice(TASKS),
    default="text-generation",
    show_default=True,
    help="embedding: output the last hidden state, pooled into vectors (/v1/embeddings) instead of text.",
)
@click.option(
    "--pooling",
    type=click.Choice(POOLINGS),
    help="Embedding pooling: mean of the tokens or the last token [default: what the source declares, else mean].",
)
@click.option("--force", is_flag=True, help="Replace the output folder if it exists.")
@log_level_option
def convert(
    source,
    output,
    precision,
    block_size,
    symmetric,
    accuracy_level,
    algo,
    lm_head_precision,
    mixed_precision,
    gguf_blocks,
    **options,
):
    """Convert SOURCE (a Hugging Face folder, a .gguf file or a LoRA adapter; default: the
    embedded SmolLM2-135M-Instruct) to an ONNX model folder for onnxruntime-genai."""
    from slmops.convert import convert as convert_model
    from slmops.convert.options import quantization_options

    lm_head = f"last_matmul:{lm_head_precision}" if lm_head_precision in ("int4", "int8") else ""
    mixed = ",".join(part for part in (lm_head, mixed_precision or "") if part)
    quantization = quantization_options(
        block_size=int(block_size),
        is_symmetric=symmetric,
        accuracy_level=accuracy_level,
        algo=algo,
        matmul_mixed_precision=mixed or None,
        nodes_to_exclude=[LM_HEAD] if lm_head_precision == "fp32" else [],
        gguf_blocks=gguf_blocks,
    )
    # name, base, task, pooling, force, log_level: convert()'s parameters by name
    report = convert_model(source, output, precision=precision, quantization=quantization, **options)
    _summary(report)


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option("-m", "--model_name_or_path", required=True, help="Hugging Face model folder or .gguf file.")
@click.option("-a", "--adapter_path", help="PEFT LoRA adapter folder, merged into the model before export.")
@click.option("-t", "--task", default="text-generation", show_default=True, help="Only text-generation.")
@click.option("--device", default="cpu", show_default=True, help="Only cpu.")
@click.option("--provider", default="CPUExecutionProvider", show_default=True, help="Only CPUExecutionProvider.")
@click.option(
    "--use_model_builder", is_flag=True, help="Accepted for Olive compatibility: slmops always uses the model builder."
)
@click.option(
    "--use_ort_genai",
    is_flag=True,
    help="Accepted for Olive compatibility: the output always runs on onnxruntime-genai.",
)
@click.option(
    "--precision",
    type=click.Choice(PRECISIONS),
    default="fp32",
    show_default=True,
    help="Weight precision (Olive's default).",
)
@click.option(
    "-o",
    "--output_path",
    default="auto-opt-output",
    show_default=True,
    type=click.Path(path_type=Path),
    help="Output folder.",
)
@click.option(
    "--log_level",
    type=click.IntRange(0, 4),
    default=3,
    show_default=True,
    help="Olive severity: 0 verbose, 1 info, 2 warning, 3 error, 4 fatal.",
)
@click.option("--name", help="slmops: model name in inference_model.json.")
@click.option(
    "--force", is_flag=True, help="slmops: replace an output folder that is not an earlier slmops conversion."
)
@click.pass_context
def auto_opt(
    ctx,
    model_name_or_path,
    adapter_path,
    task,
    device,
    provider,
    use_model_builder,
    use_ort_genai,
    precision,
    output_path,
    log_level,
    name,
    force,
):
    """Olive's `auto-opt`, verbatim flags: convert a model with the onnxruntime-genai model builder."""
    from slmops.convert import convert as convert_model
    from slmops.convert.olive import check_rejected, check_target, default_name
    from slmops.convert.report import FILENAME
    from slmops.errors import UsageError

    check_rejected(ctx.args)
    check_target(device, provider)
    if task not in ("text-generation", "text-generation-with-past"):
        raise UsageError(f"--task {task} is not supported; slmops converts text-generation models.")
    source, base = (Path(adapter_path), Path(model_name_or_path)) if adapter_path else (Path(model_name_or_path), None)
    replace = force or (output_path / FILENAME).exists()  # Olive overwrites its own earlier output
    report = convert_model(
        source,
        output_path,
        precision=precision,
        base=base,
        force=replace,
        name=name or default_name(output_path, Path(model_name_or_path), precision),
        log_level={0: 4, 1: 2, 2: 1, 3: 1, 4: 0}[log_level],
    )
    _summary(report)


@click.command()
@click.option("--config", "config_path", required=True, type=click.Path(path_type=Path), help="Olive workflow JSON.")
@log_level_option
def run_config(config_path, log_level):
    """Run an Olive workflow config (HfModel + one ModelBuilder pass on the CPU), reusing cache_dir."""
    from slmops.convert.olive import run_config as run

    report = run(config_path, log_level=log_level, echo=click.echo)
    _summary(report)


def _summary(report) -> None:
    from rich.table import Table

    from slmops.console import print_table

    table = Table(show_header=False, box=None)
    table.add_row("model", f"{report.name} ({report.precision})")
    table.add_row("output", report.output)
    size = f"{report.output_bytes / 1e6:.1f} MB"
    table.add_row("size", f"{size} (source {report.source_bytes / 1e6:.1f} MB, x{report.size_ratio:.2f})")
    if not report.reused:
        table.add_row("time", f"{report.wall_seconds:.1f} s, peak RSS {report.peak_rss_mb:.0f} MB")
    for note in report.notes:
        table.add_row("note", note)
    print_table(table)
    click.echo(f"Next: slmops cache add {report.output}")
