"""The bodies of the Responses API (``/v1/responses``), as OpenAI's API defines them.

The request is strict at the top level: a parameter slmops does not know is a 400
naming it, because a Responses parameter usually changes the answer, and a known
parameter slmops does not implement accepts only the value that changes nothing
(e.g. ``truncation: "disabled"``), so the OpenAPI document says exactly what is
answered. Items inside ``input`` are lenient, so the ``output`` of an earlier
response can be sent back as it came (with its ids, statuses and annotations).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, Tag

from slmops.server.protocol import Lenient


class ContentPart(Lenient):
    type: Literal["input_text", "output_text", "text"] = Field(
        description="input_text, or output_text for an assistant turn sent back; no images or files."
    )
    text: str = Field(description="The part's text.")


def _as_parts(value: Any) -> Any:
    return [{"type": "input_text", "text": value}] if isinstance(value, str) else value


# A string is one text part: validating one list (not a union with str) keeps errors about the list.
Content = Annotated[list[ContentPart], BeforeValidator(_as_parts, json_schema_input_type=str | list[ContentPart])]


class MessageItem(Lenient):
    type: Literal["message"] | None = Field("message", description="message (may be left out).")
    role: Literal["user", "assistant", "system", "developer"] = Field(description="The message's author.")
    content: Content = Field(description="Text, or a list of text parts.")


class FunctionCallItem(Lenient):
    type: Literal["function_call"] = Field(description="A call the model made (an earlier response's output).")
    call_id: str = Field(description="The call's id; its function_call_output names it.")
    name: str = Field(description="The function called.")
    arguments: str = Field("{}", description="The arguments, a JSON object as text.")


class FunctionCallOutputItem(Lenient):
    type: Literal["function_call_output"] = Field(description="The result of a call.")
    call_id: str = Field(description="The call it answers.")
    output: Content = Field(description="The result, as text or text parts.")


def _item_type(value: Any) -> Any:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return "message" if kind is None else kind  # a message may leave its type out, or send null


InputItem = Annotated[
    Annotated[MessageItem, Tag("message")]
    | Annotated[FunctionCallItem, Tag("function_call")]
    | Annotated[FunctionCallOutputItem, Tag("function_call_output")],
    Discriminator(
        _item_type,
        custom_error_type="unsupported_item",
        custom_error_message="slmops reads message, function_call and function_call_output items only",
    ),
]


def _as_items(value: Any) -> Any:
    return [{"role": "user", "content": value}] if isinstance(value, str) else value


Items = Annotated[list[InputItem], Field(min_length=1)]
Input = Annotated[Items, BeforeValidator(_as_items, json_schema_input_type=str | Items)]


class FunctionTool(Lenient):
    type: Literal["function"] = Field(description="Only function tools are supported.")
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="The function's name.")
    description: str | None = Field(None, description="What the function does, shown to the model.")
    parameters: dict[str, Any] | None = Field(None, description="A JSON Schema for the arguments.")
    strict: bool | None = Field(None, description="Accepted; the arguments always follow the schema.")


class FunctionChoice(Lenient):
    type: Literal["function"] = Field(description="Always 'function'.")
    name: str = Field(description="The function that must be called.")


class PlainTextFormat(Lenient):
    type: Literal["text"] = Field(description="Plain text (the default).")


class JsonObjectFormat(Lenient):
    type: Literal["json_object"] = Field(description="Any JSON object.")


class JsonSchemaTextFormat(Lenient):
    type: Literal["json_schema"] = Field(description="JSON matching the schema.")
    name: str = Field("response", description="The schema's name.")
    schema_: dict[str, Any] = Field(alias="schema", min_length=1, description="The JSON Schema the answer must match.")
    description: str | None = Field(None, description="What the format is for (not shown to the model).")
    strict: bool | None = Field(None, description="Accepted; the schema is always enforced.")


TextFormat = Annotated[PlainTextFormat | JsonObjectFormat | JsonSchemaTextFormat, Field(discriminator="type")]


class TextConfig(Lenient):
    format: TextFormat | None = Field(None, description="The answer's format; plain text by default.")
    verbosity: Literal["medium"] | None = Field(None, description="Only medium (the default).")


class Reasoning(Lenient):
    effort: Literal["none"] | None = Field(None, description="Only none: no served model reasons.")
    summary: None = Field(None, description="Only null.")
    generate_summary: None = Field(None, description="Only null.")


class ResponsesRequest(BaseModel):
    """``POST /v1/responses``."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, description="A model name from /v1/models or the cache.")
    input: Input = Field(description="The user's text, or a list of messages and function call items.")
    instructions: str | None = Field(None, description="A system message put first; not carried to later turns.")
    previous_response_id: str | None = Field(None, description="Continue from a stored response.")
    max_output_tokens: int | None = Field(None, ge=1, description="Most tokens to generate (default 512).")
    temperature: float | None = Field(None, ge=0, le=2, description="Sampling temperature; 0 is greedy.")
    top_p: float | None = Field(None, gt=0, le=1, description="Nucleus sampling mass.")
    text: TextConfig | None = Field(None, description="The answer's format (text.format).")
    tools: list[FunctionTool] | None = Field(None, max_length=64, description="Functions the model may call.")
    tool_choice: Literal["none", "auto", "required"] | FunctionChoice | None = Field(
        None, description="none, auto (default with tools), required, or a named function."
    )
    stream: bool | None = Field(False, description="Send the answer as server-sent Responses events.")
    store: bool | None = Field(True, description="Keep the response for GET and previous_response_id.")
    # Accepted because they cannot change the answer.
    parallel_tool_calls: bool | None = Field(None, description="Accepted; at most one call is made per answer.")
    metadata: dict[str, str] | None = Field(None, max_length=16, description="Up to 16 pairs, kept on the response.")
    user: str | None = Field(None, description="An end-user id (ignored).")
    safety_identifier: str | None = Field(None, description="An end-user id (ignored).")
    service_tier: str | None = Field(None, description="Ignored.")
    prompt_cache_key: str | None = Field(None, description="Ignored.")
    prompt_cache_retention: str | None = Field(None, description="Ignored.")
    prompt_cache_options: dict[str, Any] | None = Field(None, description="Ignored.")
    stream_options: dict[str, Any] | None = Field(None, description="Ignored (no obfuscation is added).")
    truncation: Literal["disabled"] | None = Field(None, description="Only disabled (the default): no turn is dropped.")
    # Each of these changes the answer, and only the value that changes nothing is accepted.
    include: list[Literal["reasoning.encrypted_content"]] | None = Field(
        None, description="Only reasoning.encrypted_content (there is none to include)."
    )
    reasoning: Reasoning | None = Field(None, description="Only an effort of none.")
    top_logprobs: int | None = Field(None, ge=0, le=0, description="Only 0: log-probabilities are not returned here.")
    max_tool_calls: int | None = Field(None, ge=1, description="At least 1; an answer makes at most one call.")
    background: Literal[False] | None = Field(None, description="Only false: every response is answered at once.")
    conversation: None = Field(None, description="Only null: continue with previous_response_id.")
    prompt: None = Field(None, description="Only null: prompt templates are not supported.")
    context_management: Annotated[list[dict[str, Any]], Field(max_length=0)] | None = Field(
        None, description="Only empty."
    )


