"""`inference_model.json`: the file that makes a folder a model in the cache.

The format is the one Foundry Local reads for custom models. Only ``Name`` is
required; ``PromptTemplate`` tells how to turn chat messages into a prompt string,
with ``{Content}`` standing for a message's text. Keys this model does not know are
kept, so rewriting a file never loses what another tool wrote.

How :meth:`InferenceModel.render` builds a prompt from ``PromptTemplate``:

- the system message (``system``), then every turn of the history (``user``,
  ``assistant``, ``tool``), then ``prompt`` for the last user turn, which ends
  where the answer starts;
- turns are joined by ``separator`` (without a generation prompt, every turn
  ends with it); when the file does not say, it is what
  ``prompt`` puts between a user turn and the assistant's header (``"\\n"`` for
  the ChatML example of the docs, nothing for Llama-3 or Gemma templates);
- without a ``system`` template, system text opens the first user turn (as
  Gemma's own chat template does); without ``user``, history user turns use
  ``prompt``; without ``tool``, tool results are user turns; ``{Tool}`` in
  ``tool`` is the tool's result, like ``{Content}``;
- ``bos`` (an slmops addition) opens the whole prompt: the BOS token a chat template
  writes before the first turn, which onnxruntime-genai's tokenizer does not add;
- a file without ``prompt`` and ``user`` has no usable template: ``render``
  returns None and the caller uses the tokenizer's own chat template.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from slmops.errors import CacheError
from slmops.files import write_json
from slmops.modelfolder.messages import ROLES, normalize

FILENAME = "inference_model.json"
PLACEHOLDER = "{Content}"
TOOL_PLACEHOLDER = "{Tool}"


class Template(BaseModel):
    model_config = ConfigDict(extra="allow")

    system: str | None = Field(None, description="A system message; {Content} is its text.")
    user: str | None = Field(None, description="A user turn of the history; {Content} is its text.")
    assistant: str | None = Field(None, description="An assistant turn; {Content} is its text.")
    prompt: str | None = Field(None, description="The last user turn, ending where the answer starts.")
    tool: str | None = Field(None, description="A tool result turn; {Content} or {Tool} is its text.")
    separator: str | None = Field(
        None, description="Text between two turns; inferred from `prompt` and `user` when absent."
    )
    bos: str | None = Field(
        None,
        description="Text that opens every prompt: the BOS token the chat template writes "
        "(onnxruntime-genai's tokenizer adds none to an encoded prompt).",
    )

    @model_validator(mode="after")
    def _placeholders(self) -> Template:
        for role in ("system", "user", "assistant", "prompt"):
            text = getattr(self, role)
            if text is not None and PLACEHOLDER not in text:
                raise ValueError(f"PromptTemplate.{role} has no {PLACEHOLDER} placeholder")
        if self.tool is not None and PLACEHOLDER not in self.tool and TOOL_PLACEHOLDER not in self.tool:
            raise ValueError(f"PromptTemplate.tool has no {PLACEHOLDER} or {TOOL_PLACEHOLDER} placeholder")
        return self

    @property
    def usable(self) -> bool:
        return self.prompt is not None or self.user is not None

    def render(self, messages: Iterable[Any], add_generation_prompt: bool = True) -> str:
        """The prompt string for ``messages`` (dicts or objects with role and content)."""
        turns = _merge_orphan_system(_turns(messages), has_system=self.system is not None)
        ends_with_user = bool(turns) and turns[-1][0] == "user"
        pieces = []
        for index, (role, text) in enumerate(turns):
            last = index == len(turns) - 1
            if role == "user" and last and add_generation_prompt:
                pieces.append(_fill(self._prompt(), text))
            else:
                pieces.append(_fill(self._turn(role), text))
        separator = self.inferred_separator()
        start = self.bos or ""
        if not add_generation_prompt:  # every turn ends with the separator, as chat templates write it
            return start + "".join(piece + separator for piece in pieces)
        if not ends_with_user:
            pieces.append(self.assistant_header())
        return start + separator.join(pieces)

    def assistant_header(self) -> str:
        """What opens an assistant turn: the `assistant` template before its {Content}."""
        return (self.assistant or PLACEHOLDER).split(PLACEHOLDER, 1)[0]

    def inferred_separator(self) -> str:
        if self.separator is not None:
            return self.separator
        if self.prompt is None or self.user is None or PLACEHOLDER not in self.user:
            return ""
        user_head, user_tail = self.user.split(PLACEHOLDER, 1)
        if not self.prompt.startswith(user_head) or PLACEHOLDER not in self.prompt:
            return ""
        prompt_tail = self.prompt.split(PLACEHOLDER, 1)[1]
        if not prompt_tail.startswith(user_tail):
            return ""
        between = prompt_tail[len(user_tail) :]
        header = self.assistant_header()
        for candidate in (header, header.rstrip()):
            if candidate and between.endswith(candidate):
                return between[: len(between) - len(candidate)]
        return ""

    def _prompt(self) -> str:
        if self.prompt is not None:
            return self.prompt
        return self.inferred_separator().join([self.user or PLACEHOLDER, self.assistant_header()])

    def _turn(self, role: str) -> str:
        if role == "system":
            return self.system or PLACEHOLDER
        if role == "assistant":
            return self.assistant or PLACEHOLDER
        if role == "tool" and self.tool is not None:
            return self.tool
        return self.user or self.prompt or PLACEHOLDER


class Defaults(BaseModel):
    model_config = ConfigDict(extra="allow")

    max_length: int | None = Field(None, gt=0, description="Context length: prompt plus answer, in tokens.")
    temperature: float | None = Field(None, ge=0, description="Sampling temperature; 0 is greedy.")
    top_p: float | None = Field(None, gt=0, le=1, description="Nucleus sampling probability mass.")
    top_k: int | None = Field(None, ge=0, description="Sample among the k most likely tokens.")
    repetition_penalty: float | None = Field(None, gt=0, description="Penalty on repeated tokens; 1 is none.")


GENERATION_KEYS = ("max_length", "temperature", "top_p", "top_k", "repetition_penalty")

# The ModelConfig of the documented inference_model.json example.
DEFAULT_MODEL_CONFIG = {"max_length": 2048, "temperature": 0.7, "top_p": 0.9, "repetition_penalty": 1.1}


def default_model_config(context_length: int | None = None, **sampling: float) -> Defaults:
    """The ModelConfig slmops writes for a new model: the documented example, ``sampling``
    values over it, and ``max_length`` at most the model's ``context_length``."""
    config: dict[str, Any] = {**DEFAULT_MODEL_CONFIG, **sampling}
    if context_length:
        config["max_length"] = min(config["max_length"], context_length)
    return Defaults.model_validate(config)


