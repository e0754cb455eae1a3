"""A Responses request as the chat request the server already answers.

``instructions`` becomes the system message, ``input`` items become chat messages
(a ``function_call`` item an assistant turn with ``tool_calls``, its
``function_call_output`` a ``tool`` message), ``text.format`` becomes
``response_format``, and the flat function tools become chat tools. From there the
chat machinery (template, tool prompt, grammar, scheduler) is the one
``/v1/chat/completions`` uses.
"""

from __future__ import annotations

from slmops.server.errors import APIError
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
from slmops.server.responses_protocol import (
    ContentPart,
    FunctionChoice,
    InputItem,
    OutputFunctionCall,
    OutputMessage,
    ResponsesRequest,
)

TEXT_PARTS = ("input_text", "output_text", "text")
# Where the chat machinery's errors point, in the Responses request's terms.
PARAMS = {
    "messages": "input",
    "prompt": "input",
    "response_format": "text.format",
    "response_format.json_schema": "text.format.schema",
}


def input_messages(given: str | list[InputItem]) -> list[Message]:
    """The chat messages of ``input``: a string is one user message.

    Raises:
        APIError: 400 naming the item that is not a text message or a function call item.
    """
    if isinstance(given, str):
        return [Message(role="user", content=given)]
    messages: list[Message] = []
    for index, item in enumerate(given):
        where = f"input[{index}]"
        if item.type == "message":
            messages.append(_message(item, where))
        elif item.type == "function_call":
            _add_call(messages, item, where)
        elif item.type == "function_call_output":
            output = item.output if isinstance(item.output, str) else _text(item.output or [], f"{where}.output")
            messages.append(Message(role="tool", tool_call_id=_required(item.call_id, f"{where}.call_id"), content=output))
        else:
            raise APIError(
                400,
                f"{where}: items of type {item.type!r} are not supported; "
                "slmops reads message, function_call and function_call_output items.",
                f"{where}.type",
                "unsupported_parameter",
            )
    return messages


def _message(item: InputItem, where: str) -> Message:
    role = _required(item.role, f"{where}.role")
    content = item.content if isinstance(item.content, str) else _text(item.content or [], f"{where}.content")
    return Message(role=role, content=content)


def _add_call(messages: list[Message], item: InputItem, where: str) -> None:
    call = ToolCall(
        id=_required(item.call_id, f"{where}.call_id"),
        function=FunctionCall(name=_required(item.name, f"{where}.name"), arguments=item.arguments or "{}"),
    )
    last = messages[-1] if messages else None
    if last is not None and last.role == "assistant" and last.tool_calls and not last.content:
        last.tool_calls.append(call)  # calls made in one turn stay one assistant message
    else:
        messages.append(Message(role="assistant", content=None, tool_calls=[call]))


def _text(parts: list[ContentPart], where: str) -> str:
    pieces = []
    for index, part in enumerate(parts):
        if part.type not in TEXT_PARTS or part.text is None:
            raise APIError(
                400,
                f"{where}[{index}]: {part.type!r} parts are not supported; send text (input_text) parts.",
                f"{where}[{index}]",
                "unsupported_parameter",
            )
        pieces.append(part.text)
    return "".join(pieces)


def _required(value: str | None, where: str) -> str:
    if value is None:
        raise APIError(400, f"{where} is required.", where, "invalid_parameter")
    return value


def chat_request(body: ResponsesRequest, conversation: list[Message]) -> ChatRequest:
    """The chat request that answers ``body`` after ``conversation`` (earlier turns and this input)."""
    messages = [Message(role="system", content=body.instructions)] if body.instructions else []
    messages += conversation
    if not messages:
        raise APIError(400, "input is empty; give a message or instructions.", "input", "invalid_parameter")
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


def _response_format(body: ResponsesRequest) -> ResponseFormat | None:
    given = body.text.format if body.text else None
    if given is None:
        return None
    schema = None
    if given.type == "json_schema":
        if not given.schema_:
            raise APIError(400, "text.format json_schema needs a schema.", "text.format.schema", "invalid_parameter")
        schema = JsonSchemaFormat(name=given.name, schema=given.schema_, strict=given.strict)
    return ResponseFormat(type=given.type, json_schema=schema)


def _tool(tool) -> Tool:
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
            call = InputItem(type="function_call", call_id=item.call_id, name=item.name, arguments=item.arguments)
            _add_call(messages, call, "output")
    return messages
