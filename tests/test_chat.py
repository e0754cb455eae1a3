"""The interactive chat: its commands and history with a fake model, then driven as a person would."""

import io
import os
import re
import signal
import sys
from pathlib import Path

import pexpect
import pytest

from slmops.errors import ContextTooLong
from slmops.runtime.chat import ChatSession, interactive
from slmops.runtime.generate import Response


class FakeModel:
    """Answers "echo: <last message>" one word per token; records what it was asked."""

    name = "fake"
    has_chat_template = True

    def __init__(self, interrupt_after: int | None = None, too_long: bool = False):
        self.calls = []
        self.interrupt_after = interrupt_after
        self.too_long = too_long

    def conversation(self, **options):
        return FakeConversation(self, options)

    def stream_chat(self, messages, truncate=False, **options):
        self.calls.append(([dict(message) for message in messages], truncate, options))
        if self.too_long:
            raise ContextTooLong("The prompt is 900 tokens but fake holds 512.")
        return self._tokens(messages[-1]["content"])

    def _tokens(self, text):
        words = ["echo:", *text.split()]
        for index, word in enumerate(words):
            if self.interrupt_after is not None and index == self.interrupt_after:
                raise KeyboardInterrupt
            last = index == len(words) - 1
            yield Response(
                (" " if index else "") + word, index, 3, index + 1, 0.01, 50.0, 0.1, "stop" if last else None
            )


class FakeConversation:
    def __init__(self, model, options):
        self.model, self.options = model, options

    def stream(self, messages, truncate=False):
        return self.model.stream_chat(messages, truncate, **self.options)


def session_with(model, **kwargs):
    out, err = io.StringIO(), io.StringIO()
    return ChatSession(model, out=out, err=err, **kwargs), out, err


def test_history_grows_turn_by_turn_and_options_pass_through():
    model = FakeModel()
    session, out, _ = session_with(model, options={"max_tokens": 5, "seed": 1}, truncate=True, system="Be kind.")
    session.handle("hello there")
    session.handle("second")
    assert out.getvalue() == "echo: hello there\necho: second\n"
    messages, truncate, options = model.calls[-1]
    assert messages == [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "hello there"},
        {"role": "assistant", "content": "echo: hello there"},
        {"role": "user", "content": "second"},
    ]
    assert truncate is True and options == {"max_tokens": 5, "seed": 1}


def test_clear_system_help_and_unknown_commands():
    model = FakeModel()
    session, _, err = session_with(model)
    session.handle("one")
    session.handle("/system You are terse.")
    session.handle("/clear")
    session.handle("two")
    assert model.calls[-1][0] == [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "two"}]
    session.handle("/system")
    assert session.messages[0]["role"] == "user"
    session.handle("/help")
    session.handle("/frobnicate")
    assert "/clear" in err.getvalue() and "Unknown command /frobnicate" in err.getvalue()
    assert session.handle("   ") is True and len(model.calls) == 2  # blank lines ask nothing
    assert session.handle("/exit") is False


def test_ctrl_c_stops_the_answer_and_keeps_the_session():
    model = FakeModel(interrupt_after=3)
    session, out, err = session_with(model)
    session.handle("a b c d e f")
    assert out.getvalue() == "echo: a b\n" and "[stopped]" in err.getvalue()
    assert session.history[-1] == {"role": "assistant", "content": "echo: a b"}
    model.interrupt_after = None
    assert session.handle("next") is True
    assert out.getvalue().endswith("echo: next\n")


def test_a_chat_outgrowing_the_context_says_so_and_goes_on():
    session, out, err = session_with(FakeModel(too_long=True))
    assert session.handle("a long question") is True
    assert "Error: The prompt is 900 tokens" in err.getvalue() and "/clear" in err.getvalue()
    assert session.history == [] and out.getvalue() == ""


def test_interactive_loop_reads_until_ctrl_d_and_survives_ctrl_c_at_the_prompt():
    lines = iter(["hi", KeyboardInterrupt, "/clear", "bye now", EOFError])

    def read(prompt):
        item = next(lines)
        if isinstance(item, type) and issubclass(item, BaseException):
            raise item
        return item

    session, out, err = session_with(FakeModel())
    interactive(session, read=read)
    assert out.getvalue() == "echo: hi\necho: bye now\n\n"
    assert "Ctrl-D" in err.getvalue()


def test_ctrl_c_between_enter_and_the_answer_stops_only_that_answer():
    lines = iter(["first", "second", EOFError])

    def read(prompt):
        item = next(lines)
        if item is EOFError:
            raise EOFError
        return item

    session, out, err = session_with(FakeModel())
    answer = session.answer

    def interrupted_before_the_stream(text):  # the turn is recorded, the answer not begun
        session.history.append({"role": "user", "content": text})
        session.answer = answer
        raise KeyboardInterrupt

    session.answer = interrupted_before_the_stream
    interactive(session, read=read)
    assert "[stopped]" in err.getvalue() and out.getvalue() == "echo: second\n\n"
    assert [m["role"] for m in session.history] == ["user", "assistant", "user", "assistant"]


def test_triple_quotes_send_several_lines_as_one_message():
    lines = iter(['"""first line', "second line", 'last"""', '"""one"""', EOFError])

    def read(prompt):
        item = next(lines)
        if item is EOFError:
            raise EOFError
        return item

    model = FakeModel()
    session, out, _ = session_with(model)
    interactive(session, read=read)
    assert model.calls[0][0][-1]["content"] == "first line\nsecond line\nlast"
    assert model.calls[1][0][-1]["content"] == "one"


# ---- a person at a terminal -------------------------------------------------------

ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
PROMPT = ">>> "


class Terminal:
    """`slmops model run` in a pseudo-terminal, typed into and read as a person would.

    Every wait has its own timeout, so a chat that stops answering fails the test quickly.
    """

    def __init__(self, model: Path, *flags: str) -> None:
        slmops = str(Path(sys.executable).with_name("slmops"))
        self.child = pexpect.spawn(
            slmops,
            ["model", "run", str(model), *flags],
            encoding="utf-8",
            timeout=60,
            dimensions=(40, 200),
            env=dict(os.environ, TERM="xterm-256color"),
            # As at a person's terminal: a suite started in the background (``cmd &`` in a
            # script) ignores Ctrl-C, and the chat would inherit that.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        self.child.expect("Chatting with")
        self.child.expect_exact(PROMPT)

    def type(self, line: str) -> None:
        """Type a line and Enter; returns once the line is echoed back."""
        self.child.sendline(line)
        self.child.expect_exact(line)

    def ask(self, line: str) -> str:
        """The answer to ``line``: what the chat prints before its prompt comes back."""
        self.type(line)
        self.child.expect_exact(PROMPT)
        return ESCAPES.sub("", self.child.before).strip()

    def wait_for_answer_words(self, line: str, count: int) -> None:
        """Wait until ``count`` words of an answer are out (a second echo of ``line`` is not one)."""
        while True:
            self.child.expect(r"\S+" + r"\s+\S+" * (count - 1))
            if ESCAPES.sub("", self.child.after) not in line:
                return


@pytest.mark.slow
@pytest.mark.timeout(120, func_only=True)  # the test itself; converting the model is the fixture's
def test_interactive_chat_in_a_terminal(smollm2_int4):
    """Two questions, Ctrl-C mid-answer and at the prompt, /help, then Ctrl-D, in a real terminal.

    What the model says depends on where Ctrl-C cut the story (the cut answer stays in the
    history), so only the shape of the chat is checked, never a word of an answer.
    """
    terminal = Terminal(smollm2_int4, "--max-tokens", "400", "--temperature", "0")
    child = terminal.child
    try:
        assert terminal.ask("What is the capital of France? Answer in one sentence.")
        story = "Write a long story about a dragon who learns to bake bread."
        terminal.type(story)
        terminal.wait_for_answer_words(story, 3)
        # A fast CPU writes the whole story before a Ctrl-C typed now would arrive: the chat
        # is paused while Ctrl-C is typed, so it lands mid-answer however fast the machine.
        os.kill(child.pid, signal.SIGSTOP)
        child.sendintr()
        os.kill(child.pid, signal.SIGCONT)
        stopped = child.expect([r"\[stopped\]", r"\(/exit or Ctrl-D leaves\)"])
        assert stopped == 0, f"Ctrl-C reached the prompt, not the answer: {child.before!r}"
        assert len(child.before.split()) < 200  # far short of the 400 tokens asked for
        child.expect_exact(PROMPT)
        child.sendintr()  # at the prompt, Ctrl-C only says how to leave
        child.expect_exact("(/exit or Ctrl-D leaves)")
        child.expect_exact(PROMPT)
        assert terminal.ask("What is the capital of Italy? Answer in one sentence.")
        assert "/system TEXT" in terminal.ask("/help")
        child.sendeof()
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0


def test_ctrl_c_while_a_token_is_decoded_stops_like_ctrl_c(tiny_onnx):
    # The tokenizer's binding converts a list of ids to an array; a SIGINT landing in that
    # conversion came out as a TypeError ("incompatible function arguments") about a third of the
    # time, which the chat reported as an error instead of stopping the answer.
    import slmops

    model = slmops.load(tiny_onnx, threads=1)
    previous = signal.signal(signal.SIGALRM, signal.default_int_handler)
    caught: dict[str, int] = {}
    try:
        for trial in range(300):
            try:
                signal.setitimer(signal.ITIMER_REAL, 0.0003 + (trial % 17) * 0.00003)
                while True:
                    model.decode([81, 655])
            except BaseException as exc:  # noqa: BLE001 - counting what a Ctrl-C turns into
                signal.setitimer(signal.ITIMER_REAL, 0)
                caught[type(exc).__name__] = caught.get(type(exc).__name__, 0) + 1
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert caught == {"KeyboardInterrupt": 300}
