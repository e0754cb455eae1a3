"""The request and response bodies of the HTTP API, as OpenAI's API defines them.

Every request is parsed into one of these models, so validation errors, the
OpenAPI document at /openapi.json and the code all come from one place. Fields
OpenAI defines that cannot change the answer (``user``, ``metadata``, ``store``, ...)
are accepted and ignored, so clients that send them keep working; those that would
change it and slmops does not implement are refused by :mod:`slmops.server.policy`.
"""

from __future__ import annotations

from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from slmops.runtime.logprobs import MAX_TOP

MAX_PROMPTS = 64  # prompts in one completion request
# Choices per request: each is a row of the batch.
MAX_N = 16
# Answers are capped unless the client asks for more: an uncapped request would
# reserve a KV cache for the whole context (hundreds of MB on an 8k model).
DEFAULT_MAX_TOKENS = 512


def unsupported(description: str, **schema: Any) -> Any:
    """A field slmops refuses unless it is empty or neutral (:mod:`slmops.server.policy` says why, naming it).

    The OpenAPI document shows only the accepted values; ``schema`` narrows a number's range.
    """
    empty = {"maxLength": 0, "maxItems": 0, "maxProperties": 0}
    return Field(None, description=description, json_schema_extra={**empty, **schema})


class Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class FunctionCall(Lenient):
    name: str = Field(description="The function's name.")
    arguments: str = Field("{}", description="The arguments, a JSON object as text.")


class ToolCall(Lenient):
    id: str = Field(description="The call's id; a tool message answers it with tool_call_id.")
    type: Literal["function"] = Field("function", description="Always 'function'.")
    function: FunctionCall = Field(description="The function called and its arguments.")


class Message(Lenient):
    role: Literal["system", "developer", "user", "assistant", "tool"] = Field(description="Who wrote the message.")
    content: str | list[dict[str, Any]] | None = Field(None, description="Text, or a list of text parts.")
    name: str | None = Field(None, description="The author's name (ignored).")
    tool_calls: list[ToolCall] | None = Field(None, description="Calls an assistant turn made.")
    tool_call_id: str | None = Field(None, description="The call a tool message answers.")


class StreamOptions(Lenient):
    include_usage: bool = Field(False, description="Send a last chunk carrying the token usage.")


class JsonSchemaFormat(Lenient):
    name: str = Field("response", description="The schema's name.")
    schema_: dict[str, Any] = Field(
        default_factory=dict, alias="schema", description="A JSON Schema the answer must match."
    )
    strict: bool | None = Field(None, description="Accepted; the schema is always enforced.")


class ResponseFormat(Lenient):
    type: Literal["text", "json_object", "json_schema"] = Field(
        description="text, any JSON object, or JSON matching a schema."
    )
    json_schema: JsonSchemaFormat | None = Field(None, description="The schema, for type json_schema.")


class FunctionDefinition(Lenient):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="The function's name.")
    description: str | None = Field(None, description="What the function does, shown to the model.")
    parameters: dict[str, Any] = Field(
        default_factory=lambda: {"type": "object", "properties": {}}, description="A JSON Schema for the arguments."
    )


class Tool(Lenient):
    type: Literal["function"] = Field("function", description="Always 'function'.")
    function: FunctionDefinition = Field(description="The function the model may call.")


class NamedFunction(Lenient):
    name: str = Field(description="The function that must be called.")


class NamedToolChoice(Lenient):
    type: Literal["function"] = Field("function", description="Always 'function'.")
    function: NamedFunction = Field(description="The function that must be called.")


