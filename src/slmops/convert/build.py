"""The onnxruntime-genai model builder, run as a library with its output tamed.

The builder prints a line per layer and logs every quantized node; slmops keeps
all of it in a log file, turns the lines that mark a stage into progress updates,
and shows the raw output only at --log_level 3 and above.
"""

from __future__ import annotations

import contextlib
import gc
import io
import logging
import re
import sys
from collections.abc import Callable
from pathlib import Path

from slmops.errors import ConversionError

# builder output line -> the stage that starts with it
_STAGE_LINES = (
    (re.compile(r"^Reading (embedding layer|layer \d+)"), "build graph"),
    (re.compile(r"^Saving ONNX model"), "quantize and save"),
    (re.compile(r"^Saving GenAI config"), "write configs"),
)
_LAYER = re.compile(r"^Reading layer (\d+)")


class _BuilderOutput(io.TextIOBase):
    """A stream that logs everything and reports stage changes and layers read."""

    def __init__(self, log, on_line: Callable[[str, int | None], None], echo: bool):
        self.log, self.on_line, self.echo, self.buffer_ = log, on_line, echo, ""
        self.layer: str | None = None  # the last stage or layer the builder announced

    def write(self, text: str) -> int:
        self.log.write(text)
        if self.echo and sys.__stdout__ is not None:
            sys.__stdout__.write(text)
        self.buffer_ += text
        while "\n" in self.buffer_:
            line, self.buffer_ = self.buffer_.split("\n", 1)
            self._line(line.strip())
        return len(text)

    def _line(self, line: str) -> None:
        layer = _LAYER.match(line)
        for pattern, stage in _STAGE_LINES:
            if pattern.match(line):
                self.layer = f"layer {layer.group(1)}" if layer else stage
                self.on_line(stage, int(layer.group(1)) if layer else None)
                return


def run_builder(
    hf_dir: Path,
    out_dir: Path,
    precision: str,
    extra_options: dict[str, str],
    cache_dir: Path,
    log_path: Path,
    on_stage: Callable[[str, int | None], None] = lambda stage, layer: None,
    log_level: int = 1,
) -> None:
    """Export `hf_dir` to ONNX in `out_dir` with the builder; its output goes to `log_path`."""
    from onnxruntime_genai.models.builder import create_model, parse_extra_options

    from slmops.convert import builder_fixes
    from slmops.convert.quantizer_fixes import row_packed_zero_points

    pairs = [f"{key}={value}" for key, value in extra_options.items()]
    echo = log_level >= 3
    quant_logger = logging.getLogger("onnxruntime.quantization")
    previous_level = quant_logger.level
    with open(log_path, "a", encoding="utf-8") as log, _quiet_logging(quant_logger, echo):
        stream = _BuilderOutput(log, on_stage, echo)
        try:
            with contextlib.redirect_stdout(stream), contextlib.redirect_stderr(stream), row_packed_zero_points():
                options = parse_extra_options(None, str(hf_dir), str(out_dir), precision, "cpu", str(cache_dir), pairs)
                graph_fixes = builder_fixes.prepare(options["hf_details"]["hf_config"])
                create_model(None, str(hf_dir), str(out_dir), precision, "cpu", str(cache_dir), **options)
            # The builder leaves its torch model in reference cycles: 2.4 GB of a 0.5B model held
            # through everything after it (calibration, quantization) until a collection.
            gc.collect()
            for fix in graph_fixes:
                fix(out_dir)
        except (ValueError, NotImplementedError, OSError, RuntimeError, AssertionError) as exc:
            log.flush()
            raise ConversionError(_failure(exc, precision, extra_options, stream.layer, _keep_log(log_path))) from exc
        except (KeyError, AttributeError, TypeError, IndexError) as exc:
            # A config the builder does not expect: name the exception, a bare "'rope_type'" says nothing.
            log.flush()
            raise ConversionError(
                f"the ONNX builder cannot read this model's config ({type(exc).__name__}: {_first_line(exc)}); "
                f"full log: {_keep_log(log_path)}"
            ) from exc
        finally:
            quant_logger.setLevel(previous_level)


@contextlib.contextmanager
def _quiet_logging(logger: logging.Logger, echo: bool):
    """Send the quantizer's per-node INFO lines to the log file only (its handler writes to stderr)."""
    handlers = [h for h in logging.getLogger().handlers + logger.handlers if isinstance(h, logging.StreamHandler)]
    saved = [(h, h.level) for h in handlers]
    if not echo:
        for handler in handlers:
            handler.setLevel(logging.WARNING)
    # k_quant's logger: a handler made after this point (its module's basicConfig) has no filter
    filtered = [*handlers, logging.getLogger("neural_compressor")]
    for item in filtered:
        item.addFilter(_not_misleading)
    try:
        yield
    finally:
        for handler, level in saved:
            handler.setLevel(level)
        for item in filtered:
            item.removeFilter(_not_misleading)


# Lines of the quantizers that mislead a user of slmops: an int8 build logs an ERROR for the
# embedding Gather it skips, whose LM head's int8 blocks slmops then shares (convert/tied_head.py);
# k_quant warns about a >2 GB graph, advice to its caller that slmops cannot act on.
_MISLEADING = ("Gather only supports 4 bits", "Model size > 2GB")


def _not_misleading(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith(_MISLEADING)


def _failure(exc: Exception, precision: str, extra_options: dict[str, str], stage: str | None, log: Path) -> str:
    """One line: what failed, where, with which settings, and what to use instead."""
    where = failing_node(exc) or stage or "the start of the build"
    quantization = {key: value for key, value in extra_options.items() if key in _QUANTIZATION_KEYS}
    settings = ", ".join(f"{key}={value}" for key, value in quantization.items())
    advice = (
        f"the builder's defaults (--precision {precision} with --block-size 32 --algo default --symmetric) "
        "are the tested setting"
        if quantization
        else "no quantization setting is involved; see the log"
    )
    return (
        f"the ONNX builder failed at {where} ({precision}{', ' + settings if settings else ''}): "
        f"{_first_line(exc)}; {advice} (full log: {log})"
    )


# builder extra_options that are quantization settings (named in a failure)
_QUANTIZATION_KEYS = (
    "block_size",
    "is_symmetric",
    "accuracy_level",
    "algo_config",
    "matmul_mixed_precision",
    "nodes_to_exclude",
    "shared_embeddings",
)


def failing_node(exc: BaseException) -> str | None:
    """The ONNX node (a layer's MatMul) being quantized when ``exc`` was raised, from the traceback."""
    tb, found = exc.__traceback__, None
    while tb is not None:
        node = tb.tb_frame.f_locals.get("node")
        name = getattr(node, "name", None)
        if name and getattr(node, "op_type", None):
            found = str(name)  # the innermost one wins
        tb = tb.tb_next
    return found


def _keep_log(log_path: Path) -> Path:
    """The build log outlives the staging folder a failed conversion removes: copied to SLMOPS_HOME/logs."""
    import shutil
    import time

    from slmops import settings

    if not log_path.exists():
        return log_path
    folder = settings.logs_dir()
    folder.mkdir(parents=True, exist_ok=True)
    kept = folder / f"convert-{time.strftime('%Y%m%d-%H%M%S')}.log"
    shutil.copyfile(log_path, kept)
    return kept


def _first_line(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
