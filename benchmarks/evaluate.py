"""Cost of one ``Evaluator.evaluate`` call, stage by stage, and what BN re-estimation buys.

    python -m benchmarks.evaluate [--quick]

For CIFAR VGG-16 and ResNet-56 trained on digits, with the
``onnxruntime:cpu?threads=1`` latency oracle: seconds per evaluate call split
into apply / BN / accuracy / export / oracle, for new candidates (cold) and
for a policy already seen (cached). Then a CIFAR VGG-11 (width 1, 30 epochs,
three seeds; width 0.5, 5 epochs, one seed with --quick) pruned uniformly to
75% and 50% of its channels by L2 and L1 magnitude: proxy accuracy with and
without BN re-estimation, against the dense model. Writes results/evaluate.json and the
"evaluate" section of RESULTS.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from benchmarks import _common as common
from benchmarks.quality import dense_checkpoint

STAGES = ("apply", "bn", "accuracy", "export", "oracle:latency", "total")


def stage_times(name: str, width: float, epochs: int, candidates: int) -> dict:
    from hwprune.budgets import bind_constraints
    from hwprune.data import get_dataset
    from hwprune.evaluate import Evaluator
    from hwprune.models import model_from_checkpoint
    from hwprune.space import ChannelSpace, Policy

    ckpt, dense_acc = dense_checkpoint(name, width=width, epochs=epochs)
    model = model_from_checkpoint(ckpt)
    data = get_dataset("digits")
    space = ChannelSpace(model, example_input_shape=(1, *data.input_shape))
    evaluator = Evaluator(space=space, data=data, constraints=bind_constraints(["latency<=50%"]))
    evaluator.calibrate()
    keeps = [1.0 - 0.8 * i / max(1, candidates - 1) for i in range(candidates)]
    cold = [evaluator.evaluate(Policy.uniform(space, k)) for k in keeps]
    t0 = time.perf_counter()
    for k in keeps:
        evaluator.evaluate(Policy.uniform(space, k))
    cached = (time.perf_counter() - t0) / len(keeps)
    row = {
        "model": name,
        "width": width,
        "units": len(space.units),
        "candidates": candidates,
        "dense_test_accuracy": dense_acc,
        "cached_seconds": cached,
    }
    for stage in STAGES:
        row[stage] = statistics.median(o.timings.get(stage, 0.0) for o in cold)
    return row


def bn_effect(*, width: float, epochs: int, seeds: tuple[int, ...]) -> dict:
    """Proxy accuracy of uniformly pruned VGG-11s with and without BN re-estimation, per seed.

    Each seed trains its own dense model on its own digits split; the pruned
    model is scored on that split's search set before any fine-tuning.
    """
    from hwprune.data import get_dataset
    from hwprune.models import model_from_checkpoint
    from hwprune.space import ChannelSpace, Policy
    from hwprune.train import accuracy, reestimate_bn

    rows = []
    for seed in seeds:
        ckpt, _ = dense_checkpoint("vgg11_cifar", width=width, epochs=epochs, seed=seed)
        model = model_from_checkpoint(ckpt)
        data = get_dataset("digits", seed=seed)
        dense = accuracy(model, data.search)
        for importance in ("l2", "l1"):
            space = ChannelSpace(
                model, example_input_shape=(1, *data.input_shape), importance=importance
            )
            for keep in (0.75, 0.5):
                pruned = space.apply(Policy.uniform(space, keep))
                without = accuracy(pruned, data.search)
                reestimate_bn(pruned, data.train, batches=4, batch_size=64)
                with_bn = accuracy(pruned, data.search)
                rows.append(
                    {
                        "seed": seed,
                        "dense": dense,
                        "importance": importance,
                        "keep": keep,
                        "without_bn": without,
                        "with_bn": with_bn,
                        "drop_points": 100 * (dense - with_bn),
                    }
                )
    return {"model": "vgg11_cifar", "width": width, "epochs": epochs, "rows": rows}


def bn_table(bn: dict) -> str:
    """Mean over seeds per (criterion, keep), with the worst seed's drop."""
    groups: dict[tuple[str, float], list[dict]] = {}
    for r in bn["rows"]:
        groups.setdefault((r["importance"], r["keep"]), []).append(r)
    lines = []
    for (importance, keep), rs in groups.items():
        lines.append(
            [
                importance,
                f"{keep:.0%}",
                len(rs),
                f"{statistics.fmean(r['dense'] for r in rs):.1%}",
                f"{statistics.fmean(r['without_bn'] for r in rs):.1%}",
                f"{statistics.fmean(r['with_bn'] for r in rs):.1%}",
                f"{statistics.fmean(r['drop_points'] for r in rs):.1f}",
                f"{max(r['drop_points'] for r in rs):.1f}",
                " / ".join(f"{r['with_bn']:.1%}" for r in rs),
            ]
        )
    return common.markdown_table(
        [
            "criterion",
            "channels kept",
            "seeds",
            "dense",
            "pruned, no BN re-estimation",
            "pruned + BN re-estimation",
            "drop (points, mean)",
            "drop (points, worst seed)",
            "per seed",
        ],
        lines,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=common.module_command(__file__), description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="fewer candidates, short training")
    args = parser.parse_args(argv)
    candidates = 3 if args.quick else 6
    models = [("vgg16_cifar", 0.25, 8), ("resnet56_cifar", 0.5, 5)]
    rows = [stage_times(n, w, e, candidates) for n, w, e in models]
    if args.quick:
        bn = bn_effect(width=0.5, epochs=5, seeds=(0,))
    else:
        bn = bn_effect(width=1.0, epochs=30, seeds=(0, 1, 2))
    command = common.command_line()
    common.write_results(
        "evaluate", {"stages": rows, "bn_effect": bn}, command=command, quick=args.quick
    )
    table = common.markdown_table(
        ["model", "width", "units", *[f"{s} s" for s in STAGES], "cached s"],
        [
            [
                r["model"],
                r["width"],
                r["units"],
                *[f"{r[s]:.3f}" for s in STAGES],
                f"{r['cached_seconds']:.4f}",
            ]
            for r in rows
        ],
    )
    bn_line = (
        f"\n\nBN re-estimation: {bn['model']} width {bn['width']:g} trained {bn['epochs']} "
        "epochs on digits (one model per seed, each on its own split), every channel group "
        "pruned uniformly by the criterion, no fine-tuning; proxy accuracy on the search "
        "split; BN statistics re-estimated on 4 batches of 64 training images.\n\n" + bn_table(bn)
    )
    common.update_results_md(
        "evaluate",
        "Evaluator: seconds per evaluate call",
        "Median seconds per stage over new candidates (uniform keeps from 1.0 to 0.2); "
        "cached = a policy whose pruned shape was already evaluated.\n\n" + table + bn_line,
        command=command,
        quick=args.quick,
    )
    print(table + bn_line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
