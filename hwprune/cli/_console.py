"""Rich consoles shared by the subcommands (only the CLI prints)."""

from rich.console import Console

console = Console()
err_console = Console(stderr=True)