EMBEDDING_TASK = "embedding"


class EmbeddingSettings(BaseModel):
    """How an embedding model turns its last hidden state into one vector per input."""

    model_config = ConfigDict(extra="allow")

    pooling: Literal["mean", "last"] = Field(
        "mean", description="mean: the average over the input's tokens; last: the last token's state."
    )
    normalize: bool = Field(True, description="Scale every vector to length 1 (cosine = dot product).")
    dimensions: int | None = Field(None, gt=0, description="Length of the vectors: the model's hidden size.")
    output: str = Field("hidden_states", description="The ONNX output that holds the last hidden state.")


class InferenceModel(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    Name: str = Field(description="The model's name in the cache.")
    Description: str | None = Field(None, description="Free text shown by `slmops model info`.")
    Version: str | None = Field(None, description="The model's version.")
    PromptTemplate: Template | None = Field(None, description="How chat messages become a prompt.")
    ModelConfig: Defaults | None = Field(None, description="Default generation options.")
    Task: Literal["text-generation", "embedding"] | None = Field(
        None, description="What the model makes: text (the default) or embedding vectors (slmops)."
    )
    Embedding: EmbeddingSettings | None = Field(None, description="Pooling of an embedding model (slmops).")

    @classmethod
    def read(cls, folder: Path) -> InferenceModel:
        path = Path(folder) / FILENAME
        try:
            return cls.model_validate(json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError as exc:
            raise CacheError(f"{path} does not exist.") from exc
        except OSError as exc:  # a folder of that name, no permission, ...
            raise CacheError(f"{path} cannot be read ({exc.strerror or exc}).") from exc
        except json.JSONDecodeError as exc:
            raise CacheError(f"{path} is not valid JSON ({exc}).") from exc
        except UnicodeDecodeError as exc:
            raise CacheError(f"{path} is invalid: not UTF-8 text.") from exc
        except ValueError as exc:  # JSONDecodeError and ValidationError are both ValueErrors
            raise CacheError(f"{path} is invalid: {_first_line(exc)}") from exc

    def write(self, folder: Path) -> Path:
        """Write atomically: a reader sees the old file or the new one, never half of one."""
        return write_json(Path(folder) / FILENAME, self.to_json())

    def to_json(self) -> dict:
        return self.model_dump(mode="json", exclude_none=True)

    @property
    def is_embedding(self) -> bool:
        """True for a model converted with ``--task embedding``: it makes vectors, not text."""
        return self.Task == EMBEDDING_TASK

    @property
    def has_template(self) -> bool:
        """True when `render` can build prompts; False means: use the tokenizer's chat template."""
        return self.PromptTemplate is not None and self.PromptTemplate.usable

    def render(self, messages: Iterable[Any], add_generation_prompt: bool = True) -> str | None:
        """Build the prompt for a chat from ``PromptTemplate``.

        Args:
            messages: OpenAI-style messages: dicts (or objects) with ``role``
                (system, developer, user, assistant, tool) and ``content`` (a string,
                or a list of ``{"type": "text", "text": ...}`` parts).
            add_generation_prompt: end with the opening of the assistant's answer
                (the ``prompt`` template for a final user turn).

        Returns:
            The prompt string, or None when this file has no usable PromptTemplate:
            the caller then applies the tokenizer's chat template instead.

        Raises:
            UsageError: a message has an unknown role or content that is not text
                (an image or audio part, say).
        """
        if self.PromptTemplate is None or not self.PromptTemplate.usable:
            return None
        return self.PromptTemplate.render(messages, add_generation_prompt)

    def generation_defaults(self) -> dict:
        """ModelConfig's generation options that are set, e.g. ``{"temperature": 0.7}``."""
        if self.ModelConfig is None:
            return {}
        values = {key: getattr(self.ModelConfig, key) for key in GENERATION_KEYS}
        return {key: value for key, value in values.items() if value is not None}


def _fill(template: str, text: str) -> str:
    # One pass each, so braces in a message are never read as placeholders.
    if TOOL_PLACEHOLDER in template and PLACEHOLDER not in template:
        return template.replace(TOOL_PLACEHOLDER, text)
    return template.replace(PLACEHOLDER, text)


def _turns(messages: Iterable[Any]) -> list[tuple[str, str]]:
    """(template role, text) of each message, by the one rule of :mod:`slmops.modelfolder.messages`."""
    return [(ROLES[message["role"]], message["content"]) for message in normalize(messages, allow_empty=True)]


def _merge_orphan_system(turns: list[tuple[str, str]], has_system: bool) -> list[tuple[str, str]]:
    """Without a system template, system text opens the next user turn."""
    if has_system:
        return turns
    merged, pending = [], []
    for role, text in turns:
        if role == "system":
            pending.append(text)
        elif role == "user" and pending:
            merged.append((role, "\n\n".join([*pending, text])))
            pending = []
        else:
            merged.append((role, text))
    if pending:  # a system message with no user turn after it
        merged.append(("user", "\n\n".join(pending)))
    return merged


def _first_line(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"]) or "file"
        return f"{where}: {error['msg']}"
    return str(exc).splitlines()[0]