# ---- the response -------------------------------------------------------------


class OutputText(BaseModel):
    type: Literal["output_text"] = "output_text"
    text: str = Field(description="The answer's text.")
    annotations: list[dict[str, Any]] = Field(default_factory=list, description="Always empty.")
    logprobs: list[dict[str, Any]] = Field(default_factory=list, description="Always empty.")


class OutputMessage(BaseModel):
    id: str = Field(description="The item's id (msg_...).")
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    status: Literal["in_progress", "completed", "incomplete"]
    content: list[OutputText]


class OutputFunctionCall(BaseModel):
    id: str = Field(description="The item's id (fc_...).")
    type: Literal["function_call"] = "function_call"
    call_id: str = Field(description="The id a function_call_output item answers.")
    name: str = Field(description="The function called.")
    arguments: str = Field(description="Its arguments, a JSON object as text.")
    status: Literal["in_progress", "completed", "incomplete"]


class InputTokensDetails(BaseModel):
    cached_tokens: int = Field(0, description="Input tokens read from the prefix cache instead of prefilled.")


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int = Field(0, description="Always 0: no served model reasons apart from its answer.")


class ResponseUsage(BaseModel):
    input_tokens: int = Field(description="Tokens in the prompt (earlier turns and instructions included).")
    input_tokens_details: InputTokensDetails = Field(default_factory=InputTokensDetails)
    output_tokens: int = Field(description="Tokens generated.")
    output_tokens_details: OutputTokensDetails = Field(default_factory=OutputTokensDetails)
    total_tokens: int = Field(description="Both together.")


class IncompleteDetails(BaseModel):
    reason: Literal["max_output_tokens"]


class ResponseError(BaseModel):
    code: str
    message: str


class ResponseObject(BaseModel):
    """A response, as created, streamed (``response.completed``) and retrieved."""

    id: str = Field(description="resp_...")
    object: Literal["response"] = "response"
    created_at: int
    status: Literal["in_progress", "completed", "incomplete", "failed"]
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    model: str
    output: list[OutputMessage | OutputFunctionCall] = Field(default_factory=list)
    parallel_tool_calls: bool = True
    previous_response_id: str | None = None
    reasoning: dict[str, Any] = Field(default_factory=lambda: {"effort": None, "summary": None})
    store: bool = True
    temperature: float | None = None
    text: dict[str, Any] = Field(default_factory=lambda: {"format": {"type": "text"}})
    tool_choice: str | dict[str, Any] = "auto"
    tools: list[dict[str, Any]] = Field(default_factory=list)
    top_p: float | None = None
    truncation: Literal["disabled"] = "disabled"
    usage: ResponseUsage | None = None
    user: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)


class InputItemList(BaseModel):
    """A page of a response's input items."""

    object: Literal["list"] = "list"
    data: list[dict[str, Any]] = Field(description="Messages and function call items, each with its id.")
    first_id: str | None = Field(description="The first item's id on this page.")
    last_id: str | None = Field(description="The last item's id on this page: the next page's `after`.")
    has_more: bool = Field(description="Whether items follow this page.")


class DeletedResponse(BaseModel):
    """What ``DELETE /v1/responses/{id}`` answers."""

    id: str = Field(description="The deleted response's id.")
    object: Literal["response"] = "response"
    deleted: Literal[True] = Field(True, description="Always true: an unknown id is a 404.")
