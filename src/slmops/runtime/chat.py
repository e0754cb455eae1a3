"""The interactive chat of `slmops model run` and its one-shot mode."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TextIO

from slmops.errors import SlmopsError
from slmops.runtime.generate import Response
from slmops.runtime.model import Conversation, Model

MULTILINE = '"""'
HELP = """Commands:
  /clear          forget the conversation (the system message stays)
  /system TEXT    set the system message; /system alone removes it
  /exit           leave (Ctrl-D too)
  /help           this help
  \"\"\"             starts and ends a message of several lines
Ctrl-C stops the answer being written and keeps the conversation."""


class ChatSession:
    """A conversation with a model: history, commands, and answers streamed to ``out``.

    Args:
        model: a loaded :class:`Model`.
        options: generation options for every answer (None keeps the model's default).
        truncate: drop the oldest turns when the chat outgrows the context.
        system: the system message, if any.
        out, err: where answers and notes go.
        stats: after each answer, print time to first token and tokens/s to ``err``.
    """

    def __init__(
        self,
        model: Model,
        options: dict | None = None,
        truncate: bool = False,
        system: str | None = None,
        out: TextIO | None = None,
        err: TextIO | None = None,
        stats: bool = False,
    ) -> None:
        self.model = model
        self.options = options or {}
        self.truncate = truncate
        self.system = system
        self.history: list[dict] = []
        self.conversation: Conversation | None = None  # made with the first answer; keeps the KV cache
        self.out, self.err = out or sys.stdout, err or sys.stderr
        self.stats = stats

    @property
    def messages(self) -> list[dict]:
        system = [{"role": "system", "content": self.system}] if self.system else []
        return system + self.history

    def handle(self, line: str) -> bool:
        """Act on one line the user typed; False means the session is over."""
        text = line.strip()
        if not text.startswith("/"):
            if text:
                self.answer(line.strip("\n"))
            return True
        command, _, argument = text.partition(" ")
        if command in ("/exit", "/quit", "/bye"):
            return False
        if command == "/clear":
            self.history.clear()
            self.note("Conversation cleared.")
        elif command == "/system":
            self.system = argument.strip() or None
            self.note("System message set." if self.system else "System message removed.")
        elif command in ("/help", "/?"):
            self.note(HELP)
        else:
            self.note(f"Unknown command {command}; /help lists the commands.")
        return True

    def answer(self, text: str) -> str:
        """Stream the answer to ``text`` to the output and add the turn to the history.

        Ctrl-C while it is written stops it; what was written so far stays in the history.
        """
        self.history.append({"role": "user", "content": text})
        pieces: list[str] = []
        last: Response | None = None
        stopped = False
        try:
            if self.model.has_chat_template:
                if self.conversation is None:
                    self.conversation = self.model.conversation(**self.options)
                stream = self.conversation.stream(self.messages, truncate=self.truncate)
            else:  # a base model continues the text it is given
                stream = self.model.stream_generate(text, **self.options)
            for last in stream:
                if last.text:
                    pieces.append(last.text)
                    self.out.write(last.text)
                    self.out.flush()
        except KeyboardInterrupt:
            stopped = True
        except SlmopsError as exc:
            self.history.pop()
            self.note(f"Error: {exc}" + ("" if self.truncate else " (/clear starts over)"))
            return ""
        self.out.write("\n")
        self.out.flush()
        if stopped:
            self.note("[stopped]")
        answer = "".join(pieces)
        self.history.append({"role": "assistant", "content": answer})
        if self.stats and last is not None:
            self.note(_stats(last))
        return answer

    def interrupted(self) -> None:
        """After a Ctrl-C that no answer caught: the history stays in user/assistant pairs."""
        if self.history and self.history[-1]["role"] == "user":
            self.history.append({"role": "assistant", "content": ""})
        self.note("\n[stopped]")

    def note(self, text: str) -> None:
        self.err.write(text + "\n")
        self.err.flush()


def _stats(response: Response) -> str:
    return (
        f"[{response.prompt_tokens} prompt tokens, {response.completion_tokens} generated, "
        f"first token {response.ttft_s * 1000:.0f} ms, {response.decode_tokens_per_s:.1f} tokens/s]"
    )


def interactive(session: ChatSession, read: Callable[[str], str] = input) -> None:
    """Read lines until /exit or Ctrl-D; Ctrl-C at the prompt only says how to leave."""
    _enable_line_editing()
    model = session.model
    loaded = f" ({model.threads} threads, loaded in {model.load_s:.1f} s)" if hasattr(model, "load_s") else ""
    session.note(f"Chatting with {model.name}{loaded}. /help for commands, /exit or Ctrl-D to leave.")
    while True:
        try:
            line = _read_message(read)
        except EOFError:
            session.out.write("\n")
            return
        except KeyboardInterrupt:
            session.note("\n(/exit or Ctrl-D leaves)")
            continue
        try:
            going_on = session.handle(line)
        except KeyboardInterrupt:
            # Ctrl-C just outside an answer's stream (pressed twice, or with Enter) ends that
            # answer, never the chat.
            session.interrupted()
            continue
        if not going_on:
            return


def _read_message(read: Callable[[str], str]) -> str:
    """One line, or several between a line starting with MULTILINE and one ending with it."""
    line = read(">>> ")
    if not line.lstrip().startswith(MULTILINE):
        return line
    lines = [line.lstrip()[len(MULTILINE) :]]
    while not lines[-1].rstrip().endswith(MULTILINE) or len(lines) == 1 and lines[0].strip() == "":
        lines.append(read("... "))
    lines[-1] = lines[-1].rstrip()[: -len(MULTILINE)]
    return "\n".join(lines).strip("\n")


def one_shot(session: ChatSession, text: str) -> None:
    """Answer once, printing only the answer (so it composes in pipelines); errors propagate."""
    session.history.append({"role": "user", "content": text})
    last = None
    if session.model.has_chat_template:
        stream = session.model.stream_chat(session.messages, truncate=session.truncate, **session.options)
    else:  # a base model continues the text it is given
        stream = session.model.stream_generate(text, **session.options)
    for last in stream:
        session.out.write(last.text)
        session.out.flush()
    session.out.write("\n")
    session.out.flush()
    if session.stats and last is not None:
        session.note(_stats(last))


def _enable_line_editing() -> None:
    try:
        import readline  # noqa: F401  (importing it gives input() history and editing)
    except ImportError:
        pass
