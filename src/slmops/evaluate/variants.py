"""The conversions a sweep tries: precisions, and for INT4 a set of quantization settings.

Most INT4 variants are builder settings (``QuantizationOptions``). ``hqq`` instead
quantizes the FP32 export afterwards with onnxruntime's HQQ weight-only quantizer,
which needs no calibration data and runs on a CPU.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from slmops.errors import UsageError


@dataclass(frozen=True)
class Variant:
    """One conversion to measure: a precision and its quantization settings."""

    name: str
    precision: str
    quantization: dict = field(default_factory=dict)
    post: str | None = None  # "hqq": quantize the fp32 export afterwards

    def describe(self) -> str:
        settings = ", ".join(f"{key}={value}" for key, value in self.quantization.items())
        if self.post:
            settings = f"onnxruntime {self.post.upper()} on the FP32 export" + (f", {settings}" if settings else "")
        return f"{self.precision}" + (f" ({settings})" if settings else " (builder defaults)")


INT4_VARIANTS = {
    variant.name: variant
    for variant in (
        Variant("int4", "int4"),
        Variant("int4-block16", "int4", {"block_size": 16}),
        Variant("int4-k_quant_mixed", "int4", {"algo": "k_quant_mixed"}),
        Variant("int4-k_quant_mixed-b16", "int4", {"algo": "k_quant_mixed", "block_size": 16}),
        Variant("int4-rtn-mixed-b16", "int4", {"algo": "rtn", "block_size": 16,
                                               "matmul_mixed_precision": "last_matmul:int8,mixed_layers:int8"}),
        Variant("int4-k_quant_mixed-b16-acc1", "int4", {"algo": "k_quant_mixed", "block_size": 16, "accuracy_level": 1}),
        Variant("int4-hqq-b32", "int4", {"block_size": 32}, post="hqq"),
        # The FP32 export's lm_head reads the embedding's weights: kept, it costs no bytes.
        Variant("int4-hqq-b32-lm_head-fp32", "int4", {"block_size": 32, "exclude": "/lm_head/MatMul"}, post="hqq"),
    )
}
DEFAULT_INT4_SET = tuple(INT4_VARIANTS)


def parse_variants(spec: str) -> tuple[str, ...]:
    """``default`` (all), ``builder`` (the builder's default INT4 only) or comma-separated names."""
    if spec == "default":
        return DEFAULT_INT4_SET
    if spec == "builder":
        return ("int4",)
    names = tuple(item.strip() for item in spec.split(",") if item.strip())
    unknown = [name for name in names if name not in INT4_VARIANTS]
    if unknown:
        raise UsageError(f"Unknown INT4 variant {', '.join(unknown)}; `slmops sweep --list-variants` lists them.")
    return names


def build(variant: Variant, source: Path | None, output: Path, fp32_folder: Path | None = None, name: str | None = None) -> Path:
    """Convert ``source`` as ``variant`` into ``output``; HQQ variants start from ``fp32_folder``."""
    from slmops.convert import QuantizationOptions, convert

    if variant.post == "hqq":
        if fp32_folder is None:
            raise UsageError("The HQQ variant needs the FP32 export; include fp32 in --precisions.")
        exclude = [name for name in variant.quantization.get("exclude", "").split(",") if name]
        return quantize_hqq(fp32_folder, output, int(variant.quantization.get("block_size", 32)), exclude, name)
    options = QuantizationOptions(**variant.quantization) if variant.quantization else None
    convert(source, output, precision=variant.precision, name=name or output.name, quantization=options, force=True, log_level=0)
    return output


def quantize_hqq(fp32_folder: Path, output: Path, block_size: int, exclude: list[str] = (), name: str | None = None) -> Path:
    """INT4 MatMuls by HQQ (half-quadratic quantization), but ``exclude``; embeddings stay as they are."""
    import json
    import logging

    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import HQQWeightOnlyQuantConfig, MatMulNBitsQuantizer

    staging = output.with_name(f".{output.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for item in fp32_folder.iterdir():
        if item.is_file() and not item.name.startswith("model.onnx"):
            shutil.copy2(item, staging / item.name)
    # Its INFO log names every node of the graph.
    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    quantizer = MatMulNBitsQuantizer(onnx.load(str(fp32_folder / "model.onnx")), nodes_to_exclude=list(exclude),
                                     algo_config=HQQWeightOnlyQuantConfig(block_size=block_size, bits=4))
    quantizer.process()
    quantizer.model.save_model_to_file(str(staging / "model.onnx"), use_external_data_format=True)
    report = staging / "conversion.json"
    if report.exists():
        data = json.loads(report.read_text(encoding="utf-8"))
        data.update(precision="int4", quantization={"algo": "hqq", "block_size": block_size, "excluded": list(exclude)})
        report.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    _rename_model(staging, name or output.name)
    shutil.rmtree(output, ignore_errors=True)
    staging.rename(output)
    return output


def _rename_model(folder: Path, name: str) -> None:
    from slmops.cache.inference_model import FILENAME, InferenceModel

    if (folder / FILENAME).exists():
        InferenceModel.read(folder).model_copy(update={"Name": name}).write(folder)
