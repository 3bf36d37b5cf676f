"""Option types shared by the subcommands."""

from __future__ import annotations

import argparse
from collections.abc import Callable


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