class SamplingFields(Lenient):
    """What chat and text completions share."""

    model: str = Field(min_length=1, description="A model name from /v1/models or the cache.")
    stream: bool = Field(False, description="Send the answer as server-sent events, token by token.")
    stream_options: StreamOptions | None = Field(None, description="Streaming options.")
    max_tokens: int | None = Field(None, ge=1, description=f"Most tokens to generate (default {DEFAULT_MAX_TOKENS}).")
    temperature: float | None = Field(None, ge=0, le=2, description="Sampling temperature; 0 is greedy.")
    top_p: float | None = Field(None, gt=0, le=1, description="Nucleus sampling mass.")
    top_k: int | None = Field(None, ge=0, description="Sample among the k most likely tokens.")
    seed: int | None = Field(None, ge=0, le=2**31 - 1, description="Same seed and options, same answer.")
    random_seed: int | None = Field(None, ge=0, le=2**31 - 1, description="Foundry Local's name for seed.")
    stop: str | Annotated[list[str], Field(max_length=4)] | None = Field(
        None, description="Up to 4 strings that end the answer."
    )
    presence_penalty: float | None = unsupported("Not supported: only 0 is accepted.", minimum=0, maximum=0)
    frequency_penalty: float | None = unsupported("Not supported: only 0 is accepted.", minimum=0, maximum=0)
    logit_bias: dict[str, float] | None = unsupported("Not supported: only an empty map is accepted.")
    repetition_penalty: float | None = Field(
        None, gt=0, le=10, description="Above 1 discourages repeats (wins over the penalties above)."
    )
    n: int = Field(1, ge=1, le=MAX_N, description="Answers to generate, each a choice (rows of one batch).")
    user: str | None = Field(None, description="An end-user id (ignored).")
    metadata: dict[str, Any] | None = Field(None, description="Accepted and ignored.")
    store: bool | None = Field(None, description="Accepted and ignored: nothing is stored.")
    service_tier: str | None = Field(None, description="Accepted and ignored.")


# top_logprobs asks for alternatives to the log-probabilities that logprobs asks for.
TOP_NEEDS_LOGPROBS: dict[str, Any] = {
    "if": {"properties": {"top_logprobs": {"type": "integer", "minimum": 1}}, "required": ["top_logprobs"]},
    "then": {"properties": {"logprobs": {"const": True}}, "required": ["logprobs"]},
}


class ChatRequest(SamplingFields):
    model_config = ConfigDict(json_schema_extra=TOP_NEEDS_LOGPROBS)

    messages: list[Message] = Field(min_length=1, description="The conversation so far.")
    max_completion_tokens: int | None = Field(None, ge=1, description="Newer name for max_tokens.")
    response_format: ResponseFormat | None = Field(None, description="Constrain the answer to JSON.")
    tools: list[Tool] | None = Field(None, max_length=64, description="Functions the model may call.")
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = Field(
        None, description="none, auto (default with tools), required, or a named function."
    )
    parallel_tool_calls: bool | None = Field(None, description="Accepted; at most one call is made per answer.")
    logprobs: bool | None = Field(None, description="Return each answer token's log-probability.")
    top_logprobs: int | None = Field(
        None, ge=0, le=MAX_TOP, description="Also the most likely tokens at each position (needs logprobs)."
    )
    modalities: list[str] | None = unsupported("Only ['text'] is supported.", items={"enum": ["text"]}, maxItems=1)
    audio: dict[str, Any] | None = unsupported("Not supported.")
    prediction: dict[str, Any] | None = Field(None, description="Accepted and ignored (it cannot change the answer).")
    reasoning_effort: str | None = unsupported("Not supported.")
    functions: list[dict[str, Any]] | None = unsupported("Not supported: use tools.")
    function_call: str | dict[str, Any] | None = unsupported("Not supported: use tool_choice.")
    web_search_options: dict[str, Any] | None = unsupported("Not supported.")


TokenIds = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]


