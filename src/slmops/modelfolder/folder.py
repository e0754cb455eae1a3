"""A model folder: an onnxruntime-genai model (``genai_config.json``) and its ``inference_model.json``.

Every part of slmops that runs, lists, measures or serves a model reads the folder
into a :class:`ModelFolder` here, so the name, the context length and the default
generation settings of a model are worked out in one place.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slmops.errors import ModelNotFound, SlmopsError
from slmops.modelfolder.inference_model import FILENAME as INFERENCE_MODEL
from slmops.modelfolder.inference_model import InferenceModel

GENAI_CONFIG = "genai_config.json"
DEFAULT_CONTEXT_LENGTH = 2048  # assumed when genai_config.json names no context


@dataclass
class ModelFolder:
    """A model folder as slmops reads it.

    Attributes:
        path: the folder.
        genai_config: its parsed ``genai_config.json``.
        inference_model: its parsed ``inference_model.json``, or None when it has none.
    """

    path: Path
    genai_config: dict[str, Any] = field(repr=False)
    inference_model: InferenceModel | None = None

    @property
    def name(self) -> str:
        """The ``Name`` of its inference_model.json, else the folder's name."""
        return self.inference_model.Name if self.inference_model else self.path.name

    @property
    def is_embedding(self) -> bool:
        """True for an embedding model (``Task: embedding``): it makes vectors, not text."""
        return self.inference_model is not None and self.inference_model.is_embedding

    @property
    def search(self) -> dict[str, Any]:
        """The ``search`` section of genai_config.json: the exporter's generation defaults."""
        search = self.genai_config.get("search")
        return search if isinstance(search, dict) else {}

    @property
    def model_config(self) -> dict[str, Any]:
        """The generation settings its inference_model.json's ``ModelConfig`` sets, e.g. ``{"temperature": 0.7}``."""
        return self.inference_model.generation_defaults() if self.inference_model else {}

    @property
    def context_length(self) -> int:
        """Tokens of prompt plus answer a run of this model holds.

        The model's own context (:func:`genai_context_length`, else 2048), capped by
        ``ModelConfig.max_length``: inference_model.json may ask for less than the
        model can hold, never more.
        """
        length = genai_context_length(self.genai_config) or DEFAULT_CONTEXT_LENGTH
        cap = self.model_config.get("max_length")
        return min(length, cap) if cap else length


def genai_context_length(genai_config: dict[str, Any] | None) -> int | None:
    """The context the ONNX model was built for: ``model.context_length``, else
    ``search.max_length`` of genai_config.json; None when it gives neither."""
    if not genai_config:
        return None
    model = genai_config.get("model")
    search = genai_config.get("search")
    for value in (
        model.get("context_length") if isinstance(model, dict) else None,
        search.get("max_length") if isinstance(search, dict) else None,
    ):
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def read_model_folder(path: str | Path) -> ModelFolder:
    """Read the model folder at ``path``.

    Raises:
        ModelNotFound: ``path`` is not a folder holding genai_config.json.
        SlmopsError: genai_config.json cannot be read or is not a JSON object.
        CacheError: inference_model.json is there but invalid.
    """
    path = Path(path).expanduser()
    if not (path / GENAI_CONFIG).is_file():
        raise ModelNotFound(f"{path} is not a model folder (no {GENAI_CONFIG}); give a converted model folder.")
    genai_config = read_genai_config(path)
    inference_model = InferenceModel.read(path) if (path / INFERENCE_MODEL).is_file() else None
    return ModelFolder(path, genai_config, inference_model)


def read_genai_config(folder: str | Path) -> dict[str, Any]:
    """The parsed genai_config.json of ``folder``.

    Raises:
        SlmopsError: it is missing, unreadable, not JSON or not a JSON object.
    """
    path = Path(folder) / GENAI_CONFIG
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SlmopsError(f"{path} could not be read ({_first_line(exc)}); is the model folder complete?") from exc
    if not isinstance(data, dict):
        raise SlmopsError(f"{path} is not a JSON object; is the model folder complete?")
    return data


def _first_line(exc: Exception) -> str:
    lines = str(exc).splitlines()
    return lines[0] if lines else type(exc).__name__
