"""Options shared by the subcommands: argparse types, option groups and their checks."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any


def bounded_int(lo: int, hi: int) -> Callable[[str], int]:
    """An argparse ``type``: a whole number from ``lo`` to ``hi``, else one line saying so.

    The range is checked while the command line is read, so a value no library below can
    take (a seed numpy cannot unpack) never reaches it.
    """

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"must be a whole number from {lo} to {hi}, got {text!r}"
            ) from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(
                f"must be a whole number from {lo} to {hi}, got {text}"
            )
        return value

    parse.__name__ = "int"  # argparse names the type in some messages
    return parse


def add_output_options(p: argparse.ArgumentParser, *, json_help: str) -> None:
    """``--quiet`` (no progress) and ``--json`` (the result as JSON on stdout; progress stays on
    stderr, so ``--json > result.json`` still shows how a long run goes)."""
    p.add_argument("--quiet", action="store_true", help="no progress bars or lines")
    p.add_argument("--json", action="store_true", help=json_help)


def shows_progress(args: argparse.Namespace) -> bool:
    """Whether a command shows its progress on stderr: always but with --quiet (--json writes
    the result alone to stdout, so a reader of stdout is not disturbed)."""
    return not args.quiet


def add_cache_options(p: argparse.ArgumentParser) -> None:
    """``--cache PATH`` or ``--no-cache``: where a measuring command keeps its measurements."""
    group = p.add_mutually_exclusive_group()
    group.add_argument("--cache", metavar="PATH", help="oracle cache file (default: "
                       "$HWPRUNE_CACHE, else oracles.sqlite in $HWPRUNE_HOME, else in "
                       "~/.cache/hwprune)")  # fmt: skip
    group.add_argument("--no-cache", action="store_true", help="measure afresh, store nothing")


def check_cache(args: argparse.Namespace) -> None:
    """The cache ``add_cache_options`` named, checked before anything is loaded or measured
    (``hwprune.outputs``): its file, or hwprune's own folder that holds the default one."""
    from hwprune.outputs import check_cache_file, check_home

    if args.no_cache:
        return
    if args.cache:
        check_cache_file(args.cache)
    else:
        check_home()


def open_cache(args: argparse.Namespace) -> Any:
    """The ``oracles.MeasurementCache`` that ``add_cache_options`` named (None: --no-cache)."""
    from oracles import MeasurementCache

    return None if args.no_cache else MeasurementCache(args.cache)


def add_command(
    sub: argparse._SubParsersAction,
    name: str,
    doc: str | None,
    *,
    run: Callable[[argparse.Namespace], int],
    epilog: str | None = None,
) -> argparse.ArgumentParser:
    """Register subcommand ``name`` from its module's docstring ``doc``, so one text serves
    the reader of the code and of ``--help``: the first paragraph, less its
    ````hwprune NAME``: `` and its final full stop, is the one-line help that ``hwprune
    --help`` lists; the rest is the command's description. ``run(args)`` runs
    the command and returns its exit code."""
    first, _, rest = (doc or "").strip().partition("\n\n")
    summary = " ".join(first.split()).removeprefix(f"``hwprune {name}``: ").removesuffix(".")
    p = sub.add_parser(name, help=summary, description=" ".join(rest.split()), epilog=epilog)
    p.set_defaults(func=run)
    return p
