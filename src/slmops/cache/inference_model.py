"""`inference_model.json`: the file that makes a folder a model in the cache.

The format is the one Foundry Local reads for custom models. Only ``Name`` is
required; ``PromptTemplate`` tells how to turn chat messages into a prompt string,
with ``{Content}`` standing for a message's text. Keys this model does not know are
kept, so rewriting a file never loses what another tool wrote.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from slmops.errors import CacheError

FILENAME = "inference_model.json"


class Template(BaseModel):
    model_config = ConfigDict(extra="allow")

    system: str | None = Field(None, description="A system message; {Content} is its text.")
    user: str | None = Field(None, description="A user turn of the history; {Content} is its text.")
    assistant: str | None = Field(None, description="An assistant turn; {Content} is its text.")
    prompt: str | None = Field(None, description="The last user turn, ending where the answer starts.")
    tool: str | None = Field(None, description="A tool result turn; {Content} or {Tool} is its text.")


class Defaults(BaseModel):
    model_config = ConfigDict(extra="allow")

    max_length: int | None = Field(None, gt=0, description="Context length: prompt plus answer, in tokens.")
    temperature: float | None = Field(None, ge=0, description="Sampling temperature; 0 is greedy.")
    top_p: float | None = Field(None, gt=0, le=1, description="Nucleus sampling probability mass.")
    top_k: int | None = Field(None, ge=0, description="Sample among the k most likely tokens.")
    repetition_penalty: float | None = Field(None, gt=0, description="Penalty on repeated tokens; 1 is none.")


class InferenceModel(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    Name: str = Field(description="The model's name in the cache.")
    Description: str | None = Field(None, description="Free text shown by `slmops model info`.")
    Version: str | None = Field(None, description="The model's version.")
    PromptTemplate: Template | None = Field(None, description="How chat messages become a prompt.")
    ModelConfig: Defaults | None = Field(None, description="Default generation options.")

    @classmethod
    def read(cls, folder: Path) -> "InferenceModel":
        path = Path(folder) / FILENAME
        try:
            return cls.model_validate(json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError as exc:
            raise CacheError(f"{path} does not exist.") from exc
        except ValueError as exc:  # JSONDecodeError and ValidationError are both ValueErrors
            raise CacheError(f"{path} is invalid: {_first_line(exc)}") from exc

    def write(self, folder: Path) -> Path:
        """Write atomically: a reader sees the old file or the new one, never half of one."""
        path = Path(folder) / FILENAME
        tmp = path.with_name(f".{FILENAME}.tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, path)
        return path

    def to_json(self) -> dict:
        return self.model_dump(mode="json", exclude_none=True)


def _first_line(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"]) or "file"
        return f"{where}: {error['msg']}"
    return str(exc).splitlines()[0]
