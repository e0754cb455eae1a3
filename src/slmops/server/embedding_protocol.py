"""The bodies of ``POST /v1/embeddings``, as OpenAI's API defines them."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_INPUTS = 2048  # OpenAI's limit on inputs per request

# The schema's shapes (for /openapi.json); `_shape` below checks them first with one clear message.
TokenId = Annotated[int, Field(ge=0)]
Text = Annotated[str, Field(min_length=1)]
SHAPE = "a non-empty text, a list of texts, a list of token ids, or a list of token-id lists"


def _token_ids(value: object) -> bool:
    return isinstance(value, list) and bool(value) and all(_token_id(item) for item in value)


def _token_id(value: object) -> bool:
    # JSON has one number type: 3.0 is the integer 3, as JSON Schema and pydantic read it
    whole = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    return whole and not isinstance(value, bool) and value >= 0  # type: ignore[operator]


class EmbeddingRequest(BaseModel):
    """``POST /v1/embeddings``: exactly OpenAI's fields; any other is a 400 naming it.

    Unlike a chat request, whose clients send many harmless extras, an embeddings
    request has five fields, and an unknown one (``pooling``, ``normalize``, ...) would
    be a wish about the vectors that slmops would silently not grant.
    """

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="An embedding model: one converted with `slmops convert --task embedding`.")
    input: (
        Text
        | Annotated[list[Text], Field(min_length=1, max_length=MAX_INPUTS)]
        | Annotated[list[TokenId], Field(min_length=1)]
        | Annotated[list[Annotated[list[TokenId], Field(min_length=1)]], Field(min_length=1, max_length=MAX_INPUTS)]
    ) = Field(
        description="A text, a list of texts, a list of token ids, or a list of token-id lists "
        f"(at most {MAX_INPUTS} inputs)."
    )
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="float: lists of numbers; base64: each vector's little-endian float32 bytes, base64."
    )
    dimensions: int | None = Field(
        None, ge=1, description="Keep the first this many values of each vector, scaled to length 1 again."
    )
    user: str | None = Field(None, description="An end-user id (accepted, unused).")

    @field_validator("input", mode="before")
    @classmethod
    def _shape(cls, value: object) -> object:
        """One clear message for any other shape (the union's own errors name each member)."""
        if isinstance(value, str) and value:
            return value
        if not isinstance(value, list) or not value:
            raise ValueError(f"must be {SHAPE}")
        if len(value) > MAX_INPUTS:
            raise ValueError(f"holds {len(value)} inputs; at most {MAX_INPUTS} per request")
        if all(isinstance(item, str) and item for item in value) or _token_ids(value):
            return value
        if all(_token_ids(item) for item in value):
            return value
        raise ValueError(f"must be {SHAPE} (token ids are integers from 0, texts are not empty)")

    def inputs(self) -> list[str] | list[list[int]]:
        """The inputs as a list: of texts, or of token-id lists."""
        value: Any = self.input
        if isinstance(value, str):
            return [value]
        if all(isinstance(item, int) for item in value):
            return [list(value)]
        return list(value)


class EmbeddingItem(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int = Field(description="The input's position in the request.")
    embedding: list[float] | str = Field(description="The vector: numbers, or base64 of little-endian float32.")


class EmbeddingUsage(BaseModel):
    prompt_tokens: int = Field(description="Tokens of all the inputs.")
    total_tokens: int = Field(description="The same: embeddings generate no tokens.")


class EmbeddingList(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingItem] = Field(description="One vector per input, in the order of the inputs.")
    model: str = Field(description="The model that made them.")
    usage: EmbeddingUsage = Field(description="Tokens read.")