class CompletionRequest(SamplingFields):
    prompt: (
        str
        | Annotated[list[str], Field(min_length=1, max_length=MAX_PROMPTS)]
        | TokenIds
        | Annotated[list[TokenIds], Field(min_length=1, max_length=MAX_PROMPTS)]
    ) = Field(
        description="The text to continue: a string, a list of strings, token ids, or a list of token-id lists "
        "(each prompt its own choices)."
    )
    max_tokens: int | None = Field(
        None, ge=0, description=f"Most tokens to generate (default {DEFAULT_MAX_TOKENS}); 0 only scores the prompt."
    )
    echo: bool = Field(False, description="Return the prompt before the completion (with its logprobs).")
    logprobs: int | None = Field(
        None, ge=0, le=MAX_TOP, description="Return each token's log-probability and this many likeliest tokens."
    )
    best_of: int | None = unsupported("Not supported: only 1 (or n) is accepted.", minimum=1, maximum=1)
    suffix: str | None = unsupported("Not supported: only an empty suffix is accepted.")


class CountRequest(Lenient):
    model: str = Field(min_length=1, description="The model whose tokenizer counts.")
    messages: list[Message] | None = Field(None, description="A chat to count, as sent to chat completions.")
    prompt: str | None = Field(None, description="Plain text to count.")


# ---- responses --------------------------------------------------------------


class PromptTokensDetails(BaseModel):
    cached_tokens: int = Field(0, description="Prompt tokens read from the prefix cache instead of prefilled.")


class Usage(BaseModel):
    prompt_tokens: int = Field(description="Tokens in the prompt.")
    completion_tokens: int = Field(description="Tokens generated.")
    total_tokens: int = Field(description="Both together.")
    prompt_tokens_details: PromptTokensDetails = Field(
        default_factory=PromptTokensDetails, description="How the prompt tokens were read."
    )


class AnswerMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = Field(description="The answer's text; null when it is a tool call.")
    tool_calls: list[ToolCall] | None = Field(None, description="The calls the model made.")


class TopLogprob(BaseModel):
    token: str = Field(description="The token's text ('bytes:\\xNN...' when its bytes are not UTF-8 alone).")
    logprob: float = Field(description="Its natural-log probability.")
    bytes: list[int] | None = Field(description="Its UTF-8 bytes.")


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(description="The likeliest tokens at this position.")


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob] | None = Field(description="One entry per answer token.")
    refusal: list[TokenLogprob] | None = None


class ChatChoice(BaseModel):
    index: int = 0
    message: AnswerMessage
    finish_reason: Literal["stop", "length", "tool_calls"]
    logprobs: ChoiceLogprobs | None = None


class LegacyLogprobs(BaseModel):
    tokens: list[str] = Field(description="Each token's text.")
    token_logprobs: list[float | None] = Field(description="Each token's log-probability (none for the first).")
    top_logprobs: list[dict[str, float] | None] = Field(description="The likeliest tokens and the chosen one.")
    text_offset: list[int] = Field(description="Where each token starts in the choice's text.")


class TextChoice(BaseModel):
    index: int = 0
    text: str
    finish_reason: Literal["stop", "length"] | None
    logprobs: LegacyLogprobs | None = None


ChoiceT = TypeVar("ChoiceT", ChatChoice, TextChoice)


class Answer(BaseModel, Generic[ChoiceT]):
    """What chat and text completions answer alike; each names its own ``object``."""

    id: str
    object: str
    created: int
    model: str
    choices: list[ChoiceT]
    usage: Usage


class ChatCompletion(Answer[ChatChoice]):
    object: Literal["chat.completion"] = "chat.completion"
    system_fingerprint: str | None = None


class Completion(Answer[TextChoice]):
    object: Literal["text_completion"] = "text_completion"


class ModelCard(BaseModel):
    id: str = Field(description="The name requests use.")
    object: Literal["model"] = "model"
    created: int = Field(description="When the model folder was written (Unix seconds).")
    owned_by: str = "slmops"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


class TokenCount(BaseModel):
    tokenCount: int = Field(description="Tokens the request's prompt takes.")  # noqa: N815 (Foundry's name)
