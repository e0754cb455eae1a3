"""The conversions a sweep tries: precisions, and for INT4 a set of quantization settings.

Every variant is a set of ``QuantizationOptions``, the settings of `slmops convert`.
The ``hqq`` and ``gptq`` ones quantize the FP32 graph after the build; the sweep and
deploy already have the FP32 export (their reference), so they quantize it directly
instead of building it again (:func:`slmops.convert.weight_only.quantize_export`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from slmops.convert.layouts import FINE
from slmops.convert.options import LM_HEAD, POST_BUILD_ALGOS
from slmops.errors import UsageError


@dataclass(frozen=True)
class Variant:
    """One conversion to measure: a precision and its quantization settings."""

    name: str
    precision: str
    quantization: dict = field(default_factory=dict)

    @property
    def post_build(self) -> bool:
        """Quantized from the FP32 export (hqq, gptq) rather than by the builder."""
        return self.precision == "int4" and self.quantization.get("algo") in POST_BUILD_ALGOS

    def options(self):
        from slmops.convert import QuantizationOptions

        return QuantizationOptions(**self.quantization) if self.quantization else None

    def describe(self) -> str:
        settings = ", ".join(
            f"{key}={','.join(value) if isinstance(value, list) else value}" for key, value in self.quantization.items()
        )
        if self.post_build:
            algo = self.quantization["algo"]
            by = "slmops' calibrated quantizer" if algo == "calibrated" else f"onnxruntime {algo.upper()}"
            settings = f"{by} on the FP32 graph, {settings}"
        return f"{self.precision}" + (f" ({settings})" if settings else " (builder defaults)")


INT4_VARIANTS = {
    variant.name: variant
    for variant in (
        Variant("int4", "int4"),
        Variant("int4-block16", "int4", {"block_size": 16}),
        Variant("int4-k_quant_mixed", "int4", {"algo": "k_quant_mixed"}),
        Variant("int4-k_quant_mixed-b16", "int4", {"algo": "k_quant_mixed", "block_size": 16}),
        # blocks of 64/128 are the fast layouts of AVX-512 VNNI kernels (docs/quality.md)
        Variant("int4-k_quant_mixed-b64", "int4", {"algo": "k_quant_mixed", "block_size": 64}),
        Variant("int4-k_quant_mixed-b128", "int4", {"algo": "k_quant_mixed", "block_size": 128}),
        Variant("int4-calibrated-b128", "int4", {"algo": "calibrated", "block_size": 128}),
        Variant("int4-calibrated-b64", "int4", {"algo": "calibrated", "block_size": 64}),
        # more of the layer weights 8-bit, for models that lose too much at 32% (deploy tries them then)
        Variant("int4-calibrated-b64-int8-50", "int4", {"algo": "calibrated", "block_size": 64, "int8_share": 0.5}),
        Variant("int4-calibrated-b64-int8-75", "int4", {"algo": "calibrated", "block_size": 64, "int8_share": 0.75}),
        # the same bytes with finer scales: 4-bit blocks of 32 and 22% of the layer weights 8-bit; ~5% less KLD
        # (SmolLM2 0.036 against 0.038 on 16,352 held-out tokens), as fast where this CPU's kernels do not care
        # about the block size (AVX2, Zen 5 class): `deploy` takes it where they measure so (convert/layouts.py)
        Variant("int4-calibrated-b32", "int4", {"algo": "calibrated", "block_size": 32, "int8_share": FINE.int8_share}),
        Variant("int4-calibrated-b32-int8-50", "int4", {"algo": "calibrated", "block_size": 32, "int8_share": 0.5}),
        Variant("int4-calibrated-b32-int8-75", "int4", {"algo": "calibrated", "block_size": 32, "int8_share": 0.75}),
        # a quantized GGUF's own blocks, exact (blocks of 32, convert/exact_import.py); requantizes any other source
        Variant("int4-gguf-exact", "int4", {"gguf_blocks": "exact", "block_size": 32}),
        Variant(
            "int4-rtn-mixed-b16",
            "int4",
            {"algo": "rtn", "block_size": 16, "matmul_mixed_precision": "last_matmul:int8,mixed_layers:int8"},
        ),
        Variant(
            "int4-k_quant_mixed-b16-acc1", "int4", {"algo": "k_quant_mixed", "block_size": 16, "accuracy_level": 1}
        ),
        Variant("int4-hqq-b32", "int4", {"algo": "hqq", "block_size": 32}),
        # With tied embeddings the FP32 graph's lm_head reads the embedding's weights: kept, it costs no bytes.
        Variant("int4-hqq-b32-lm_head-fp32", "int4", {"algo": "hqq", "block_size": 32, "nodes_to_exclude": [LM_HEAD]}),
        Variant(
            "int4-gptq-b32-lm_head-fp32",
            "int4",
            {"algo": "gptq", "block_size": 32, "is_symmetric": False, "nodes_to_exclude": [LM_HEAD]},
        ),
    )
}
# Tried only when named: GPTQ runs the whole FP32 graph once per distinct MatMul input and calibration
# window (~120 x 4 passes on SmolLM2); int4-gguf-exact is what "int4" builds; the calibrated exports
# with more 8-bit weights are the slower, closer steps of int4-calibrated-b64 and -b32.
DEFAULT_INT4_SET = tuple(
    name for name in INT4_VARIANTS if "gptq" not in name and "-int8-" not in name and name != "int4-gguf-exact"
)


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


def build(
    variant: Variant,
    source: Path | None,
    output: Path,
    fp32_folder: Path | None = None,
    name: str | None = None,
    steps: Path | None = None,
    echo: Callable[[str], object] = lambda line: None,
) -> Path:
    """Convert ``source`` as ``variant`` into ``output``; HQQ, GPTQ and calibrated start from ``fp32_folder``
    when given, calibrated variants sharing their work in ``steps`` (see calibrated.SharedSteps) and
    saying what they do through ``echo``."""
    from slmops.convert import convert
    from slmops.convert.weight_only import quantize_export

    if variant.post_build and fp32_folder is not None:
        return quantize_export(fp32_folder, output, variant.options(), name, steps, echo)
    convert(
        source,
        output,
        precision=variant.precision,
        name=name or output.name,
        quantization=variant.options(),
        force=True,
        log_level=0,
    )
    return output
