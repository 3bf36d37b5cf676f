"""Benchmark the remote oracle: seconds of overhead per measurement through ``hwprune serve`` on loopback.

For a small model (the CIFAR VGG-11 at width 0.25, 1x3x32x32) and a
resnet18-size one (torchvision resnet18, random weights, 1x3x224x224), the
same oracle measures the same ONNX bytes locally and through a server
process on 127.0.0.1, alternately, ``--calls`` times each, without a cache:

* local: the wall time of ``oracle.measure`` in this process;
* remote: the wall time of the remote oracle's ``measure`` (upload, the
  server's parse and measurement, the JSON answer);
* overhead: remote minus local (difference of the medians), and the part
  that is transport alone: the remote wall time minus the server's own
  measuring time, as the server reports it (median over calls). The
  transport figure is immune to the timing protocol's own variation (an
  adaptive timing stops when its confidence interval is narrow enough, so
  two calls of one oracle differ by more than the HTTP round trip).

Oracles: ``params`` (exact, no timing: the overhead of the service on a
cheap query) and ``onnxruntime:cpu?threads=1``. Run it pinned and niced on a
shared machine; the server inherits the pinning, and it never times while
the client works (the client waits for its answer)::

    OMP_NUM_THREADS=1 taskset -c 1 nice python -m benchmarks.remote_oracle

It writes ``benchmarks/results/remote_oracle.json`` and regenerates the
"remote_oracle" section of ``benchmarks/RESULTS.md`` (unless ``--no-write``).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import select
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import oracles
from benchmarks import _common as common

_HERE = Path(__file__).resolve().parent

log = logging.getLogger("benchmarks.remote_oracle")

MODELS = {
    "vgg11_cifar-w0.25": ("vgg11_cifar", 0.25, (1, 3, 32, 32)),
    "resnet18": ("resnet18", 1.0, (1, 3, 224, 224)),
}
ORACLES = ("params", "onnxruntime:cpu?threads=1")
QUICK_CALLS = 3


def build_onnx(name: str) -> bytes:
    from hwprune.export.onnx import export_onnx
    from hwprune.models import get_model

    model, width, shape = MODELS[name]
    classes = 10 if model.endswith("_cifar") else 1000
    module = get_model(model, num_classes=classes, width=width).eval()
    return export_onnx(module, input_shape=shape)


def start_server(specs: list[str]) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "hwprune", "serve", "--port", "0"]
    for spec in specs:
        cmd += ["--oracle", spec]
    env = {**os.environ, "PYTHONPATH": str(_HERE.parent)}
    env.pop("HWPRUNE_TOKEN", None)
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if select.select([proc.stdout], [], [], 0.5)[0]:
            m = re.search(r"at (http://127\.0\.0\.1:\d+)", proc.stdout.readline())
            if m:
                proc.stdout.close()  # nothing else is printed on stdout; logs go to stderr
                return proc, m.group(1)
    proc.kill()
    raise RuntimeError("the oracle server did not start within 120 s")


def bench(spec: str, url: str, data: bytes, shape: tuple[int, ...], calls: int) -> dict[str, Any]:
    shapes = {"input": shape}
    local_s, remote_s, transport_s, local_v, remote_v = [], [], [], [], []
    for _ in range(calls):
        local = oracles.get_oracle(spec)
        t0 = time.perf_counter()
        m = local.measure(data, input_shapes=shapes)
        local_s.append(time.perf_counter() - t0)
        local_v.append(m.value)

        remote = oracles.get_oracle(f"{spec}@{url}")
        t0 = time.perf_counter()
        r = remote.measure(data, input_shapes=shapes)
        wall = time.perf_counter() - t0
        remote_s.append(wall)
        transport_s.append(wall - r.extra["remote"]["server_seconds"])
        remote_v.append(r.value)
    med = statistics.median
    return {
        "oracle": spec,
        "unit": m.unit,
        "calls": calls,
        "onnx_bytes": len(data),
        "local_seconds": local_s,
        "remote_seconds": remote_s,
        "transport_seconds": transport_s,
        "local_values": local_v,
        "remote_values": remote_v,
        "local_median_s": med(local_s),
        "remote_median_s": med(remote_s),
        "overhead_s": med(remote_s) - med(local_s),
        "transport_median_s": med(transport_s),
        "local_value": med(local_v),
        "remote_value": med(remote_v),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=common.module_command(__file__), description=__doc__.splitlines()[0]
    )
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--calls", type=int, default=7, help="calls per side (default 7)")
    parser.add_argument("--no-write", action="store_true", help="print only; write no results")
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK_CALLS} calls; results go to benchmarks/results/quick/")  # fmt: skip
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.quick:
        args.calls = QUICK_CALLS
    if args.calls < 1:
        parser.error("--calls must be at least 1")

    env = common.environment()
    proc, url = start_server(list(ORACLES))
    rows: list[dict[str, Any]] = []
    try:
        for name in args.models:
            data = build_onnx(name)
            shape = MODELS[name][2]
            for spec in ORACLES:
                row = {
                    "model": name,
                    "input_shape": list(shape),
                    **bench(spec, url, data, shape, args.calls),
                }
                rows.append(row)
                log.info(
                    "%-18s %-27s local %.3f s  remote %.3f s  overhead %+.3f s  transport %.3f s  "
                    "values %.4g / %.4g %s",
                    name, spec, row["local_median_s"], row["remote_median_s"], row["overhead_s"],
                    row["transport_median_s"], row["local_value"], row["remote_value"], row["unit"],
                )  # fmt: skip
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    if args.no_write:
        return 0

    command = common.command_line()
    out = common.write_results(
        "remote_oracle",
        {"rows": rows, "calls": args.calls, "server": url},
        command=command,
        env=env,
        quick=args.quick,
    )
    table = common.markdown_table(
        ["model", "ONNX size", "oracle", "local (s)", "remote (s)", "overhead (s)",
         "transport (s)", "value local / remote"],
        [
            [r["model"], f"{r['onnx_bytes'] / 2**20:.2f} MiB", f"`{r['oracle']}`",
             f"{r['local_median_s']:.3f}", f"{r['remote_median_s']:.3f}",
             f"{r['overhead_s']:+.3f}", f"{r['transport_median_s']:.3f}",
             f"{r['local_value']:.4g} / {r['remote_value']:.4g} {r['unit']}"]
            for r in rows
        ],
    )  # fmt: skip
    load = env["machine"].get("load_average")
    notes = (
        f"Medians of {args.calls} alternating calls per side, no cache, fresh oracle each call; "
        "the server is a `hwprune serve` process on 127.0.0.1 of the same machine. Overhead: "
        "remote median minus local median (for a timed oracle this difference also carries the "
        "timing protocol's own call-to-call variation, so it can even be negative). Transport: "
        "the remote call's wall time minus the server's own measuring time (upload of the ONNX "
        "bytes, the server's parse and external-data check, the JSON answer): the cost of going "
        "through the server, free of timing noise. Over a real network add the upload time of "
        "the ONNX size shown."
    )
    if load:
        notes += (
            f" Taken on a shared machine (1-minute load average {load[0]} on "
            f"{env['machine'].get('cores')} cores at the start), pinned to one core and niced: "
            "absolute times are noisy."
        )
    md = common.update_results_md(
        "remote_oracle", "Remote oracle: overhead of measuring through `hwprune serve`", table,
        command=command, env=env, notes=notes, quick=args.quick,
    )  # fmt: skip
    log.info("wrote %s and %s", out, md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
