"""Conversion of fine-tuned models to ONNX for onnxruntime-genai.

from slmops.convert import convert
report = convert(Path("my-model"), Path("out/my-model-int4"), precision="int4")
"""

from slmops.convert.convert import convert
from slmops.convert.options import PRECISIONS, QuantizationOptions
from slmops.convert.report import ConversionReport
from slmops.convert.sources import SUPPORTED_ARCHITECTURES, embedded_model

__all__ = [
    "convert",
    "embedded_model",
    "ConversionReport",
    "QuantizationOptions",
    "PRECISIONS",
    "SUPPORTED_ARCHITECTURES",
]
