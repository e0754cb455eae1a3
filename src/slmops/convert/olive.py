"""Olive's inputs, accepted verbatim: the `auto-opt` flags and the `run --config` JSON.

slmops does what those inputs ask with its own converter. Whatever Olive accepts
that has no meaning for a CPU conversion with the model builder stops before any
work, with a message naming the key or flag and what slmops supports instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from slmops.convert.convert import convert
from slmops.convert.options import ALGOS, PRECISIONS, BlockSize, QuantizationOptions
from slmops.convert.report import FILENAME as REPORT_FILE
from slmops.convert.report import ConversionReport
from slmops.convert.sources import inspect_source, source_hash
from slmops.errors import UsageError, first_problem
from slmops.files import link_or_copy

CPU_PROVIDER = "CPUExecutionProvider"

# Olive auto-opt flags slmops rejects, and why.
REJECTED_FLAGS = {
    "--trust_remote_code": "slmops never runs code shipped inside a model folder",
    "--model_script": "slmops does not run user model scripts; pass a Hugging Face folder",
    "--script_dir": "slmops does not run user model scripts; pass a Hugging Face folder",
    "--memory": "it only sizes GPU model splitting",
    "--data_name": "auto-opt here does no dataset-driven search; measure quality with `slmops eval`",
    "-d": "auto-opt here does no dataset-driven search; measure quality with `slmops eval`",
    "--split": "auto-opt here does no dataset-driven search",
    "--subset": "auto-opt here does no dataset-driven search",
    "--input_cols": "auto-opt here does no dataset-driven search",
    "--batch_size": "auto-opt here does no dataset-driven search",
    "--use_dynamo_exporter": "slmops always exports with the onnxruntime-genai model builder",
    "--use_qdq_encoding": "QDQ models do not run well on the CPU; slmops writes MatMulNBits",
    "--dynamic-to-fixed-shape-dim-param": "fixed shapes are only for the QNN NPU provider",
    "--dynamic-to-fixed-shape-dim-value": "fixed shapes are only for the QNN NPU provider",
    "--num-splits": "model splitting is for multi-GPU deployment",
    "--cost-model": "model splitting is for multi-GPU deployment",
    "--mixed-precision-overrides-config": "use `slmops convert --mixed-precision` for int4/int8 mixes",
    "--surgeries": "graph surgeries are not supported",
    "--enable_search": "there is no search; compare precisions with `slmops sweep`",
    "--seed": "there is no search; compare precisions with `slmops sweep`",
    "--resource_group": "slmops runs locally only, never on Azure ML",
    "--workspace_name": "slmops runs locally only, never on Azure ML",
    "--keyvault_name": "slmops runs locally only, never on Azure ML",
    "--aml_compute": "slmops runs locally only, never on Azure ML",
    "--account_name": "slmops has no shared cloud cache; it caches locally in cache_dir",
    "--container_name": "slmops has no shared cloud cache; it caches locally in cache_dir",
    "--save_config_file": "slmops writes no Olive config; the conversion is recorded in conversion.json",
    "--dry_run": "there is no dry run; `slmops convert --help` shows what a run does",
}
GENERIC_OUTPUT_NAMES = {"onnx", "output", "model", "models", "out"}


def default_name(output: Path, source: Path | None, precision: str) -> str:
    """A model name: the output folder's, or its parent's when that folder is called e.g. `onnx`."""
    output = Path(output).absolute()
    if output.name.lower() not in GENERIC_OUTPUT_NAMES:
        return output.name
    if output.parent.name and output.parent.name.lower() not in GENERIC_OUTPUT_NAMES:
        return output.parent.name
    stem = Path(source).stem if source else "smollm2-135m-instruct"
    return f"{stem}-{precision}"


def check_rejected(args: list[str]) -> None:
    """Stop on leftover command-line words: Olive flags that make no sense here, or typos."""
    for arg in args:
        flag = arg.split("=", 1)[0]
        if flag in REJECTED_FLAGS:
            raise UsageError(f"{flag} is an Olive flag slmops does not support: {REJECTED_FLAGS[flag]}.")
    if args:
        raise UsageError(f"unknown option {args[0]!r}; see `slmops auto-opt --help`.")


def check_target(device: str, provider: str) -> None:
    if device != "cpu":
        raise UsageError(f"--device {device} is not supported: slmops converts for the CPU; use --device cpu.")
    if provider != CPU_PROVIDER:
        raise UsageError(f"--provider {provider} is not supported: slmops targets {CPU_PROVIDER} only.")


# ---- run --config -------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _one_of(*allowed: object, any_case: bool = False, shown: str | None = None) -> AfterValidator:
    """A field check accepting only ``allowed`` (or null); the error says what slmops supports."""
    accepted = {str(item).lower() for item in allowed} if any_case else set(allowed)

    def check(value):
        if value is not None and (str(value).lower() if any_case else value) not in accepted:
            raise ValueError(f"{value!r} is not supported; supported: {shown or ', '.join(map(str, allowed))}")
        return value

    return AfterValidator(check)


class InputModel(_Strict):
    type: Annotated[str, _one_of("HfModel", any_case=True)] = Field(
        description="Olive model type; slmops supports HfModel."
    )
    model_path: str = Field(description="A Hugging Face model folder (or a .gguf file).")
    task: Annotated[str, _one_of("text-generation", "text-generation-with-past", shown="text-generation")] = Field(
        "text-generation", description="Olive task; slmops supports text-generation."
    )
    adapter_path: str | None = Field(None, description="A PEFT LoRA adapter folder merged into the model.")


class Accelerator(_Strict):
    device: Annotated[str, _one_of("cpu", any_case=True)] = Field(
        "cpu", description="Olive device; slmops supports cpu."
    )
    execution_providers: list[str] = Field([CPU_PROVIDER], description=f"Only {CPU_PROVIDER}.")

    @field_validator("execution_providers")
    @classmethod
    def _providers(cls, value: list[str]) -> list[str]:
        others = [provider for provider in value if provider != CPU_PROVIDER]
        if others or not value:
            raise ValueError(f'{others or value} is not supported; supported: ["{CPU_PROVIDER}"]')
        return value


class System(_Strict):
    type: Annotated[str, _one_of("LocalSystem")] = Field(description="Olive system type; slmops supports LocalSystem.")
    accelerators: list[Accelerator] = Field(default_factory=lambda: [Accelerator()], description="CPU only.")


class QuantizationConfig(_Strict):
    block_size: BlockSize = Field(32, description="16, 32, 64, 128 or 256.")
    is_symmetric: bool = Field(True, description="Symmetric int or asymmetric uint quantization.")
    accuracy_level: Annotated[int | None, _one_of(0, 1, 2, 3, 4, shown="1 (fp32), 2 (fp16), 3 (bf16), 4 (int8)")] = (
        Field(None, description="1 fp32, 2 fp16, 3 bf16, 4 int8 activations.")
    )
    algo_config: Annotated[str | None, _one_of(*ALGOS)] = Field(
        None, description="rtn, k_quant, k_quant_mixed, k_quant_last or rtn_last."
    )


class BuilderConfig(_Strict):
    precision: Annotated[str, _one_of(*PRECISIONS)] = Field("fp32", description="int4, int8, fp16, bf16 or fp32.")
    quantization_config: QuantizationConfig | None = Field(None, description="Weight quantization settings.")


class Pass(_Strict):
    type: Annotated[str, _one_of("ModelBuilder")] = Field(description="Olive pass type; slmops supports ModelBuilder.")
    config: BuilderConfig = Field(default_factory=BuilderConfig, description="The ModelBuilder settings.")

    @model_validator(mode="before")
    @classmethod
    def _inline(cls, data):
        # Olive also accepts a pass's settings beside its type instead of under "config".
        if isinstance(data, dict) and "config" not in data:
            data = {"type": data.get("type"), "config": {k: v for k, v in data.items() if k != "type"}}
        return data


class OliveConfig(_Strict):
    """The Olive workflow config of MISSION.md; unknown keys are errors."""

    input_model: InputModel = Field(description="The model to convert.")
    systems: dict[str, System] = Field(default_factory=dict, description="Named systems (LocalSystem).")
    passes: dict[str, Pass] = Field(description="Exactly one ModelBuilder pass.")
    host: str | None = Field(None, description="The system that runs the conversion.")
    target: str | None = Field(None, description="The system the model is for.")
    cache_dir: str = Field("cache", description="Where results are cached and reused.")
    output_dir: str = Field(description="Where the converted model is written.")
    log_severity_level: int | None = Field(None, ge=0, le=4, description="Olive's log level; 0 is the most verbose.")

    @model_validator(mode="after")
    def _consistent(self) -> OliveConfig:
        if len(self.passes) != 1:
            raise ValueError(f"passes: slmops runs exactly one ModelBuilder pass, got {len(self.passes)}")
        for key in ("host", "target"):
            name = getattr(self, key)
            if name is not None and name not in self.systems:
                raise ValueError(f"{key}: '{name}' is not one of systems ({', '.join(self.systems) or 'none'})")
        return self

    @property
    def builder(self) -> BuilderConfig:
        return next(iter(self.passes.values())).config

    def quantization(self) -> QuantizationOptions:
        settings = self.builder.quantization_config or QuantizationConfig()
        return QuantizationOptions(
            block_size=settings.block_size,
            is_symmetric=settings.is_symmetric,
            accuracy_level=settings.accuracy_level,
            algo=settings.algo_config or "default",
        )


_FIELD_MODELS: dict[str, type[BaseModel]] = {
    "input_model": InputModel,
    "systems": System,
    "accelerators": Accelerator,
    "passes": Pass,
    "config": BuilderConfig,
    "quantization_config": QuantizationConfig,
}


def load_config(path: Path) -> OliveConfig:
    """Parse and check an Olive JSON config; every problem is a one-line UsageError."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise UsageError(f"{path} does not exist; pass an Olive JSON config file.") from exc
    except ValueError as exc:
        raise UsageError(f"{path} is not valid JSON: {exc}.") from exc
    try:
        return OliveConfig.model_validate(data)
    except ValidationError as exc:
        raise UsageError(f"{path}: {_describe(exc)}") from exc


