"""Rich consoles shared by the subcommands (only the CLI prints)."""

from typing import Any

from rich.console import Console

console = Console()
err_console = Console(stderr=True)

#: Columns a table may take on stdout when it is not a terminal.
PIPE_WIDTH = 160


def print_table(table: Any) -> None:
    """A rich table on stdout: fitted to a terminal; in a file or a pipe, which has no width
    to fit, its rows are kept whole rather than cut to 80 columns."""
    out = console if console.is_terminal else Console(width=max(console.width, PIPE_WIDTH))
    out.print(table)
