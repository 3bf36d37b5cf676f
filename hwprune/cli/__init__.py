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
from types import ModuleType
from typing import NoReturn

SUBCOMMANDS = ["measure", "compare-oracles", "prune", "export", "demo", "train", "serve"]


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``error: <what> (see 'hwprune CMD --help')``, exit 2."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"error: {message} (see '{self.prog} --help')\n")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="hwprune",
        description=(
            "Hardware-aware pruning: prune a PyTorch model until it meets budgets measured "
            "on the runtime that will serve it, then prove them on the exported model."
        ),
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.add_argument("--version", action="version", version=f"hwprune {_version()}",
                        help="print hwprune's version and exit")  # fmt: skip
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in SUBCOMMANDS:
        subcommand(name).add_parser(sub)
    return parser


def subcommand(name: str) -> ModuleType:
    """The module of subcommand ``name`` (imported by name, so a subcommand that runs another,
    as ``prune --demo`` runs ``demo``, does not import it)."""
    return importlib.import_module(f"hwprune.cli.{name.replace('-', '_')}")


def _version() -> str:
    """The installed distribution's version (its metadata), as pip shows it."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("hwprune")
    except PackageNotFoundError:
        return "unknown (not installed; run from a source tree)"


def _say(message: str) -> None:
    from rich.markup import escape  # messages name extras like "hwprune[gpu]"

    from hwprune.cli._console import err_console

    # One line whatever the terminal width: a message is a sentence, not a paragraph.
    text = " ".join(str(message).split())
    err_console.print(f"[bold red]error:[/] {escape(text)}", highlight=False, soft_wrap=True)


def main(argv: list[str] | None = None) -> int:
    from hwprune.errors import HwpruneError
    from oracles.errors import OracleError

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already printed on one line
        return exc.code if isinstance(exc.code, int) else 2
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except (HwpruneError, OracleError) as exc:
        _say(str(exc))
        return 2
    except SystemExit as exc:
        # Nothing of hwprune's exits here: user code it ran (a model's forward, a library it
        # calls) did, and a run must not end silently with exit 0.
        from hwprune.registry import exit_call

        _say(f"'hwprune {args.command}' stopped: code it ran called {exit_call(exc)}")
        return 2
    except KeyboardInterrupt:
        from hwprune.cli._console import err_console

        err_console.print("interrupted", highlight=False)
        return 130
    except BrokenPipeError:
        # The reader of our output went away (``| head``); nothing left to say to it.
        _silence_stdout()
        return 1
    except MemoryError:
        _say("out of memory; try a smaller model, --batch or input size")
        return 2
    except OSError as exc:
        if args.verbose or exc.filename is None:
            raise
        # A file or folder the command was pointed at cannot be read or written.
        where = f"{exc.filename!r}" + (f" -> {exc.filename2!r}" if exc.filename2 else "")
        _say(f"{exc.strerror or type(exc).__name__}: {where}")
        return 2


def _silence_stdout() -> None:
    # Python flushes stdout at exit and would report the broken pipe a second time.
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    sys.exit(main())
