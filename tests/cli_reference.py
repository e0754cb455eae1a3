"""docs/cli.md: every `slmops` command's `--help`, rendered from click.

python3 dev.py docs    # rewrites docs/cli.md (tests/test_docs.py fails while it is stale)
python -m tests.cli_reference --print    # prints it
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import click

from slmops.cli import cli

PATH = Path(__file__).resolve().parent.parent / "docs" / "cli.md"
# --help wraps to the terminal; a fixed width makes the page the same on every machine.
WIDTH = 100
HEADER = """# `slmops` command reference

Every command's `--help`, generated from the code by `python3 dev.py docs`; do not edit by hand.
The guides show the commands at work: [convert](convert.md), [cache](cache.md),
[runtime](runtime.md), [server](server.md), [bench](bench.md), [quality](quality.md).
"""


def commands() -> Iterator[click.Context]:
    """A context for `slmops` and for every subcommand, depth first, as `--help` would build it."""

    def walk(ctx: click.Context) -> Iterator[click.Context]:
        yield ctx
        if isinstance(ctx.command, click.Group):
            for name in ctx.command.list_commands(ctx):
                sub = ctx.command.get_command(ctx, name)
                if sub is not None and not sub.hidden:
                    yield from walk(click.Context(sub, info_name=name, parent=ctx, **sub.context_settings))

    yield from walk(
        click.Context(cli, info_name="slmops", terminal_width=WIDTH, max_content_width=WIDTH, **cli.context_settings)
    )


def alias_of(ctx: click.Context) -> str | None:
    """The command path this one is another name for (`cache list` for `cache ls`), or None."""
    parent, name = ctx.parent, ctx.command.name
    if parent is None or name is None or name == ctx.info_name:
        return None
    group = parent.command
    same = isinstance(group, click.Group) and group.get_command(parent, name) is ctx.command
    return f"{parent.command_path} {name}" if same else None


def render() -> str:
    """The text of docs/cli.md."""
    contents, sections = [], []
    for ctx in commands():
        path, original = ctx.command_path, alias_of(ctx)
        summary = f"another name for `{original}`" if original else ctx.command.get_short_help_str(limit=90)
        contents.append(f"{'  ' * max(path.count(' ') - 1, 0)}- [`{path}`](#{_anchor(path)}): {summary}")
        body = f"Another name for [`{original}`](#{_anchor(original)}).\n" if original else _help(ctx)
        sections.append(f"## {path}\n\n{body}")
    return "\n".join([HEADER, *contents, "", *sections]).rstrip() + "\n"


def _anchor(path: str) -> str:
    return path.replace(" ", "-")


def _help(ctx: click.Context) -> str:
    text = "\n".join(line.rstrip() for line in ctx.command.get_help(ctx).splitlines())
    return f"```text\n{text}\n```\n"


if __name__ == "__main__":
    if sys.argv[1:] == ["--print"]:
        print(render(), end="")
    else:
        PATH.write_text(render(), encoding="utf-8")
        print(f"wrote {PATH}")
