"""JSON answers and tool calls, constrained at decode time by llguidance grammars.

``response_format`` json_object / json_schema and a forced tool call become a JSON
Schema grammar that masks every token that would break it, so the answer parses
and matches the schema without retries. With ``tool_choice`` "auto" the grammar
has two branches: free text that does not open with ``{``, or a call in the
prompt's format whose name and arguments follow the tools' schemas; the model
picks the branch with its first token.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass

from slmops.modelfolder.messages import content_text
from slmops.server.errors import APIError
from slmops.server.protocol import ChatRequest, NamedToolChoice, ResponseFormat, Tool, ToolCall

TOOL_PROMPT = (
    "You can call these functions. To call one, answer with only a JSON object "
    '{{"name": <function name>, "arguments": <arguments object>}} and nothing else.\n{functions}'
)


@dataclass
class ToolMode:
    """The tools of a request and how the model must use them."""

    tools: list[Tool]
    choice: str  # "auto", "required", or the name of the function that must be called

    @property
    def forced(self) -> str | None:
        """The function the answer must call, when there is exactly one choice."""
        if self.choice not in ("auto", "required"):
            return self.choice
        if self.choice == "required" and len(self.tools) == 1:
            return self.tools[0].function.name
        return None

    def guidance(self) -> tuple[str, str]:
        if self.forced:
            # The name is known: the model writes only the arguments, which stream as they come.
            return grammar(self._function(self.forced).parameters)
        calls = [
            {
                "type": "object",
                "properties": {"name": {"const": tool.function.name}, "arguments": tool.function.parameters},
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
            for tool in self.tools
        ]
        if self.choice == "auto":
            return "lark_grammar", text_or(grammar({"anyOf": calls})[1])
        return grammar({"anyOf": calls})

    def _function(self, name: str):
        for tool in self.tools:
            if tool.function.name == name:
                return tool.function
        raise APIError(400, f"tool_choice names {name!r}, which is not in tools.", "tool_choice", "invalid_parameter")

    def calls(self, text: str, cut: bool = False) -> list[ToolCall] | None:
        """The tool calls an answer makes, or None when it is a plain answer.

        ``cut``: the answer was cut off (max_tokens), so a call whose name is complete
        is returned with the arguments generated so far, which are not whole JSON.
        """
        if self.forced:
            return [_call(self.forced, text.strip(), cut)]
        try:
            value = json.loads(text)
        except ValueError:
            head = CALL_HEAD.match(text) if cut else None
            if head is None or head.group(1) not in self.names():
                return None
            return [_call(head.group(1), text[head.end() :].rstrip(), cut)]
        if isinstance(value, dict) and value.get("name") in self.names() and isinstance(value.get("arguments"), dict):
            return [_call(value["name"], json.dumps(value["arguments"]))]
        return None

    def names(self) -> set[str]:
        """The names of the functions the answer may call."""
        return {tool.function.name for tool in self.tools}


def finish_reason(calls: list[ToolCall] | None, reason: str | None) -> str:
    """A choice's finish reason: "tool_calls" only for calls whose arguments are whole JSON.

    A call cut off by max_tokens reports "length", as OpenAI does, so that a client
    never runs a call with half its arguments.
    """
    if calls and all(parses(call.function.arguments) for call in calls):
        return "tool_calls"
    return reason or "stop"


CALL_HEAD = re.compile(r'\s*\{"name": "((?:[^"\\]|\\.)*)", "arguments": ')


class AnswerStream:
    """An answer that may be a call, turned into chat deltas as its text comes.

    Words stream as content from their first token. A call (the grammar fixes its
    layout: ``{"name": ..., "arguments": ...}``) streams as OpenAI streams one: a
    delta with its id and name once the name is complete, then the arguments as
    they are generated. Without a grammar that holds the layout (e.g. a call
    written by an unconstrained model), the call is sent whole at the end.
    """

    def __init__(self, mode: ToolMode) -> None:
        self.mode = mode
        self.text = ""
        self.kind: str | None = None  # "text" or "call", once the first visible character decides
        self.sent = 0  # characters of the call's text already sent as arguments
        self.head: re.Match | None = None
        self.called = False

    def feed(self, piece: str) -> list[dict]:
        """The deltas ``piece`` completes."""
        self.text += piece
        if self.kind is None:
            start = self.text.lstrip()
            if not start:
                return []
            self.kind = "call" if start.startswith("{") else "text"
            if self.kind == "text":
                return [{"content": self.text}]
        if self.kind == "text":
            return [{"content": piece}]
        return self._call_deltas()

    def _call_deltas(self) -> list[dict]:
        deltas = []
        if self.head is None:
            self.head = CALL_HEAD.match(self.text)
            if self.head is None or self.head.group(1) not in self.mode.names():
                self.head = None
                return []
            self.called, self.sent = True, self.head.end()
            call = _call(self.head.group(1), "")
            deltas.append(
                {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": call.id,
                            "type": "function",
                            "function": {"name": call.function.name, "arguments": ""},
                        }
                    ]
                }
            )
        end = len(self.text) - 1  # the last character may be the call's closing brace
        if end > self.sent:
            deltas.append({"tool_calls": [{"index": 0, "function": {"arguments": self.text[self.sent : end]}}]})
            self.sent = end
        return deltas

    def close(self) -> list[dict]:
        """The deltas left when the answer ends."""
        if self.kind != "call":
            return []
        if self.head is not None:
            arguments = self.text[self.head.end() :].rstrip()
            if arguments.endswith("}") and parses(arguments[:-1]):
                arguments = arguments[:-1]  # the call's own closing brace
            rest = arguments[self.sent - self.head.end() :]
            return [{"tool_calls": [{"index": 0, "function": {"arguments": rest}}]}] if rest else []
        calls = self.mode.calls(self.text)
        if not calls:
            return [{"content": self.text}]
        self.called = True
        return [
            {
                "tool_calls": [
                    {
                        "index": index,
                        "id": call.id,
                        "type": "function",
                        "function": {"name": call.function.name, "arguments": call.function.arguments},
                    }
                ]
            }
            for index, call in enumerate(calls)
        ]

    def finish_reason(self, reason: str | None) -> str:
        """The answer's finish reason once it is closed (see :func:`finish_reason`)."""
        whole = self.called and self.mode.calls(self.text) is not None
        return "tool_calls" if whole else reason or "stop"


