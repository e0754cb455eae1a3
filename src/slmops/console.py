"""How slmops prints its tables: rich's on a terminal, one plain line per row elsewhere.

Off a terminal (``slmops cache ls | grep NAME``, a file, a CI log) rich fits a table to
80 columns and wraps a long cell over several lines, so a model's name and the rest of
its row no longer share a line. There every row is printed whole instead, in aligned
columns without borders or colours, so grep, cut and awk see one row per line.
"""

from __future__ import annotations

from rich.cells import cell_len
from rich.console import Console, RenderableType
from rich.errors import MarkupError
from rich.table import Table
from rich.text import Text

COLUMN_GAP = "   "


def make_console(stderr: bool = False) -> Console:
    """A rich console on standard output (or error) that, off a terminal, never wraps a line."""
    console = Console(stderr=stderr)
    console.soft_wrap = not console.is_terminal
    return console


def print_table(table: Table, console: Console | None = None) -> None:
    """Print ``table`` on ``console`` (default: standard output): as rich draws it on a
    terminal, else its title, header, rows and caption as plain lines (:func:`plain_lines`)."""
    console = console or make_console()
    if console.is_terminal:
        console.print(table)
        return
    for line in plain_lines(table):
        console.print(line, markup=False, highlight=False, soft_wrap=True)


def plain_lines(table: Table) -> list[str]:
    """The table as text: one line per row, columns padded to their widest cell, cells never wrapped."""
    columns = table.columns
    rows = [[_plain(cell) for cell in cells] for cells in zip(*(column.cells for column in columns))]
    if table.show_header:
        rows.insert(0, [_plain(column.header) for column in columns])
    widths = [max((cell_len(row[index]) for row in rows), default=0) for index in range(len(columns))]
    lines = [
        COLUMN_GAP.join(_pad(cell, width, column.justify) for cell, width, column in zip(row, widths, columns)).rstrip()
        for row in rows
    ]
    title = [_plain(table.title)] if table.title else []
    caption = [_plain(table.caption)] if table.caption else []
    return title + lines + caption


def _pad(cell: str, width: int, justify: str) -> str:
    padding = " " * (width - cell_len(cell))  # terminal cells, not characters: CJK and emoji take two
    return padding + cell if justify == "right" else cell + padding


def _plain(cell: RenderableType | None) -> str:
    """A cell's text without markup, on one line."""
    if isinstance(cell, str):
        try:
            text = Text.from_markup(cell).plain
        except MarkupError:  # brackets that only look like markup, e.g. in a model's answer
            text = cell
    else:
        text = cell.plain if isinstance(cell, Text) else ("" if cell is None else str(cell))
    return " ".join(text.splitlines())
