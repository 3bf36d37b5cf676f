"""``hwprune serve``: serve ONNX oracles over HTTP so a search on another machine measures on
this one.

Serve the named ONNX oracles over HTTP on this machine (the target device). A search elsewhere
names one as SPEC@http://HOST:PORT, e.g. --oracle
latency='onnxruntime:cpu?threads=1@http://jetson:8765'. One measurement runs at a time; the
server listens on 127.0.0.1 unless --host says otherwise, and any other address needs a token
($HWPRUNE_TOKEN on both machines).
"""

from __future__ import annotations

import argparse

from hwprune.cli._options import add_command

EXAMPLE = "example: hwprune serve --oracle 'onnxruntime:cpu?threads=1' --port 8765"


def add_parser(sub: argparse._SubParsersAction) -> None:
    # The server itself is oracles.serve (it imports no torch, so a device needs only onnx and
    # its runtime); this module adds it to the hwprune command.
    from oracles.serve import add_arguments

    p = add_command(sub, "serve", __doc__, run=run, epilog=EXAMPLE)
    add_arguments(p)


def run(args: argparse.Namespace) -> int:
    import logging

    from hwprune.cli._console import console
    from oracles import serve

    # A server's operator wants to see each request; the CLI's default level is WARNING.
    logging.getLogger("oracles.serve").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    server = serve.start_from_args(args)

    def announce(line: str) -> None:
        console.print(line, highlight=False, soft_wrap=True)
        console.file.flush()

    return serve.run(server, announce=announce)
