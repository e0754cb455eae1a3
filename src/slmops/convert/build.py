"""The onnxruntime-genai model builder, run as a library with its output tamed.

The builder prints a line per layer and logs every quantized node; slmops keeps
all of it in a log file, turns the lines that mark a stage into progress updates,
and shows the raw output only at --log_level 3 and above.
"""

from __future__ import annotations

import contextlib
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

    pairs = [f"{key}={value}" for key, value in extra_options.items()]
    echo = log_level >= 3
    quant_logger = logging.getLogger("onnxruntime.quantization")
    previous_level = quant_logger.level
    with open(log_path, "a", encoding="utf-8") as log, _quiet_logging(quant_logger, echo):
        stream = _BuilderOutput(log, on_stage, echo)
        try:
            with contextlib.redirect_stdout(stream), contextlib.redirect_stderr(stream):
                options = parse_extra_options(None, str(hf_dir), str(out_dir), precision, "cpu", str(cache_dir), pairs)
                graph_fixes = builder_fixes.prepare(options["hf_details"]["hf_config"])
                create_model(None, str(hf_dir), str(out_dir), precision, "cpu", str(cache_dir), **options)
            for fix in graph_fixes:
                fix(out_dir)
        except (ValueError, NotImplementedError, OSError, RuntimeError, AssertionError) as exc:
            raise ConversionError(f"the ONNX builder failed: {_first_line(exc)} (full log: {log_path})") from exc
        except (KeyError, AttributeError, TypeError, IndexError) as exc:
            # A config the builder does not expect: name the exception, a bare "'rope_type'" says nothing.
            raise ConversionError(
                f"the ONNX builder cannot read this model's config ({type(exc).__name__}: {_first_line(exc)}); "
                f"full log: {log_path}"
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
    try:
        yield
    finally:
        for handler, level in saved:
            handler.setLevel(level)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
