"""Benchmark: the search proxy's seconds per candidate, today's recipe against the raced one.

On one model at its input size (default: torchvision ResNet-50 at 224 with 10 classes, the
built-in task on digits upsampled, as ``knapsack_cost`` runs it), the same random candidates are
scored twice by an ``Evaluator`` with a FLOPs budget (cheap, exact, so feasibility is the same
in both):

* ``today``: BN re-estimation on 4 x 64 images, the proxy on min(search set, 2000) images;
* ``raced``: BN batches of 32 until the statistics settle (``bn_settle``, at most 8), and the
  proxy raced against the best feasible candidate so far (``racing``; 95% over the looks).

It reports per variant the median proxy seconds (BN + accuracy) per candidate and their ratio,
and how many candidates the race stopped. With random weights the dense model is at chance and
so is every candidate: the race then stops every candidate at its first look (no score could
inform the search or the choice), and the rest of the saving comes from the BN pass.
``--probe N`` fits the classifier head on N training images first, on the features of BN
statistics estimated on training images as the evaluator estimates them (the backbone stays
random), which puts the dense model above chance as a trained one can be.

    OMP_NUM_THREADS=1 nice taskset -c 1 python -m benchmarks.proxy_cost --candidates 12
    python -m benchmarks.proxy_cost --quick      # ResNet-18 at 32 px, 3 candidates: a smoke run
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import statistics
import time
from typing import Any

from benchmarks import _common as common

log = logging.getLogger("benchmarks.proxy_cost")

NAME = "proxy_cost"
TODAY: dict[str, Any] = {}  # the evaluator's defaults
RACED: dict[str, Any] = {"racing": True, "bn_settle": 0.05, "bn_batches": 8, "bn_batch_size": 32}


def fit_head(model: Any, data: Any, *, images: int, steps: int = 200) -> float:
    """Fit ``model``'s last Linear layer on the features of ``images`` training images (the rest
    stays as it is); returns its training accuracy.

    BatchNorm statistics are estimated on the training images first, as the evaluator does for
    every candidate: a head fitted on the features of the initial statistics (mean 0, variance
    1, far from a random backbone's activations) is useless once a candidate's statistics are
    re-estimated, and every candidate, the dense one too, then scores at chance."""
    import torch

    from hwprune.train.loop import reestimate_bn

    reestimate_bn(model, data.train, batches=8, batch_size=64, seed=0)
    head = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    feats: list[torch.Tensor] = []
    hook = head.register_forward_hook(lambda m, i, o: feats.append(i[0].detach()))
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(data.train, range(images)),
                                         batch_size=32)  # fmt: skip
    labels = []
    model.eval()
    with torch.no_grad():
        for x, y in loader:
            model(x)
            labels.append(y)
    hook.remove()
    x, y = torch.cat(feats), torch.cat(labels)
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)  # scale-free features for the optimiser
    opt = torch.optim.Adam(head.parameters(), lr=0.01)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(head(x), y).backward()
        opt.step()
    return float((head(x).argmax(1) == y).float().mean())


def score(
    space: Any, data: Any, policies: list[Any], *, budget: str, settings: dict
) -> tuple[dict, list[dict]]:
    """Every policy evaluated in order by one evaluator with ``settings``: the dense model's
    proxy score and chance floor, and per policy its proxy's cost."""
    from hwprune.budgets import bind_constraints
    from hwprune.evaluate import Evaluator

    ev = Evaluator(space=space, data=data, constraints=bind_constraints([budget]), **settings)
    ev.calibrate()
    log.info("dense model: proxy score %.4f (chance floor %s)", ev.dense_accuracy,
             "none" if ev.score_floor is None else f"{ev.score_floor:.4f}")  # fmt: skip
    dense = {"score": ev.dense_accuracy, "floor": ev.score_floor}
    rows = []
    for policy in policies:
        o = ev.evaluate(policy)
        t = o.timings
        rows.append({"bn": t.get("bn"), "accuracy_seconds": t.get("accuracy"),
                     "proxy": t.get("proxy"), "score": o.accuracy, "feasible": o.feasible,
                     "raced": o.raced, "samples": o.score_samples or ev.eval_samples})  # fmt: skip
        log.info("%s: proxy %.1f s (bn %.1f), score %.3f%s", o.key[:12], t.get("proxy", 0.0),
                 t.get("bn", 0.0), o.accuracy, f" raced ({o.raced})" if o.raced else "")  # fmt: skip
    return dense, rows


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from hwprune.data import get_dataset
    from hwprune.models import get_model
    from hwprune.space import ChannelSpace, Policy

    torch.manual_seed(args.seed)
    data = get_dataset(args.data, input_size=args.input_size)
    model = get_model(args.model, num_classes=10).eval()
    head = fit_head(model, data, images=args.probe) if args.probe else None
    shape = (1, *data.input_shape)
    space = ChannelSpace(model, example_input_shape=shape, round_to=8, min_keep=0.1)
    rng = random.Random(args.seed)
    policies = []
    for _ in range(args.candidates):
        level = rng.uniform(0.3, 0.9)
        keep = [min(1.0, max(0.1, level * rng.lognormvariate(0.0, 0.3))) for _ in space.units]
        policies.append(Policy(keep=tuple(keep)))
    extra = {"max_eval_samples": args.eval_samples} if args.eval_samples else {}
    out: dict[str, Any] = {"model": args.model, "input_size": args.input_size, "data": args.data,
                           "budget": args.budget, "candidates": args.candidates,
                           "probe_images": args.probe, "probe_train_accuracy": head,
                           "head_after_bn": bool(args.probe)}  # fmt: skip
    for name, settings in (("today", TODAY), ("raced", RACED)):
        t0 = time.perf_counter()
        dense, rows = score(space, data, policies, budget=args.budget,
                            settings={**settings, **extra})  # fmt: skip
        out[name] = {"settings": settings, "dense": dense, "rows": rows,
                     "wall_seconds": time.perf_counter() - t0,
                     "median_proxy_seconds": statistics.median(r["proxy"] for r in rows),
                     "stopped": sum(1 for r in rows if r["raced"])}  # fmt: skip
    out["ratio"] = out["today"]["median_proxy_seconds"] / out["raced"]["median_proxy_seconds"]
    return out


RUNS = common.RunRows(NAME)


def tag_of(args: argparse.Namespace) -> str:
    """The stored row's name: what decides the figures."""
    # "-hbn": the head fitted after the BN statistics were estimated (rows without it: before).
    return (f"{args.model}-{args.input_size}-{args.data}-{args.budget}-c{args.candidates}"
            f"-p{args.probe}{'-hbn' if args.probe else ''}-n{args.eval_samples or 'all'}"
            f"-s{args.seed}")  # fmt: skip


def _median(rows: list[dict], key: str) -> float:
    return statistics.median(float(r.get(key) or 0.0) for r in rows)


def _probe(r: dict) -> str:
    """How the head was fitted: on N images, after the BN statistics were estimated or not."""
    if not r["probe_images"]:
        return "-"
    return f"{r['probe_images']}" + (" (after BN)" if r.get("head_after_bn") else " (before BN)")


def _dense(d: dict | None) -> str:
    if not d:
        return "-"
    floor = "none" if d.get("floor") is None else f"{d['floor']:.3f}"
    return f"{d['score']:.3f} ({floor})"


def table(stored: list[dict]) -> str:
    """One line per stored run: each recipe's median seconds per candidate, by part."""
    head = ["model", "input", "data", "candidates", "head fitted on", "dense score (floor)",
            "candidates' scores", "today: BN s",
            "today: score s", "today: proxy s", "raced: BN s", "raced: score s",
            "raced: proxy s", "today / raced", "stopped early", "load"]  # fmt: skip
    lines = []
    for r in stored:
        t, q = r["today"]["rows"], r["raced"]["rows"]
        lines.append([r["model"], r["input_size"], f"`{r['data']}`", r["candidates"],
                      _probe(r), _dense(r["today"].get("dense")),
                      f"{min(x['score'] for x in t):.3f}-{max(x['score'] for x in t):.3f}",
                      f"{_median(t, 'bn'):.1f}",
                      f"{_median(t, 'accuracy_seconds'):.1f}",
                      f"{r['today']['median_proxy_seconds']:.1f}", f"{_median(q, 'bn'):.1f}",
                      f"{_median(q, 'accuracy_seconds'):.1f}",
                      f"{r['raced']['median_proxy_seconds']:.1f}", f"{r['ratio']:.1f}x",
                      f"{r['raced']['stopped']} of {r['candidates']}",
                      r.get("load", "-")])  # fmt: skip
    return common.markdown_table(head, lines)


NOTES = (
    "Each row: the same random candidates scored by one `Evaluator` per recipe, one after "
    "another in one process pinned to one core (`OMP_NUM_THREADS=1`), a FLOPs budget so both "
    "recipes see the same feasibility. Today's recipe: BatchNorm re-estimation on 4 x 64 "
    "images, the proxy on min(search set, 2000) images. Raced: BN batches of 32 until the "
    "running statistics settle (at most 8), the proxy scored on growing looks and stopped "
    "once it is clearly (95% over the looks) below the best feasible candidate scored so far "
    "(`--proxy-racing --bn-settle 0.05`). Medians per candidate over the run's candidates; "
    "the first candidate has no rival, so it is scored in full unless the dense model itself "
    "scores at chance: then every candidate stops at the first look (128 images), since no "
    "score could inform the search or the choice. Random weights: the "
    "classifier head is fitted on N training images (the backbone stays random); `(after "
    "BN)`: on the features of BN statistics estimated on training images, as the evaluator "
    "estimates them for every candidate, which puts the dense model above chance; `(before "
    "BN)`: on the initial statistics, which no candidate keeps, so every candidate and the "
    "best one scored at chance, none could be shown clearly worse, and only the settled BN "
    "pass saved time. `load`: the 1-minute load average on the 2-core machine at the start."
)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=common.module_command(__file__),
                                description=__doc__.splitlines()[0])  # fmt: skip
    p.add_argument("--model", default="resnet50", help="torchvision model (default: %(default)s)")
    p.add_argument("--data", default="digits", help="dataset spec (default: %(default)s)")
    p.add_argument("--input-size", type=int, default=224, help="(default: %(default)s)")
    p.add_argument("--budget", default="flops<=60%", help="(default: %(default)s)")
    p.add_argument("--candidates", type=int, default=12, help="(default: %(default)s)")
    p.add_argument(
        "--probe",
        type=int,
        default=0,
        metavar="N",
        help="fit the head on N training images first (default: random weights)",
    )
    p.add_argument(
        "--eval-samples",
        type=int,
        default=None,
        help="proxy images, both variants (default: the evaluator's 2000)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="ResNet-18 at 32 px, 3 candidates")
    args = p.parse_args(argv)
    if args.quick:
        args.model, args.input_size, args.candidates = "resnet18", 32, 3
        args.eval_samples = args.eval_samples or 300
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    load = round(os.getloadavg()[0], 2)
    result = {**run(args), "load": load}
    command = common.command_line()
    common.write_results(NAME, result, command=command, quick=args.quick)
    if not args.quick:
        RUNS.put(tag_of(args), result)
        stored = [RUNS.get(p.stem) for p in sorted(RUNS.dir.glob("*.json"))]
        common.update_results_md(NAME, "The raced proxy: seconds per candidate against today's",
                                 table([r for r in stored if r]), command=command,
                                 notes=NOTES)  # fmt: skip
    log.info("median proxy seconds per candidate: today %.2f, raced %.2f (ratio %.2f); %d of %d "
             "stopped early", result["today"]["median_proxy_seconds"],
             result["raced"]["median_proxy_seconds"], result["ratio"], result["raced"]["stopped"],
             args.candidates)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
