"""The bodies of the Responses API (``/v1/responses``), as OpenAI's API defines them.

The request is strict at the top level: a parameter slmops does not know is a 400
naming it, because a Responses parameter usually changes the answer. Items inside
``input`` are lenient, so the ``output`` of an earlier response can be sent back as
it came (with its ids, statuses and annotations). Which known parameters are
refused, and why, is in :mod:`slmops.server.responses`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from slmops.server.protocol import Lenient


class ContentPart(Lenient):
    type: str = Field(description="input_text (or output_text, for an assistant turn sent back); nothing else.")
    text: str | None = Field(None, description="The part's text.")


class InputItem(Lenient):
    """One item of ``input``: a message, a function call the model made, or its result."""

    type: Literal["message", "function_call", "function_call_output"] | str = Field(
        "message", description="message (the default), function_call or function_call_output."
    )
    role: Literal["user", "assistant", "system", "developer"] | None = Field(
        None, description="A message's author."
    )
    content: str | list[ContentPart] | None = Field(None, description="A message's text, or its text parts.")
    call_id: str | None = Field(None, description="A function call's id; its output names it too.")
    name: str | None = Field(None, description="The function a function_call item called.")
    arguments: str | None = Field(None, description="A function_call item's arguments, a JSON object as text.")
    output: str | list[ContentPart] | None = Field(None, description="A function_call_output item's result.")


class FunctionTool(Lenient):
    type: Literal["function"] = Field(description="Only function tools are supported.")
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="The function's name.")
    description: str | None = Field(None, description="What the function does, shown to the model.")
    parameters: dict[str, Any] | None = Field(None, description="A JSON Schema for the arguments.")
    strict: bool | None = Field(None, description="Accepted; the arguments always follow the schema.")


class FunctionChoice(Lenient):
    type: Literal["function"] = Field(description="Always 'function'.")
    name: str = Field(description="The function that must be called.")


class TextFormat(Lenient):
    type: Literal["text", "json_object", "json_schema"] = Field(
        description="text, any JSON object, or JSON matching a schema."
    )
    name: str = Field("response", description="The schema's name (json_schema).")
    schema_: dict[str, Any] | None = Field(None, alias="schema", description="The JSON Schema (json_schema).")
    description: str | None = Field(None, description="What the format is for (not shown to the model).")
    strict: bool | None = Field(None, description="Accepted; the schema is always enforced.")


class TextConfig(Lenient):
    format: TextFormat | None = Field(None, description="The answer's format; plain text by default.")
    verbosity: Literal["low", "medium", "high"] | None = Field(None, description="Only medium (the default).")


class Reasoning(Lenient):
    effort: str | None = Field(None, description="Refused unless null or 'none': no served model reasons.")
    summary: str | None = Field(None, description="Refused unless null.")
    generate_summary: str | None = Field(None, description="Refused unless null.")


class ResponsesRequest(BaseModel):
    """``POST /v1/responses``."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, description="A model name from /v1/models or the cache.")
    input: str | list[InputItem] = Field(description="The user's text, or a list of messages and tool items.")
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
    metadata: dict[str, str] | None = Field(None, description="Up to 16 pairs, kept on the response.")
    user: str | None = Field(None, description="An end-user id (ignored).")
    safety_identifier: str | None = Field(None, description="An end-user id (ignored).")
    service_tier: str | None = Field(None, description="Ignored.")
    prompt_cache_key: str | None = Field(None, description="Ignored.")
    prompt_cache_retention: str | None = Field(None, description="Ignored.")
    prompt_cache_options: dict[str, Any] | None = Field(None, description="Ignored.")
    stream_options: dict[str, Any] | None = Field(None, description="Ignored (no obfuscation is added).")
    truncation: Literal["auto", "disabled"] | None = Field(None, description="Only disabled (the default).")
    # Refused unless left at a value that changes nothing (see slmops.server.responses).
    include: list[str] | None = Field(None, description="Only reasoning.encrypted_content (there is none).")
    reasoning: Reasoning | None = Field(None, description="Refused unless empty.")
    top_logprobs: int | None = Field(None, ge=0, le=20, description="Refused unless 0.")
    max_tool_calls: int | None = Field(None, ge=0, description="Refused if 0; any other value allows the one call.")
    background: bool | None = Field(None, description="Refused if true.")
    conversation: str | dict[str, Any] | None = Field(None, description="Refused: use previous_response_id.")
    prompt: dict[str, Any] | None = Field(None, description="Refused: prompt templates are not supported.")
    context_management: list[dict[str, Any]] | None = Field(None, description="Refused unless empty.")


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
    cached_tokens: int = 0


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int = 0


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


class DeletedResponse(BaseModel):
    id: str
    object: Literal["response.deleted"] = "response.deleted"
    deleted: Literal[True] = True
