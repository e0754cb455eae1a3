"""A Responses request as the chat request the server already answers.

``instructions`` becomes the system message, ``input`` items become chat messages
(a ``function_call`` item an assistant turn with ``tool_calls``, its
``function_call_output`` a ``tool`` message), ``text.format`` becomes
``response_format``, and the flat function tools become chat tools. From there the
chat machinery (template, tool prompt, grammar, scheduler) is the one
``/v1/chat/completions`` uses.
"""

from __future__ import annotations

from pydantic import ValidationError

from slmops.server.errors import validation_error
from slmops.server.protocol import (
    ChatRequest,
    FunctionCall,
    FunctionDefinition,
    JsonSchemaFormat,
    Message,
    NamedFunction,
    NamedToolChoice,
    ResponseFormat,
    Tool,
    ToolCall,
)
from slmops.server.response_output import new_id
from slmops.server.responses_protocol import (
    ContentPart,
    FunctionCallItem,
    FunctionChoice,
    FunctionTool,
    InputItem,
    JsonSchemaTextFormat,
    MessageItem,
    OutputFunctionCall,
    OutputMessage,
    ResponsesRequest,
)

# Where the chat machinery's errors point, in the Responses request's terms.
PARAMS = {
    "messages": "input",
    "prompt": "input",
    "response_format": "text.format",
    "response_format.json_schema": "text.format.schema",
}


def input_messages(items: list[InputItem]) -> list[Message]:
    """The chat messages of ``input`` (its model has already made a string one user message)."""
    messages: list[Message] = []
    for item in items:
        if isinstance(item, MessageItem):
            messages.append(Message(role=item.role, content=_text(item.content)))
        elif isinstance(item, FunctionCallItem):
            _add_call(messages, item)
        else:
            messages.append(Message(role="tool", tool_call_id=item.call_id, content=_text(item.output)))
    return messages


def _text(parts: list[ContentPart]) -> str:
    return "".join(part.text for part in parts)


def _add_call(messages: list[Message], item: FunctionCallItem) -> None:
    call = ToolCall(id=item.call_id, function=FunctionCall(name=item.name, arguments=item.arguments))
    last = messages[-1] if messages else None
    if last is not None and last.role == "assistant" and last.tool_calls and not last.content:
        last.tool_calls.append(call)  # calls made in one turn stay one assistant message
    else:
        messages.append(Message(role="assistant", content=None, tool_calls=[call]))


def chat_request(body: ResponsesRequest, conversation: list[Message]) -> ChatRequest:
    """The chat request that answers ``body`` after ``conversation`` (earlier turns and this input)."""
    messages = [Message(role="system", content=body.instructions)] if body.instructions else []
    messages += conversation
    try:
        return ChatRequest(
            model=body.model,
            messages=messages,
            max_completion_tokens=body.max_output_tokens,
            temperature=body.temperature,
            top_p=body.top_p,
            response_format=_response_format(body),
            tools=[_tool(tool) for tool in body.tools] if body.tools else None,
            tool_choice=_tool_choice(body.tool_choice),
        )
    except ValidationError as exc:  # the request's own model checks the same bounds: a bug if reached
        raise validation_error(exc.errors()) from None


def _response_format(body: ResponsesRequest) -> ResponseFormat | None:
    given = body.text.format if body.text else None
    if given is None:
        return None
    schema = None
    if isinstance(given, JsonSchemaTextFormat):
        schema = JsonSchemaFormat(name=given.name, schema=given.schema_, strict=given.strict)
    return ResponseFormat(type=given.type, json_schema=schema)


def _tool(tool: FunctionTool) -> Tool:
    definition = FunctionDefinition(name=tool.name, description=tool.description)
    if tool.parameters:
        definition.parameters = tool.parameters
    return Tool(function=definition)


def _tool_choice(choice: str | FunctionChoice | None) -> str | NamedToolChoice | None:
    if isinstance(choice, FunctionChoice):
        return NamedToolChoice(function=NamedFunction(name=choice.name))
    return choice


def output_messages(output: list[OutputMessage | OutputFunctionCall]) -> list[Message]:
    """A response's output as chat turns, for the next turn's history."""
    messages: list[Message] = []
    for item in output:
        if isinstance(item, OutputMessage):
            messages.append(Message(role="assistant", content="".join(part.text for part in item.content)))
        else:
            call = FunctionCallItem(
                type="function_call", call_id=item.call_id, name=item.name, arguments=item.arguments
            )
            _add_call(messages, call)
    return messages


def listed_items(items: list[InputItem]) -> list[dict]:
    """``input`` as OpenAI lists a response's input items: each with an id of its own."""
    listed = []
    for item in items:
        if isinstance(item, MessageItem):
            parts = [{"type": part.type, "text": part.text} for part in item.content]
            listed.append({"id": new_id("msg"), "type": "message", "role": item.role, "content": parts})
        elif isinstance(item, FunctionCallItem):
            listed.append({"id": new_id("fc"), "status": "completed", **item.model_dump()})
        else:
            listed.append({"id": new_id("fco"), **item.model_dump(), "output": _text(item.output)})
    return listed
