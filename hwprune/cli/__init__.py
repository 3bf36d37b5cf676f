"""The ``hwprune`` command: one entry point, one module per subcommand.

Each module in ``SUBCOMMANDS`` has ``add_parser(subparsers)`` that registers
its subcommand and sets ``func(args) -> int``. Modules import heavy libraries
inside ``func`` so ``hwprune --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

SUBCOMMANDS = ["measure", "compare-oracles", "prune", "export", "demo", "train", "serve"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hwprune",
        description=(
            "Hardware-aware pruning: prune a PyTorch model until it meets budgets measured "
            "on the runtime that will serve it, then prove them on the exported model."
        ),
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in SUBCOMMANDS:
        importlib.import_module(f"hwprune.cli.{name.replace('-', '_')}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from hwprune.cli._console import err_console
    from hwprune.errors import HwpruneError
    from oracles.errors import OracleError

    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except (HwpruneError, OracleError) as exc:
        from rich.markup import escape  # messages name extras like "hwprune[gpu]"

        err_console.print(
            f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True
        )
        return 2
    except KeyboardInterrupt:
        err_console.print("interrupted", highlight=False)
        return 130


if __name__ == "__main__":
    sys.exit(main())
