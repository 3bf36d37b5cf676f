"""The benchmark suite's entry point: run every benchmark that fits this machine, in turn.

    python -m benchmarks.run --quick                 # 5-15 minutes on 2 CPU cores
    python -m benchmarks.run                         # the full suite (hours)
    python -m benchmarks.run --only compare quality  # some of them
    python -m benchmarks.run --list                  # what would run, and how

Each benchmark runs as its own process (``python -m benchmarks.<name> ...``),
so one that fails does not stop the others; each writes
``benchmarks/results/<name>.json`` and regenerates its own section of
``benchmarks/RESULTS.md`` with the command, machine, date and versions above
its table. With ``--quick`` they write to ``benchmarks/results/quick/``
instead (git-ignored; its own RESULTS.md), so a quick check never overwrites
the full run's numbers (the demo, the same in both, writes to the main ones).
At the end a summary says what ran, how long it took and what failed; the
exit status is non-zero when any benchmark failed. A whole suite (no
``--only``) also records that summary, with the machine it ran on, in
``benchmarks/results/run_quick.json`` or ``run.json`` and the matching section
of ``benchmarks/RESULTS.md``: how long the suite takes is a measured figure too.

On a machine with a CUDA GPU the compare benchmark adds the GPU oracles; the
paper benchmark runs with ``--device cuda`` (pass ``--paper-data
cifar10:PATH`` to run it on CIFAR-10).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks import _common as common

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent

ORDER = ("demo", "oracles", "evaluate", "search", "compare", "quality", "paper")


@dataclass(frozen=True)
class Step:
    """One benchmark: its module's name and its arguments."""

    name: str
    args: tuple[str, ...]

    def command(self) -> list[str]:
        return [sys.executable, "-m", f"benchmarks.{self.name}", *self.args]

    def shown(self) -> str:
        return " ".join(["python", "-m", f"benchmarks.{self.name}", *self.args])


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def plan(*, quick: bool, gpu: bool, paper_data: str) -> list[Step]:
    """The benchmarks and their arguments for this machine."""
    device = "cuda" if gpu else "cpu"
    if quick:
        return [
            Step("demo", ()),
            Step("oracles", ("--quick",)),
            Step("evaluate", ("--quick",)),
            Step("search", ("--quick",)),
            Step("compare", ("--quick",)),
            Step("quality", ("--quick",)),
            Step("paper", ("--data", paper_data, "--device", device, "--quick")),
        ]
    return [
        Step("demo", ()),
        Step("oracles", ()),
        Step("evaluate", ()),
        Step("search", ()),
        Step("compare", ()),
        Step("quality", ("--device", device)),
        Step("paper", ("--data", paper_data, "--device", device)),
    ]


def record(
    *, mode: str, results: list[tuple[str, str, float]], total: float, gpu: bool, env: dict
) -> None:
    """Store the suite's wall times (``results/run_quick.json`` or ``run.json``) and its section."""
    name = "run_quick" if mode == "quick" else "run"
    command = common.command_line()
    steps = [{"benchmark": n, "status": st, "seconds": round(sec, 1)} for n, st, sec in results]
    common.write_results(name, {"mode": mode, "gpu": gpu, "total_seconds": round(total, 1),
                         "steps": steps}, command=command, env=env)  # fmt: skip
    body = common.markdown_table(
        ["benchmark", "status", "seconds"],
        [[n, st, f"{sec:.0f}"] for n, st, sec in results] + [["all", "", f"{total:.0f}"]],
    )
    cache = "empty" if env.get("cache_empty_at_start") else "holding earlier models"
    notes = (
        "Wall time of each benchmark of the suite, each as its own process, one after another. "
        "Dense models the benchmarks train are cached under `~/.cache/hwprune/benchmarks`; "
        f"a run from an empty cache trains them, a later run reuses them. Here the cache was "
        f"{cache} at the start."
    )
    common.update_results_md(name, f"The {mode} suite, timed (`benchmarks/run.py`)", body,
                      command=command, env=env, notes=notes)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog=common.module_command(__file__), description=__doc__.split("\n\n")[0]
    )
    p.add_argument(
        "--quick", action="store_true", help="small settings: 5-15 minutes on 2 CPU cores"
    )
    p.add_argument("--only", nargs="+", choices=ORDER, metavar="NAME",
                   help=f"run only these ({', '.join(ORDER)})")  # fmt: skip
    p.add_argument("--paper-data", default="digits",
                   help="data for the paper benchmark: digits or cifar10:PATH")  # fmt: skip
    p.add_argument("--no-gpu", action="store_true", help="run as if no GPU were present")
    p.add_argument("--list", action="store_true", help="print the commands and exit")
    args = p.parse_args(argv)

    gpu = cuda_available() and not args.no_gpu
    steps = [s for s in plan(quick=args.quick, gpu=gpu, paper_data=args.paper_data)
             if not args.only or s.name in args.only]  # fmt: skip
    missing = [s.name for s in steps if not (BENCH_DIR / f"{s.name}.py").is_file()]
    if args.list:
        for s in steps:
            print(s.shown() + ("   (module missing)" if s.name in missing else ""))
        return 0
    results: list[tuple[str, str, float]] = []
    env = (
        common.environment()
    )  # the machine and its load at the start, not after hours of benchmarks
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hwprune"
    env["cache_empty_at_start"] = not (cache / "benchmarks").is_dir() or not any(
        (cache / "benchmarks").iterdir()
    )
    t_all = time.perf_counter()
    for s in steps:
        if s.name in missing:
            results.append((s.name, "missing", 0.0))
            continue
        print(f"==> {s.shown()}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call(s.command(), cwd=ROOT)
        seconds = time.perf_counter() - t0
        status = "ok" if rc == 0 else f"failed (exit {rc})"
        results.append((s.name, status, seconds))
        print(f"<== {s.name}: {status} in {seconds:.0f} s", flush=True)
    total = time.perf_counter() - t_all
    mode = "quick" if args.quick else "full"
    print(f"\nbenchmarks ({mode}, {total:.0f} s in all):")
    for name, status, seconds in results:
        print(f"  {name:<8} {status:<20} {seconds:7.0f} s")
    if not args.only:
        record(mode=mode, results=results, total=total, gpu=gpu, env=env)
    print(f"results: {BENCH_DIR / 'results'}, tables: {BENCH_DIR / 'RESULTS.md'}")
    return 0 if all(status == "ok" for _, status, _ in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
