"""`conversion.json`: what was converted, how, and what it cost."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

from slmops.machine import describe_cpu

FILENAME = "conversion.json"
_LIBRARIES = ("slmops", "onnxruntime-genai", "onnxruntime", "onnx", "torch", "transformers", "gguf", "peft")


@dataclass
class ConversionReport:
    """The result of a conversion, also written to ``conversion.json`` in the output folder."""

    source: str
    source_kind: str
    source_sha256: str
    output: str
    name: str
    precision: str
    quantization: dict
    builder_options: dict
    source_bytes: int
    output_bytes: int = 0
    wall_seconds: float = 0.0
    peak_rss_mb: float = 0.0
    stages: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    # a GGUF source's MatMul weights per ggml type: taken exactly or requantized, at what weight error
    gguf_weights: dict = field(default_factory=dict)
    reused: bool = False
    # what the wall time was measured on (None: a report written before it was recorded)
    cpu_info: dict | None = field(default_factory=lambda: describe_cpu().to_json())

    @property
    def size_ratio(self) -> float:
        return self.output_bytes / self.source_bytes if self.source_bytes else 0.0

    def to_json(self) -> dict:
        data = asdict(self)
        data.pop("reused")
        return data

    def write(self, folder: Path) -> Path:
        path = Path(folder) / FILENAME
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def read(cls, folder: Path) -> ConversionReport:
        data = json.loads((Path(folder) / FILENAME).read_text(encoding="utf-8"))
        data.setdefault("cpu_info", None)  # not this machine's: the conversion ran earlier, maybe elsewhere
        return cls(**{key: value for key, value in data.items() if key in cls.__dataclass_fields__})


def library_versions() -> dict[str, str]:
    versions = {"python": sys.version.split()[0]}
    for name in _LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions
