"""Every `slmops ...` line in the README and docs names a real command with real flags, and every
command has help text, an entry in docs/cli.md (generated, and current) and a guide that shows it."""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import click
import pytest

from slmops.cli import cli
from tests import cli_reference

ROOT = Path(__file__).resolve().parent.parent
# The hand-written pages; docs/cli.md is generated from the commands themselves.
DOCS = [ROOT / "README.md", *sorted(path for path in (ROOT / "docs").glob("*.md") if path != cli_reference.PATH)]
FENCE = re.compile(r"```[a-z]*\n(.*?)```", re.S)
INDENTED = re.compile(r"(?:^    .*\n?)+", re.M)
INLINE = re.compile(r"(?<!`)`(slmops [^`]+)`")


def documented_command_lines(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    blocks = FENCE.findall(text) + INDENTED.findall(FENCE.sub("", text)) + INLINE.findall(text)
    lines = []
    for block in blocks:
        block = block.replace("\\\n", " ")
        for line in block.splitlines():
            line = line.strip().removeprefix("$ ")
            if "slmops " not in line or line.startswith(("#", "import", "from", "print")):
                continue
            start = line.index("slmops ")
            command = line[start:]
            if line[max(0, start - 2) : start] == "$(":  # a command substitution
                command = command.split(")")[0]
            command = re.split(r"\s+#\s", command)[0]  # a trailing comment
            command = re.split(r"\s[|>&]\s?|\s&$|;", command)[0]  # a pipe, redirect or background
            if re.match(r"slmops [a-z]", command):
                lines.append(command.strip())
    return lines


def resolve(tokens: list[str]) -> tuple[click.Command, list[str]]:
    """Walk the command tree; return the command reached and the tokens left for it."""
    command, ctx = cli, click.Context(cli)
    while isinstance(command, click.Group) and tokens and not tokens[0].startswith("-"):
        sub = command.get_command(ctx, tokens[0])
        if sub is None:
            sub = command.get_command(ctx, "run") if command.name == "bench" else None
            if sub is None:
                raise AssertionError(f"no command {tokens[0]!r}")
            command = sub
            continue
        command, tokens = sub, tokens[1:]
    if isinstance(command, click.Group) and tokens and command.name == "bench":
        command = command.get_command(ctx, "run")
    return command, tokens


def option_names(command: click.Command) -> set[str]:
    names = {"--help", "-h", "--verbose"}
    for param in command.params:
        if isinstance(param, click.Option):
            names.update(param.opts)
            names.update(param.secondary_opts)
    return names


CASES = [(path.name, line) for path in DOCS for line in documented_command_lines(path)]


def test_docs_show_commands():
    assert len(CASES) > 30
    assert {name for name, _ in CASES} >= {"README.md", "convert.md", "server.md"}


@pytest.mark.parametrize(("doc", "line"), CASES)
def test_documented_command_exists_with_its_flags(doc, line):
    tokens = shlex.split(line)[1:]
    command, rest = resolve(tokens)
    known = option_names(command)
    for token in rest:
        if token.startswith("--") or re.fullmatch(r"-[a-zA-Z]", token):
            assert token.split("=")[0] in known, f"{doc}: `{line}`: {token} is not an option of {command.name}"


def test_cli_reference_is_current():
    # In a fresh process: click keeps the help option of a command from the first context that
    # asked for it, so a test that invoked `cache` on its own would leave it without `-h` here.
    command = [sys.executable, "-m", "tests.cli_reference", "--print"]
    rendered = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert cli_reference.PATH.read_text(encoding="utf-8") == rendered, (
        "docs/cli.md differs from the commands' --help; regenerate it with `python3 dev.py docs`"
    )


@pytest.mark.parametrize("ctx", list(cli_reference.commands()), ids=lambda ctx: ctx.command_path)
def test_command_has_help_and_a_docs_entry(ctx):
    command, path = ctx.command, ctx.command_path
    assert (command.help or command.short_help or "").strip(), f"`{path}` has no help text: give it a docstring"
    for param in command.params:
        if isinstance(param, click.Option) and not param.hidden:
            assert (param.help or "").strip(), f"`{path}` {param.opts[0]} has no help text"
    assert f"\n## {path}\n" in cli_reference.PATH.read_text(encoding="utf-8"), (
        f"`{path}` is missing from docs/cli.md; regenerate it with `python3 dev.py docs`"
    )
    top = " ".join(path.split()[:2])
    guides = [doc.read_text(encoding="utf-8") for doc in DOCS]
    assert any(re.search(re.escape(top) + r"(?![\w-])", guide) for guide in guides), (
        f"no guide mentions `{top}`: show it at work in README.md or a page of docs/"
    )