def parses(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def mode_for(request: ChatRequest) -> ToolMode | None:
    """How the request uses tools; None when it has none or forbids them."""
    choice = request.tool_choice
    if not request.tools:
        if choice not in (None, "none", "auto"):
            raise APIError(
                400, "tool_choice needs tools; give tools or drop tool_choice.", "tool_choice", "invalid_parameter"
            )
        return None
    if choice == "none":
        return None
    name = choice.function.name if isinstance(choice, NamedToolChoice) else (choice or "auto")
    mode = ToolMode(request.tools, name)
    if mode.forced:
        mode._function(mode.forced)  # an unknown name is a 400, before anything runs
    return mode


def with_tool_prompt(messages: list[dict], mode: ToolMode) -> list[dict]:
    """The messages with the functions described in the system message."""
    functions = "\n".join(json.dumps(tool.function.model_dump(exclude_none=True)) for tool in mode.tools)
    text = TOOL_PROMPT.format(functions=functions)
    if mode.forced:
        text += f"\nCall {mode.forced} now: answer with its arguments object only."
    if messages and messages[0]["role"] in ("system", "developer"):
        first = content_text(messages[0]["content"])
        return [{"role": "system", "content": f"{first}\n\n{text}".strip()}, *messages[1:]]
    return [{"role": "system", "content": text}, *messages]


def response_guidance(response_format: ResponseFormat | None) -> tuple[str, str] | None:
    """The grammar for ``response_format``: any JSON object, or JSON matching the schema."""
    if response_format is None or response_format.type == "text":
        return None
    if response_format.type == "json_object":
        return grammar({"type": "object"})
    if response_format.json_schema is None or not response_format.json_schema.schema_:
        raise APIError(
            400,
            "response_format json_schema needs json_schema.schema.",
            "response_format.json_schema",
            "invalid_parameter",
        )
    return grammar(response_format.json_schema.schema_)


def grammar(schema: dict) -> tuple[str, str]:
    """The guidance for a JSON Schema, written compactly.

    With free whitespace, small models tend to emit newlines until max_tokens; one
    space after ':' and ',' keeps the JSON readable and the answer short.
    """
    layout = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
    return "json_schema", json.dumps({"x-guidance": layout, **schema})


def text_or(schema: str) -> str:
    """A Lark grammar: an answer in plain words, or (after optional blanks) JSON matching ``schema``.

    The plain answer cannot open with ``{``, so whatever starts like a call is one,
    and is complete and valid by the time the grammar lets the answer end.
    """
    return (
        f"start: call | text\ncall: BLANK? %json {schema}\n"
        "text: /[ \\t\\r\\n]*[^{ \\t\\r\\n][\\s\\S]*/\n"
        "BLANK: /[ \\t\\r\\n]+/\n"
    )


def call_text(name: str, arguments: str) -> str:
    """How a past call is written back into the history (the format the prompt asks for)."""
    try:
        parsed = json.loads(arguments or "{}")
    except ValueError:
        parsed = arguments
    return json.dumps({"name": name, "arguments": parsed})


def _call(name: str, arguments: str, cut: bool = False) -> ToolCall:
    # A cut call keeps exactly what was generated, even nothing.
    arguments = arguments if cut else arguments or "{}"
    return ToolCall(id=f"call_{secrets.token_hex(12)}", function={"name": name, "arguments": arguments})
