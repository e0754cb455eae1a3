"""slmops.console: rich's tables on a terminal, one plain line per row anywhere else."""

import io

from rich.console import Console
from rich.table import Table

from slmops.console import plain_lines, print_table

LONG = "a-case-name-long-enough-for-rich-to-wrap-it"


def table() -> Table:
    table = Table(title="Suite s: 1/2 pass", caption="medians")
    table.add_column("case")
    table.add_column("tok/s", justify="right")
    table.add_row(f"[red]{LONG}[/red]", "7.5")
    table.add_row("b", "123.0")
    return table


def test_off_a_terminal_each_row_is_one_plain_line():
    out = io.StringIO()
    print_table(table(), Console(file=out, width=30))
    pad = " " * (len(LONG) - len("case"))
    assert out.getvalue().splitlines() == [
        "Suite s: 1/2 pass",
        f"case{pad}   tok/s",
        f"{LONG}     7.5",
        f"b{' ' * (len(LONG) - 1)}   123.0",
        "medians",
    ]


def test_on_a_terminal_rich_draws_the_table():
    drawn, printed = io.StringIO(), io.StringIO()
    Console(file=drawn, width=30, force_terminal=True).print(table())
    print_table(table(), Console(file=printed, width=30, force_terminal=True))
    assert printed.getvalue() == drawn.getvalue() and "┃" in drawn.getvalue()


def test_a_headerless_table_prints_only_its_rows():
    facts = Table(show_header=False, box=None)
    facts.add_column()
    facts.add_column()
    facts.add_row("model", "x (int4)")
    facts.add_row("output", "/a/long/path")
    assert plain_lines(facts) == ["model    x (int4)", "output   /a/long/path"]