def _describe(exc: ValidationError) -> str:
    where, message, kind, loc = first_problem(exc)
    where = where or "config"
    if kind == "extra_forbidden":
        return f"key '{where}' is not supported by slmops; remove it (supported: {_supported_at(loc)})."
    if kind == "missing":
        return f"key '{where}' is required."
    return f"key '{where}': {message}."


def _supported_at(loc: tuple) -> str:
    """The keys allowed where an unknown key was found."""
    model: type[BaseModel] = OliveConfig
    for part in loc[:-1]:
        model = _FIELD_MODELS.get(part, model) if isinstance(part, str) else model
    return ", ".join(model.model_fields)


def run_config(path: Path, *, log_level: int = 1, echo=print) -> ConversionReport:
    """Run an Olive config: convert once per (source, settings) and reuse the result from cache_dir."""
    config = load_config(path)
    model_path = Path(config.input_model.model_path).expanduser()
    adapter = Path(config.input_model.adapter_path).expanduser() if config.input_model.adapter_path else None
    source = inspect_source(adapter or model_path, model_path if adapter else None)
    precision, quantization = config.builder.precision, config.quantization()
    output = Path(config.output_dir).expanduser().absolute()
    key = _cache_key(source_hash(source), precision, quantization)
    entry = Path(config.cache_dir).expanduser().absolute() / "slmops-conversions" / key
    name = default_name(output, model_path, precision)
    if (entry / REPORT_FILE).exists():
        echo(f"Reusing the conversion cached in {entry} (same source and settings); nothing converted.")
        report = ConversionReport.read(entry)
        report.reused = True
    else:
        report = convert(
            adapter or model_path,
            entry,
            precision=precision,
            name=name,
            base=model_path if adapter else None,
            quantization=quantization,
            force=True,
            log_level=log_level,
        )
    _publish(entry, output)
    return report


def _cache_key(source_sha: str, precision: str, quantization: QuantizationOptions) -> str:
    settings = json.dumps(
        {"source": source_sha, "precision": precision, "quantization": quantization.model_dump()}, sort_keys=True
    )
    return hashlib.sha256(settings.encode()).hexdigest()[:16]


def _publish(entry: Path, output: Path) -> None:
    """Put the cached model at output_dir (hard links when possible), replacing an earlier slmops result."""
    if output.is_file():
        raise UsageError(f"output_dir {output} is a file; use a folder path.")
    if output.exists() and any(output.iterdir()) and not (output / REPORT_FILE).exists():
        raise UsageError(f"output_dir {output} exists and is not an slmops conversion; choose another output_dir.")
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = output.parent / f".{output.name}.publish-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(entry, staging, copy_function=link_or_copy)
    if output.exists():
        shutil.rmtree(output)
    os.replace(staging, output)
