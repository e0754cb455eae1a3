"""What a conversion can be asked to do: precision and quantization settings."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

PRECISIONS = ("int4", "int8", "fp16", "bf16", "fp32")
Precision = Literal["int4", "int8", "fp16", "bf16", "fp32"]
ALGOS = ("default", "rtn", "k_quant", "k_quant_mixed", "k_quant_last", "rtn_last")
BLOCK_SIZES = (16, 32, 64, 128, 256)


class QuantizationOptions(BaseModel):
    """Weight-only quantization settings for int4/int8 (ignored for float precisions)."""

    model_config = ConfigDict(extra="forbid")

    block_size: int = Field(32, description="Weights per quantization block: 16, 32, 64, 128 or 256.")
    is_symmetric: bool = Field(True, description="Symmetric (signed, no zero point) or asymmetric (unsigned + zero point).")
    accuracy_level: int | None = Field(
        None, ge=0, le=4, description="Minimum precision of the activations in quantized MatMuls: 1 fp32, 2 fp16, 3 bf16, 4 int8."
    )
    algo: Literal["default", "rtn", "k_quant", "k_quant_mixed", "k_quant_last", "rtn_last"] = Field(
        "default", description="Quantization algorithm: rtn (round to nearest) or k_quant, optionally mixed."
    )
    matmul_mixed_precision: str | None = Field(
        None, description="Groups kept at another bit width, e.g. 'last_matmul:int8,mixed_layers:int8'."
    )

    @field_validator("block_size")
    @classmethod
    def _block_size(cls, value: int) -> int:
        if value not in BLOCK_SIZES:
            raise ValueError(f"block_size must be one of {', '.join(map(str, BLOCK_SIZES))}")
        return value

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

    def builder_options(self, precision: str, tied_embeddings: bool) -> dict[str, str]:
        """The builder's extra_options for these settings."""
        if precision not in ("int4", "int8"):
            return {}
        options = {"block_size": str(self.block_size), "is_symmetric": str(self.is_symmetric).lower()}
        if self.accuracy_level is not None:
            options["accuracy_level"] = str(self.accuracy_level)
        if self.algo != "default":
            options["algo_config"] = self.algo
        if self.matmul_mixed_precision:
            options["matmul_mixed_precision"] = self.matmul_mixed_precision
        if tied_embeddings and not self.is_symmetric:
            # A tied embedding quantized asymmetrically is shared as a uint Gather that onnxruntime
            # refuses to load; an unshared, unquantized embedding loads and keeps full quality.
            options["shared_embeddings"] = "false"
        return options
