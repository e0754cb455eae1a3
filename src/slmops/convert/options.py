"""What a conversion can be asked to do: precision and quantization settings."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

PRECISIONS = ("int4", "int8", "fp16", "bf16", "fp32")
Precision = Literal["int4", "int8", "fp16", "bf16", "fp32"]
ALGOS = ("default", "rtn", "k_quant", "k_quant_mixed", "k_quant_last", "rtn_last", "hqq", "gptq", "calibrated")
POST_BUILD_ALGOS = ("hqq", "gptq", "calibrated")  # run on the FP32 graph (convert/weight_only.py, calibrated.py)
# The LM head a calibrated export gets for each `--lm-head-precision` (none given: screened, calibrated.py).
CALIBRATED_HEADS = {"last_matmul:int8": "int8", "last_matmul:int4": "int4"}
LM_HEAD = "/lm_head/MatMul"  # the builder's name for the last MatMul
BLOCK_SIZES = (16, 32, 64, 128, 256)


def _check_block_size(value: int) -> int:
    if value not in BLOCK_SIZES:
        raise ValueError(f"{value} is not supported; supported: {', '.join(map(str, BLOCK_SIZES))}")
    return value


# Weights per quantization block, checked alike wherever a setting names it (here and in Olive configs).
BlockSize = Annotated[int, AfterValidator(_check_block_size)]


class QuantizationOptions(BaseModel):
    """Weight-only quantization settings for int4/int8 (ignored for float precisions)."""

    model_config = ConfigDict(extra="forbid")

    block_size: BlockSize = Field(32, description="Weights per quantization block: 16, 32, 64, 128 or 256.")
    is_symmetric: bool = Field(
        True, description="Symmetric (signed, no zero point) or asymmetric (unsigned + zero point)."
    )
    accuracy_level: int | None = Field(
        None,
        ge=0,
        le=4,
        description="Minimum precision of the activations in quantized MatMuls: 1 fp32, 2 fp16, 3 bf16, 4 int8.",
    )
    algo: Literal[
        "default", "rtn", "k_quant", "k_quant_mixed", "k_quant_last", "rtn_last", "hqq", "gptq", "calibrated"
    ] = Field(
        "default",
        description="Quantization algorithm: the builder's rtn (round to nearest) or k_quant, optionally mixed; "
        "or, int4 only, onnxruntime's hqq (no calibration) or gptq (calibrated on shipped text) on the FP32 graph, "
        "or slmops' calibrated (activation-weighted grids with error feedback, integer zero points, an LM head read at 4 bits and its top tokens rescored).",
    )
    int8_share: float | None = Field(
        None,
        ge=0,
        le=1,
        description="calibrated only: the share of the layer weights kept 8-bit, the MatMuls whose 8 bits "
        "measurably help most (default 0.32).",
    )
    nodes_to_exclude: list[str] = Field(
        default_factory=list, description=f"MatMul nodes left unquantized, e.g. {LM_HEAD} (the LM head)."
    )
    tied_embedding: Literal["lm_head", "fp32"] = Field(
        "lm_head",
        description="A tied input embedding the builder cannot share: read from the quantized LM head "
        "(lm_head) or kept as an fp32 copy (fp32, +4 bytes a weight of the embedding).",
    )
    gguf_blocks: Literal["exact", "requantize"] = Field(
        "exact",
        description="A GGUF source's Q4_0, Q4_1 and Q8_0 weights: taken as they are (exact, at block size 32) "
        "or requantized like any other weights.",
    )
    matmul_mixed_precision: str | None = Field(
        None, description="Groups kept at another bit width, e.g. 'last_matmul:int8,mixed_layers:int8'."
    )

    @field_validator("matmul_mixed_precision")
    @classmethod
    def _mixed(cls, value: str | None) -> str | None:
        if not value:
            return None
        for pair in value.split(","):
            selector, _, kind = pair.partition(":")
            if selector not in ("last_matmul", "mixed_layers", "linear_attn") or kind not in ("int4", "int8"):
                raise ValueError(
                    f"'{pair}' is not SELECTOR:TYPE with SELECTOR last_matmul|mixed_layers|linear_attn and TYPE int4|int8"
                )
        return value

    @model_validator(mode="after")
    def _share_is_calibrated(self) -> QuantizationOptions:
        if self.int8_share is not None and self.algo != "calibrated":
            raise ValueError(f"int8_share is a setting of algo=calibrated, not of algo={self.algo}")
        return self

    def post_build(self, precision: str) -> bool:
        """Whether the builder makes an FP32 graph that slmops then quantizes (hqq, gptq, calibrated)."""
        return precision == "int4" and self.algo in POST_BUILD_ALGOS

    def builder_options(self, precision: str, config: dict) -> dict[str, str]:
        """The builder's extra_options for these settings and this model's config.json."""
        options = {} if self.post_build(precision) else self._quantization_options(precision)
        tied = bool(config.get("tie_word_embeddings", True))  # transformers' default when unset
        if tied and "is_symmetric" in options and (not self.is_symmetric or self._lm_head_differs()):
            # A shared embedding is only built right when it has the body's symmetric int type:
            # asymmetric gives a uint Gather onnxruntime refuses to load, another LM head width a
            # Gather pointing at missing weights. Unshared and unquantized, it loads at full quality.
            options["shared_embeddings"] = "false"
        if config.get("sliding_window") and config.get("model_type", "").startswith("gemma"):
            # A windowed KV cache must hold the whole window, so generating with a max_length under
            # it fails; a full cache with the window applied as a mask works at any length.
            options["windowed_kv_cache"] = "false"
        return options

    def _quantization_options(self, precision: str) -> dict[str, str]:
        if precision not in ("int4", "int8"):
            return {}
        options = {"block_size": str(self.block_size), "is_symmetric": str(self.is_symmetric).lower()}
        if self.accuracy_level is not None:
            options["accuracy_level"] = str(self.accuracy_level)
        if self.algo != "default":
            options["algo_config"] = self.algo
        if self.matmul_mixed_precision:
            options["matmul_mixed_precision"] = self.matmul_mixed_precision
        if self.nodes_to_exclude:
            options["nodes_to_exclude"] = ",".join(self.nodes_to_exclude)
        return options

    def _lm_head_differs(self) -> bool:
        return (
            self.algo.endswith(("_last", "_mixed"))
            or "last_matmul" in (self.matmul_mixed_precision or "")
            or LM_HEAD in self.nodes_to_exclude
        )


def quantization_options(**settings) -> QuantizationOptions:
    """QuantizationOptions from a user's settings; a bad one is a one-line UsageError naming it."""
    from pydantic import ValidationError

    from slmops.errors import UsageError, first_problem

    try:
        return QuantizationOptions(**settings)
    except ValidationError as exc:
        where, message, _, _ = first_problem(exc)
        raise UsageError(f"{where}: {message}" if where else message) from exc
