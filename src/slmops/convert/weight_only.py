"""INT4 quantizers the model builder does not have, applied to the FP32 graph it built.

``hqq`` (half-quadratic quantization) fits each block's scale and zero point to the
weights alone: no calibration data. ``gptq`` corrects the
rounding of each weight column with the activations of calibration text; slmops takes
that text from the tail of its shipped eval text, so `slmops eval` (which scores the
head) never measures a model on the tokens it was calibrated on.

Both are onnxruntime's own quantizers; they load the whole FP32 graph in memory
(4 bytes a parameter).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import shutil
from dataclasses import replace
from pathlib import Path

from slmops.convert.build import failing_node
from slmops.convert.calibration_text import CalibrationWindows, calibration_windows  # noqa: F401 (re-exported)
from slmops.convert.options import CALIBRATED_HEADS, QuantizationOptions
from slmops.convert.quantizer_fixes import row_packed_zero_points
from slmops.errors import ConversionError

CALIBRATION_WINDOWS = 4
CALIBRATION_TOKENS = 128
GPTQ_BLOCK = 128  # columns updated per step of GPTQ's error correction (not the quantization block)


def quantize_graph(
    model_dir: Path, options: QuantizationOptions, steps: Path | None = None, echo=lambda line: None
) -> list[str]:
    """Replace model.onnx(+data) in ``model_dir`` (an FP32 export) by its INT4 version; returns notes for its report.

    ``steps``: where calibrated exports of one model share their work (calibrated.SharedSteps); ``echo``:
    where the calibrated quantizer says what it is doing (minutes on a small CPU).
    """
    import onnx

    if options.algo == "calibrated":
        from slmops.convert.calibrated import quantize_calibrated

        return quantize_calibrated(model_dir, calibrated_options(options), echo, steps=steps)
    path = Path(model_dir) / "model.onnx"
    # The quantizer logs a line per node at INFO.
    logging.getLogger("onnxruntime.quantization").setLevel(logging.WARNING)
    quantizer = _quantizer_class()(
        onnx.load(str(path)),
        block_size=options.block_size,
        is_symmetric=options.is_symmetric,
        accuracy_level=options.accuracy_level,
        nodes_to_exclude=list(options.nodes_to_exclude),
        algo_config=_algo_config(options, model_dir),
    )
    try:
        with contextlib.redirect_stdout(io.StringIO()), row_packed_zero_points():  # GPTQ draws a progress bar
            quantizer.process()
    except (ValueError, RuntimeError, AssertionError, IndexError) as exc:
        raise ConversionError(
            f"onnxruntime's {options.algo.upper()} failed at {failing_node(exc) or 'the graph'} "
            f"(block_size={options.block_size}, is_symmetric={str(options.is_symmetric).lower()}): "
            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}; "
            "--algo default (the builder's RTN) at --block-size 32 is the tested setting"
        ) from exc
    for stale in Path(model_dir).glob("model.onnx*"):
        stale.unlink()
    quantizer.model.save_model_to_file(str(path), use_external_data_format=True)
    return []


def calibrated_options(options: QuantizationOptions):
    """slmops' calibrated quantizer at the block size asked, with the LM head asked; an excluded LM head stays fp32."""
    from slmops.convert.calibrated import CalibratedOptions

    head = CALIBRATED_HEADS.get(options.matmul_mixed_precision or "", "screened")
    chosen = CalibratedOptions(block_size=options.block_size, exclude=tuple(options.nodes_to_exclude), head=head)
    return chosen if options.int8_share is None else replace(chosen, int8_share=options.int8_share)


def _quantizer_class():
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    class Quantizer(MatMulNBitsQuantizer):
        """onnxruntime's quantizer, with nodes_to_exclude honoured by GPTQ too (it reads only its node config)."""

        def _generate_q4_node_config(self):
            config = super()._generate_q4_node_config()
            config.update({name: "fp32" for name in self.nodes_to_exclude if name in config})
            return config

    return Quantizer


def _algo_config(options: QuantizationOptions, model_dir: Path):
    from onnxruntime.quantization.matmul_nbits_quantizer import GPTQWeightOnlyQuantConfig, HQQWeightOnlyQuantConfig

    if options.algo == "hqq":
        return HQQWeightOnlyQuantConfig(block_size=options.block_size, bits=4)
    if options.algo == "gptq":
        return GPTQWeightOnlyQuantConfig(
            calibration_data_reader=CalibrationWindows(model_dir, CALIBRATION_WINDOWS, CALIBRATION_TOKENS),
            block_size=GPTQ_BLOCK,
        )
    raise ValueError(f"{options.algo} is a builder algorithm, not a post-build quantizer")


def quantize_export(
    fp32_folder: Path,
    output: Path,
    options: QuantizationOptions,
    name: str | None = None,
    steps: Path | None = None,
    echo=lambda line: None,
) -> Path:
    """An INT4 model folder at ``output`` from an FP32 slmops export, without building again.

    ``slmops convert --algo hqq|gptq`` builds the FP32 graph and quantizes it the same way;
    this starts from an export that already exists (the reference of a sweep or a deploy).
    """
    staging = output.with_name(f".{output.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(fp32_folder, staging)
    try:
        notes = quantize_graph(staging, options, steps, echo)
        _record(staging, options, name or output.name, notes)
        shutil.rmtree(output, ignore_errors=True)
        staging.rename(output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return output


def _record(folder: Path, options: QuantizationOptions, name: str, notes: list[str]) -> None:
    from slmops.convert.report import FILENAME as REPORT
    from slmops.modelfolder.inference_model import FILENAME, InferenceModel

    if (folder / FILENAME).exists():
        InferenceModel.read(folder).model_copy(update={"Name": name}).write(folder)
    report = folder / REPORT
    if report.exists():
        data = json.loads(report.read_text(encoding="utf-8"))
        data.update(
            name=name,
            precision="int4",
            quantization=options.model_dump(),
            output_bytes=sum(item.stat().st_size for item in folder.rglob("*") if item.is_file()),
        )
        data.setdefault("notes", []).extend([note(options), *notes])
        report.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def note(options: QuantizationOptions) -> str:
    """What conversion.json says about a post-build quantization."""
    if options.algo == "calibrated":
        return calibrated_options(options).describe()
    how = {
        "hqq": "onnxruntime's HQQ (a zero point per block, whatever --symmetric says)",
        "gptq": f"onnxruntime's GPTQ, calibrated on the last {CALIBRATION_WINDOWS} x {CALIBRATION_TOKENS} "
        "tokens of the shipped eval text",
    }[options.algo]
    kept = f"; left unquantized: {', '.join(options.nodes_to_exclude)}" if options.nodes_to_exclude else ""
    return f"int4 MatMuls quantized from the fp32 graph by {how}{kept}"
