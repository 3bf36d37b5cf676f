"""Benchmark: which search proxy predicts the accuracy a candidate reaches after fine-tuning.

For each model (default: CIFAR-style VGG-16 at width 0.5) on Fashion-MNIST
(Debian's ``dataset-fashion-mnist``; a fixed, seeded subset of the training
images, ``--train-images``):

1. the dense model is trained once (cached under ``~/.cache/hwprune/benchmarks``;
   its sha256 goes into every row);
2. feasible candidates under ``latency<=30%`` of the dense model on
   ``onnxruntime:cpu?threads=1`` are drawn at random (see ``sample_keep``) and
   measured; every draw is stored, so a rerun reuses them;
3. per candidate, every proxy of ``hwprune.train.proxy`` (``bn``, ``kd``,
   ``recover:STEPS``) with the seconds each cost; then one fixed short
   fine-tuning recipe (distilled from the dense model) and the test accuracy;
4. Spearman's rank correlation of each proxy with the accuracy after
   fine-tuning (with a bootstrap 95% interval), and each proxy's seconds.

Every candidate's row is stored in ``benchmarks/results/proxy_study_runs/`` as
it completes; a rerun with the same settings skips finished rows.
``--stored-only`` writes the tables from stored rows without computing more.
Run it alone on one core::

    OMP_NUM_THREADS=1 nice taskset -c 0 python -m benchmarks.proxy_study --candidates 24
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import math
import os
import random
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import _common as common

log = logging.getLogger("benchmarks.proxy_study")

NAME = "proxy_study"
ORACLE = "onnxruntime:cpu?threads=1"
BUDGET = 0.30  # latency <= 30% of the dense model
MODELS = {"vgg16_cifar": 0.5, "resnet56_cifar": 1.0, "resnet32_cifar": 1.0,
          "resnet20_cifar": 1.0}  # fmt: skip
BATCH = 32
DENSE_LR = 0.02
SEARCH_IMAGES = 1000  # the fixed proxy set, from the search split
BN_BATCHES, BN_BATCH_SIZE = 4, 64  # the evaluator's defaults
TEMPERATURE = 4.0
MIN_KEEP = 0.1
# The range of the overall keep level drawn per candidate (see sample_keep), by model. A
# residual net's latency falls about linearly with its keep ratios (ResNet-32: 57 draws from
# [0.35, 0.85] measured 0.27-0.80 of the dense latency, 1 feasible at 30%), a plain VGG's about
# quadratically, so the ResNets draw lower levels to span the same budget.
LEVELS = {"vgg16_cifar": (0.35, 0.85), "resnet56_cifar": (0.12, 0.42),
          "resnet32_cifar": (0.12, 0.42), "resnet20_cifar": (0.12, 0.42)}  # fmt: skip


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "hwprune" / "benchmarks"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Spearman's rank correlation (average ranks for ties); nan when either side is constant."""

    def ranks(v: Sequence[float]) -> list[float]:
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2.0
            i = j + 1
        return r

    if len(xs) < 3:
        return math.nan
    rx, ry = ranks(xs), ranks(ys)
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    sx = math.sqrt(sum((a - mx) ** 2 for a in rx))
    sy = math.sqrt(sum((b - my) ** 2 for b in ry))
    if sx == 0 or sy == 0:
        return math.nan
    return sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True)) / (sx * sy)


def bootstrap_interval(xs: Sequence[float], ys: Sequence[float], *, n: int = 1000,
                       seed: int = 0) -> tuple[float, float]:  # fmt: skip
    """A percentile bootstrap 95% interval of Spearman's rho over the candidates."""
    rng = random.Random(seed)
    idx = range(len(xs))
    vals = []
    for _ in range(n):
        pick = [rng.choice(idx) for _ in idx]
        r = spearman([xs[i] for i in pick], [ys[i] for i in pick])
        if not math.isnan(r):
            vals.append(r)
    if not vals:
        return math.nan, math.nan
    vals.sort()
    return vals[int(0.025 * len(vals))], vals[min(len(vals) - 1, int(0.975 * len(vals)))]


def sample_keep(
    rng: random.Random, units: int, *, levels: tuple[float, float] = LEVELS["vgg16_cifar"]
) -> list[float]:
    """A random per-unit keep vector around a random overall level.

    A uniform draw over [min_keep, 1] per unit almost never meets 30% of the dense
    latency, so a level is drawn first (uniform in ``levels``, by default [0.35, 0.85],
    VGG-16's; see LEVELS) and each unit's
    ratio scatters around it (log-normal, sigma 0.4): the feasible draws then span
    the budget, from small models to ones just under the bound, with different
    layer-wise shapes at one latency. (A first range, [0.15, 0.6], gave VGG-16 w0.5
    draws at 0.02-0.21 of the dense latency, none near the 0.30 bound.)
    """
    level = rng.uniform(*levels)
    return [min(1.0, max(MIN_KEEP, level * math.exp(rng.gauss(0.0, 0.4)))) for _ in range(units)]


def _data(args: argparse.Namespace):
    from hwprune.data import get_dataset
    from hwprune.errors import DataError

    spec = f"fashion-mnist:{args.data_dir or ''}?train={args.train_images}"
    try:
        return get_dataset(spec, seed=0)
    except DataError as exc:
        sys.exit(f"proxy_study needs Fashion-MNIST (or --data-dir DIR): {exc}")


def _subset(dataset, n: int, seed: int):
    import torch
    from torch.utils.data import Subset

    if n >= len(dataset):
        return dataset
    g = torch.Generator().manual_seed(seed)
    return Subset(dataset, sorted(torch.randperm(len(dataset), generator=g)[:n].tolist()))


def dense_model(name: str, width: float, data, args: argparse.Namespace):
    """(model, checkpoint path, meta) trained once and cached."""
    from hwprune.models import get_model, load_checkpoint, read_checkpoint, save_checkpoint
    from hwprune.train import train

    path = cache_dir() / (f"proxy-{name}-w{width:g}-fmnist-t{args.train_images}"
                          f"-e{args.dense_epochs}-b{BATCH}-lr{DENSE_LR:g}-s0.pt")  # fmt: skip
    model = get_model(name, num_classes=10, width=width)
    if path.is_file():
        load_checkpoint(model, path)
        return model.eval(), path, read_checkpoint(path).meta
    t0 = time.perf_counter()
    test = _subset(data.test, args.test_images, seed=1)
    result = train(model, dataclasses.replace(data, search=_subset(data.search, 500, 2), test=test),
                   epochs=args.dense_epochs, batch_size=BATCH, lr=DENSE_LR, seed=0)  # fmt: skip
    meta = {"model": name, "width": width, "num_classes": 10, "input_size": 32,
            "data": f"fashion-mnist?train={args.train_images}", "epochs": args.dense_epochs,
            "batch_size": BATCH, "lr": DENSE_LR, "seed": 0,
            "test_accuracy": float(result.test_accuracy), "test_images": len(test),
            "seconds": time.perf_counter() - t0}  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(model.to("cpu"), path, meta=meta)
    log.info("trained dense %s in %.0f s: test accuracy %.4f", name, meta["seconds"],
             result.test_accuracy)  # fmt: skip
    return model.eval(), path, meta


def candidates(name: str, width: float, space, dense, args: argparse.Namespace) -> dict[str, Any]:
    """Draw and measure policies until ``args.candidates`` are feasible; every draw is stored."""
    import oracles
    from hwprune.export.onnx import export_onnx
    from hwprune.space import Policy

    path = (
        common.results_dir(quick=args.quick) / f"{NAME}_runs" / f"candidates-{name}-w{width:g}.json"
    )
    state = json.loads(path.read_text()) if path.is_file() else {"draws": []}
    oracle = oracles.get_oracle(ORACLE)
    cache = oracles.MeasurementCache()
    shapes = {"input": (1, 3, 32, 32)}

    def latency(module) -> float:
        onnx = export_onnx(module, input_shape=(1, 3, 32, 32))
        return float(oracles.measure(oracle, onnx, input_shapes=shapes, cache=cache).value)

    if "dense_latency" not in state:
        m = oracles.measure(oracle, export_onnx(dense, input_shape=(1, 3, 32, 32)),
                            input_shapes=shapes, cache=cache, repeats=3)  # fmt: skip
        state.update(dense_latency=float(m.value), unit=m.unit, oracle=ORACLE, budget=BUDGET,
                     levels=list(LEVELS[name]))  # fmt: skip
    bound = BUDGET * state["dense_latency"]
    while (sum(d["feasible"] for d in state["draws"]) < args.candidates
           and len(state["draws"]) < 8 * args.candidates):  # fmt: skip
        rng = random.Random(1000 + len(state["draws"]))
        keep = sample_keep(rng, len(space.units), levels=LEVELS[name])
        module = space.apply(Policy(keep=tuple(keep)))
        value = latency(module)
        state["draws"].append({"keep": keep, "latency": value, "fraction": value / state[
            "dense_latency"], "feasible": value <= bound,
            "params": sum(p.numel() for p in module.parameters())})  # fmt: skip
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(state, indent=1) + "\n")
        log.info(
            "draw %d: %.3f of dense latency", len(state["draws"]), value / state["dense_latency"]
        )
    return state


def _tag(name: str, width: float, i: int, args: argparse.Namespace) -> str:
    return (f"{name}-w{width:g}-t{args.train_images}-c{i}-r{args.recover_steps}"
            f"-f{args.finetune_epochs}-n{args.test_images}")  # fmt: skip


def _stored_tags(rows: common.RunRows, name: str, args: argparse.Namespace) -> list[str]:
    tags = [_tag(name, MODELS[name], i, args) for i in range(args.candidates)]
    return [t for t in tags if rows.get(t) is not None]


def _floor_tag(name: str, width: float, args: argparse.Namespace) -> str:
    return f"floor-{name}-w{width:g}-t{args.train_images}"


def floor_reference(
    name: str, width: float, args: argparse.Namespace, rows: common.RunRows
) -> dict:
    """The chance floor the search applies to this model's ``bn`` scores, stored once.

    Chance: the largest class's share of the fixed search images; the dense model's ``bn``
    score on them; the floor (``hwprune.evaluate.chance_floor`` over those images); and the
    dense parameter count that :func:`hwprune.evaluate.search_signal` divides by.
    """
    tag = _floor_tag(name, width, args)
    stored = rows.get(tag)
    if stored is not None:
        return stored
    from collections import Counter

    from hwprune.evaluate import chance_floor
    from hwprune.train.proxy import bn_proxy

    data = _data(args)
    dense, _, _ = dense_model(name, width, data, args)
    search = _subset(data.search, SEARCH_IMAGES, seed=4)
    calib = _subset(data.train, BN_BATCHES * BN_BATCH_SIZE, seed=3)
    labels = Counter(int(search[i][1]) for i in range(len(search)))
    chance = max(labels.values()) / len(search)
    dense_bn = bn_proxy(dense, calib=calib, search=search, bn_batches=BN_BATCHES,
                        bn_batch_size=BN_BATCH_SIZE).value  # fmt: skip
    row = {"tag": tag, "model": name, "width": width, "images": len(search), "chance": chance,
           "dense_bn": dense_bn, "floor": chance_floor(chance, dense_bn, len(search)),
           "dense_params": sum(p.numel() for p in dense.parameters())}  # fmt: skip
    rows.put(tag, row)
    return row


def run_model(
    name: str, width: float, args: argparse.Namespace, rows: common.RunRows
) -> list[dict]:
    import torch

    from hwprune.space import ChannelSpace, Policy
    from hwprune.train import finetune
    from hwprune.train.proxy import (
        bn_proxy,
        distill_batches,
        kd_proxy,
        recover_proxy,
        reference_outputs,
    )

    data = _data(args)
    dense, ckpt, meta = dense_model(name, width, data, args)
    digest = sha256(ckpt)
    space = ChannelSpace(dense, example_input_shape=(1, 3, 32, 32), round_to=1, min_keep=MIN_KEEP)
    state = candidates(name, width, space, dense, args)
    feasible = [d for d in state["draws"] if d["feasible"]][: args.candidates]
    calib = _subset(data.train, BN_BATCHES * BN_BATCH_SIZE, seed=3)
    search = _subset(data.search, SEARCH_IMAGES, seed=4)
    test = _subset(data.test, args.test_images, seed=1)
    ft_data = dataclasses.replace(data, search=_subset(data.search, 256, 5), test=test)
    t0 = time.perf_counter()
    reference = reference_outputs(dense, search)
    batches = distill_batches(dense, data.train, steps=args.recover_steps, batch_size=BATCH, seed=0)
    setup_seconds = time.perf_counter() - t0
    done = []
    for i, draw in enumerate(feasible):
        tag = _tag(name, width, i, args)
        row = rows.get(tag)
        if row is not None:
            done.append(row)
            continue
        candidate = space.apply(Policy(keep=tuple(draw["keep"])))
        common = {"calib": calib, "bn_batches": BN_BATCHES, "bn_batch_size": BN_BATCH_SIZE}
        scores = [
            bn_proxy(candidate, search=search, **common),
            kd_proxy(candidate, reference=reference, temperature=TEMPERATURE, **common),
            recover_proxy(
                candidate, reference=reference, batches=batches, temperature=TEMPERATURE, **common
            ),  # fmt: skip
        ]
        t1 = time.perf_counter()
        torch.manual_seed(0)
        result = finetune(candidate, ft_data, epochs=args.finetune_epochs, teacher=dense,
                          batch_size=BATCH, seed=0)  # fmt: skip
        row = {
            "model": name, "width": width, "candidate": i, "keep": draw["keep"],
            "latency": draw["latency"], "latency_fraction": draw["fraction"],
            "params": draw["params"], "dense_checkpoint": str(ckpt), "dense_sha256": digest,
            "dense_test_accuracy": meta.get("test_accuracy"), "train_images": args.train_images,
            "test_images": len(test), "recover_steps": args.recover_steps,
            "finetune_epochs": args.finetune_epochs, "setup_seconds": setup_seconds,
            "proxies": {s.proxy: dataclasses.asdict(s) for s in scores},
            "accuracy": result.test_accuracy, "finetune_seconds": time.perf_counter() - t1,
        }  # fmt: skip
        rows.put(tag, row)
        done.append(row)
        log.info("candidate %d: latency %.3f, bn %.3f, kd %.3f, %s %.3f -> test %.4f", i,
                 draw["fraction"], scores[0].value, scores[1].value, scores[2].proxy,
                 scores[2].value, result.test_accuracy)  # fmt: skip
    for steps in args.more_recover_steps:
        if steps == args.recover_steps:
            continue
        more = distill_batches(dense, data.train, steps=steps, batch_size=BATCH, seed=0)
        for i, row in enumerate(done):
            tag = _more_tag(_tag(name, width, i, args), steps)
            if rows.get(tag) is not None:
                continue
            candidate = space.apply(Policy(keep=tuple(row["keep"])))
            score = recover_proxy(candidate, reference=reference, batches=more,
                                  temperature=TEMPERATURE, calib=calib, bn_batches=BN_BATCHES,
                                  bn_batch_size=BN_BATCH_SIZE)  # fmt: skip
            rows.put(tag, {"candidate": i, "recover_steps": steps,
                           "proxy": dataclasses.asdict(score)})  # fmt: skip
            log.info("candidate %d: %s %.3f (accuracy %.3f) in %.1f s", i, score.proxy,
                     score.value, score.accuracy, score.seconds)  # fmt: skip
    return [_with_more(rows, _tag(name, width, i, args), r, args) for i, r in enumerate(done)]


#: The proxy variants ``--variants`` scores beside ``bn``: BN batches of 32 until the statistics
#: settle (at most 8, ``bn_settle``), and that score raced (``hwprune.evaluate.racing``) in
#: candidate order against the best one so far (every candidate here is feasible).
SETTLED, RACED = "bn settled (accuracy)", "bn settled + raced (accuracy)"
RACED_SIGNAL = "bn settled + raced, size at chance (the raced search signal)"
SETTLE, SETTLE_BATCHES, SETTLE_BATCH = 0.05, 8, 32


def _variants_tag(base: str) -> str:
    return f"{base}+variants"


def score_variants(name: str, width: float, args: argparse.Namespace, rows: common.RunRows,
                   done: Sequence[dict], floor: dict) -> list[dict]:  # fmt: skip
    """``done``'s rows with SETTLED and RACED scored (and stored once) in their proxies."""
    import copy

    import torch

    from hwprune.evaluate import accuracy_tolerance
    from hwprune.evaluate.racing import RaceBar, look_sizes, race
    from hwprune.space import ChannelSpace, Policy
    from hwprune.train import accuracy, reestimate_bn

    data = _data(args)
    dense, _, meta = dense_model(name, width, data, args)
    # The stored candidates were fine-tuned from one dense model; one trained again elsewhere
    # (its checkpoint's bytes differ by the time it took) must be that model for their
    # variants to rank the same candidates: its test accuracy on the same images must match.
    stored_dense = {row.get("dense_test_accuracy") for row in done}
    if done and stored_dense != {meta.get("test_accuracy")}:
        log.warning("%s: the dense model here (test accuracy %s) is not the one the stored "
                    "candidates were fine-tuned from (%s): variants not scored",
                    name, meta.get("test_accuracy"), sorted(map(str, stored_dense)))  # fmt: skip
        return list(done)
    space = ChannelSpace(dense, example_input_shape=(1, 3, 32, 32), round_to=1, min_keep=MIN_KEEP)
    calib = _subset(data.train, SETTLE_BATCHES * SETTLE_BATCH, seed=3)
    search = _subset(data.search, SEARCH_IMAGES, seed=4)
    best: float | None = None
    out = []
    for i, row in enumerate(done):
        tag = _variants_tag(_tag(name, width, i, args))
        stored = rows.get(tag)
        if stored is None:
            model = space.apply(Policy(keep=tuple(row["keep"])))
            t0 = time.perf_counter()
            reestimate_bn(model, calib, batches=SETTLE_BATCHES, batch_size=SETTLE_BATCH,
                          settle=SETTLE)  # fmt: skip
            bn_seconds = time.perf_counter() - t0

            def stream(model=model):
                correct, start = 0, 0
                for end in look_sizes(len(search)):
                    part = torch.utils.data.Subset(search, range(start, end))
                    correct += round(accuracy(model, part) * (end - start))
                    start = end
                    yield correct / end, end

            below = None
            if best is not None and best > floor["floor"]:
                below = best - accuracy_tolerance(best, len(search))
            t1 = time.perf_counter()
            raced = race(stream(), RaceBar(below=below, floor=floor["floor"]), total=len(search))
            race_seconds = time.perf_counter() - t1
            t2 = time.perf_counter()
            full = accuracy(copy.deepcopy(model), search)
            full_seconds = time.perf_counter() - t2
            stored = {"candidate": i, "settled": {"value": full, "seconds": bn_seconds + full_seconds},
                      "raced": {"value": raced.score, "seconds": bn_seconds + race_seconds,
                                "samples": raced.samples, "stopped": raced.stopped}}  # fmt: skip
            rows.put(tag, stored)
        if stored["raced"]["stopped"] is None:
            best = max(best or 0.0, stored["raced"]["value"])
        out.append({**row, "proxies": {**row["proxies"], SETTLED: stored["settled"],
                                       RACED: stored["raced"]}})  # fmt: skip
    return out


def _more_tag(base: str, steps: int) -> str:
    """A longer recovery of a stored candidate: its row holds only that proxy (the candidate,
    its fine-tuned accuracy and the other proxies are the base row's)."""
    return f"{base}+r{steps}"


def _with_more(rows: common.RunRows, base: str, row: dict, args: argparse.Namespace) -> dict:
    """The base row with the stored longer recoveries of ``--more-recover-steps`` added."""
    proxies = dict(row["proxies"])
    for steps in args.more_recover_steps:
        more = rows.get(_more_tag(base, steps))
        if more is not None:
            proxies[more["proxy"]["proxy"]] = more["proxy"]
    return {**row, "proxies": proxies}


SIGNAL = "bn with size at chance (the search signal)"
# The models whose stored rows (with their parameters-kept column) the chance rule and the
# search signal were designed from; other models' rows test them.
DESIGNED_ON = {"resnet32_cifar", "vgg16_cifar"}


def summarise(done: Sequence[dict], floor: dict | None = None) -> list[dict[str, Any]]:
    """Per proxy: Spearman with the accuracy after fine-tuning, its interval, seconds.

    With the model's ``floor`` (:func:`floor_reference`), also what the searchers learn from
    under ``--proxy bn``: the ``bn`` score, or the floor scaled by the parameters kept for a
    candidate at chance (``hwprune.evaluate.search_signal``), at ``bn``'s cost.
    """
    if not done:
        return []
    acc = [r["accuracy"] for r in done]
    recovers = sorted({k for r in done for k in r["proxies"] if k.startswith("recover")},
                      key=lambda k: int(k.split(":")[1]))  # fmt: skip
    # A longer recovery counts where every candidate has it (--more-recover-steps finished).
    recovers = [k for k in recovers if all(k in r["proxies"] for r in done)]
    series = {
        "latency (larger is better; free)": ([r["latency_fraction"] for r in done], [0.0]),
        "parameters kept (larger is better; free)": ([r["params"] for r in done], [0.0]),
        "bn (accuracy)": ([r["proxies"]["bn"]["value"] for r in done],
                          [r["proxies"]["bn"]["seconds"] for r in done]),
        "kd (-KD loss)": ([r["proxies"]["kd"]["value"] for r in done],
                          [r["proxies"]["kd"]["seconds"] for r in done]),
    }  # fmt: skip
    if floor is not None:
        from hwprune.evaluate import search_signal

        series[SIGNAL] = (
            [search_signal(r["proxies"]["bn"]["value"], r["params"], floor=floor["floor"],
                           dense_params=floor["dense_params"]) for r in done],
            [r["proxies"]["bn"]["seconds"] for r in done],
        )  # fmt: skip
    for variant in (SETTLED, RACED):
        if all(variant in r["proxies"] for r in done):
            series[variant] = ([r["proxies"][variant]["value"] for r in done],
                               [r["proxies"][variant]["seconds"] for r in done])  # fmt: skip
    if floor is not None and all(RACED in r["proxies"] for r in done):
        # What a search with --proxy-racing --bn-settle ranks by: the raced score, its
        # candidates at chance scored by their size as the search signal does.
        series[RACED_SIGNAL] = (
            [search_signal(r["proxies"][RACED]["value"], r["params"], floor=floor["floor"],
                           dense_params=floor["dense_params"]) for r in done],
            [r["proxies"][RACED]["seconds"] for r in done],
        )  # fmt: skip
    for recover in recovers:
        seconds = [r["proxies"][recover]["seconds"] for r in done]
        series[f"{recover} (-KD loss)"] = ([r["proxies"][recover]["value"] for r in done], seconds)
        series[f"{recover} (accuracy)"] = (
            [r["proxies"][recover]["accuracy"] for r in done],
            seconds,
        )
    out = []
    fraction = [r["latency_fraction"] for r in done]
    for proxy, (values, seconds) in series.items():
        lo, hi = bootstrap_interval(values, acc)
        out.append({"model": done[0]["model"], "width": done[0]["width"], "proxy": proxy,
                    "candidates": len(done), "spearman": spearman(values, acc),
                    "ci_low": lo, "ci_high": hi, "seconds": statistics.median(seconds),
                    "spearman_latency": spearman(values, fraction)})  # fmt: skip
    return out


def noise_dominated(rows: Sequence[dict]) -> bool:
    """Whether the fine-tuned accuracies spread less than one candidate's test-set noise."""
    accs = [r["accuracy"] for r in rows]
    if len(accs) < 2:
        return True
    mean = statistics.fmean(accs)
    return statistics.stdev(accs) < math.sqrt(mean * (1 - mean) / rows[0]["test_images"])


def recommend(summary: Sequence[dict[str, Any]], all_rows: dict[str, list[dict]]) -> str:
    """The default proxy the study supports: the cheapest (median seconds on the slowest model)
    with Spearman >= 0.6 on every model studied; when none has, the default stays ``bn`` and
    the text lists how close each came. Only proxies the search offers (``--proxy``) can be
    picked: recover's accuracy is measured beside its score, not offered. With the caveat when
    the ranking target is mostly test noise. From the stored numbers, not by hand."""
    by: dict[str, list[dict]] = {}
    for s in summary:
        if not s["proxy"].endswith("free)"):
            by.setdefault(s["proxy"], []).append(s)
    if not by:
        return "no rows stored yet"
    models = {x["model"] for x in summary}
    by = {p: ss for p, ss in by.items() if {x["model"] for x in ss} == models}  # on every model
    worst = {p: min(x["spearman"] for x in ss) for p, ss in by.items()}
    cost = {p: max(x["seconds"] for x in ss) for p, ss in by.items()}
    offered = [p for p in by if p.startswith("bn") or not p.endswith("(accuracy)")]
    # The search signal is `--proxy bn` as the searchers now see it; bn alone is its raw score.
    listing = "; ".join(f"{p} {worst[p]:.2f} at {cost[p]:.1f} s"
                        for p in sorted(by, key=lambda p: -worst[p]))  # fmt: skip
    good = [p for p in offered if worst[p] >= 0.6]
    if good:
        best = min(good, key=lambda p: (cost[p], p != SIGNAL))
        pick = best.split(" ")[0]
        text = (f"Default by value per cost: `{pick}`"
                + (" with its chance rule (the search signal: a candidate at chance is scored "
                   "by its size)" if best == SIGNAL else "")
                + f", the cheapest offered proxy with Spearman >= 0.6 on every model studied "
                f"(worst Spearman over the models, seconds per candidate: {listing})")  # fmt: skip
        if best == SIGNAL:
            held = sorted(models - DESIGNED_ON)
            text += (f". The chance rule was designed after the rows of {' and '.join(sorted(DESIGNED_ON))} "
                     "(from their parameters-kept column), so those are not an independent test "
                     "of it; ")  # fmt: skip
            text += ("held out from its design: " + ", ".join(
                f"{m} ({next(x['spearman'] for x in by[SIGNAL] if x['model'] == m):.2f})"
                for m in held) if held else "no model held out from its design is studied yet")  # fmt: skip
    else:
        text = (f"No offered proxy reaches Spearman 0.6 on every model studied (worst Spearman "
                f"over the models, seconds per candidate: {listing}), so the measurement "
                "supports no change: the search's default proxy stays `bn`")  # fmt: skip
    free = [
        f"its {what} {min(x['spearman'] for x in summary if x['proxy'].startswith(f'{what} (')):.2f}"
        for what in ("latency", "parameters kept")
        if any(x["proxy"].startswith(f"{what} (") for x in summary)
    ]
    if free:
        text += (
            ". Free, the candidate's own figures alone give "
            + " and ".join(free)
            + " (not search proxies: blind to which layers matter; the search signal and the "
            "final choice use the parameters kept only for candidates whose bn accuracy is at "
            "chance)"
        )
    noisy = [m for m, rows in all_rows.items() if rows and noise_dominated(rows)]
    if noisy:
        text += (
            f". Caveat: on {', '.join(noisy)} the accuracies after fine-tuning spread less than "
            "one candidate's binomial test error, so these correlations rank mostly noise and "
            "do not settle the choice: a harder setting (more training images, a better-trained "
            "dense model, the full 10,000 test images) is needed"
        )
    return text + "."


def report(
    all_rows: dict[str, list[dict]], args: argparse.Namespace, floors: dict[str, dict] | None = None
) -> None:
    env = common.environment()
    floors = floors or {}
    summary = [s for m, rows in all_rows.items() for s in summarise(rows, floors.get(m))]
    # A study with --variants has its own section and file: the study of the proxies alone
    # (a different dense model and test set) stays as it was.
    name = f"{NAME}_variants" if args.variants else NAME
    common.write_results(name, {"summary": summary, "rows": all_rows}, command=common.command_line(), env=env,
                  quick=args.quick)  # fmt: skip
    table = common.markdown_table(
        ["model", "proxy", "candidates", "Spearman with accuracy", "95% CI",
         "Spearman with latency", "seconds / candidate (median)"],
        [[f"{s['model']} w{s['width']:g}", s["proxy"], s["candidates"], f"{s['spearman']:.2f}",
          f"{s['ci_low']:.2f} .. {s['ci_high']:.2f}", f"{s['spearman_latency']:.2f}",
          f"{s['seconds']:.1f}"]
         for s in summary],
    )  # fmt: skip
    facts = []
    for model, rows in all_rows.items():
        if not rows:
            continue
        r0 = rows[0]
        accs = [r["accuracy"] for r in rows]
        fr = [r["latency_fraction"] for r in rows]
        mean = statistics.fmean(accs)
        # One candidate's accuracy on n test images has a binomial standard error; a spread
        # of accuracies no wider than that leaves little for any proxy to rank.
        se = math.sqrt(mean * (1 - mean) / r0["test_images"])
        sd = statistics.stdev(accs) if len(accs) > 1 else math.nan
        facts.append(
            f"- {model}: dense test accuracy {r0['dense_test_accuracy']:.4f} "
            f"(checkpoint sha256 {r0['dense_sha256'][:16]}...); {len(rows)} feasible candidates "
            f"at {min(fr):.2f}-{max(fr):.2f} of dense latency; after fine-tuning "
            f"{min(accs):.4f}-{max(accs):.4f} test accuracy (sd {sd:.4f} across candidates, "
            f"against a binomial standard error of {se:.4f} per candidate on "
            f"{r0['test_images']} test images); teacher outputs for kd/recover once per run: "
            f"{r0['setup_seconds']:.0f} s."
        )
        fl = floors.get(model)
        if fl is not None:
            at = sum(1 for r in rows if r["proxies"]["bn"]["value"] <= fl["floor"])
            facts[-1] += (
                f" Chance floor of `bn`: {fl['floor']:.3f} (chance {fl['chance']:.3f}, the "
                f"largest class's share of the {fl['images']} search images; dense `bn` "
                f"{fl['dense_bn']:.3f}); {at} of {len(rows)} candidates at or below it."
            )
    notes = (
        f"Fashion-MNIST, a fixed {args.train_images}-image training subset (seed 0), dense model "
        f"trained {args.dense_epochs} epochs (batch {BATCH}, lr {DENSE_LR}). Candidates: random "
        f"per-layer keep ratios around a random level (`sample_keep`), kept when "
        f"`{ORACLE}` measures them at <= {BUDGET:.0%} of the dense latency. Proxies on "
        f"{SEARCH_IMAGES} fixed search images after BN re-estimation on {BN_BATCHES}x"
        f"{BN_BATCH_SIZE} training images; recover: "
        f"{' / '.join(str(n) for n in [args.recover_steps, *args.more_recover_steps])} "
        f"SGD steps (batch "
        f"{BATCH}, lr 0.01, 0.5 CE + 0.5 KD, T={TEMPERATURE:g}) on a copy. Fine-tuning: "
        f"{args.finetune_epochs} epoch(s) distilled from the dense model (batch {BATCH}, lr 0.01), "
        f"then test accuracy on {args.test_images} of the official 10,000 test images"
        + (" (a fixed seeded subset: the machine is small)" if args.test_images < 10000 else "")
        + ". Seconds are wall time of one process on one core of a shared, loaded machine "
        "(the median over the candidates: a candidate timed during a load spike took up to "
        "10x the median).\n\n" + "\n".join(facts) + "\n\n" + recommend(summary, all_rows)
    )
    title = "Search proxies: rank correlation with accuracy after fine-tuning" + (
        ", today's proxy against the settled and raced ones" if args.variants else ""
    )
    common.update_results_md(name, title, table, command=common.command_line(), env=env,
                             notes=notes, quick=args.quick)  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=common.module_command(__file__), description=__doc__.splitlines()[0]
    )
    parser.add_argument("--models", nargs="+", default=["vgg16_cifar"], choices=sorted(MODELS))
    parser.add_argument("--candidates", type=int, default=24)
    parser.add_argument("--train-images", type=int, default=3000)
    parser.add_argument("--test-images", type=int, default=10000)
    parser.add_argument("--dense-epochs", type=int, default=3)
    parser.add_argument("--finetune-epochs", type=int, default=1)
    parser.add_argument("--recover-steps", type=int, default=30)
    parser.add_argument("--more-recover-steps", type=int, nargs="+", default=[], metavar="N",
                        help="also score the stored candidates after N recovery steps (their "
                             "fine-tuning and other proxies are reused)")  # fmt: skip
    parser.add_argument("--data-dir", default=None, help="folder of the four idx files")
    parser.add_argument("--stored-only", action="store_true", help="tables from stored rows only")
    parser.add_argument("--variants", action="store_true",
                        help="also score the stored candidates with BN until settled and with "
                             "the raced proxy (hwprune.evaluate.racing), in candidate order")  # fmt: skip
    parser.add_argument("--quick", action="store_true",
                        help="a tiny smoke run into benchmarks/results/quick/")  # fmt: skip
    args = parser.parse_args(argv)
    if args.quick:
        args.candidates, args.train_images, args.test_images = 2, 256, 256
        args.dense_epochs, args.recover_steps = 1, 3
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    rows = common.RunRows(NAME, root=common.results_dir(quick=args.quick))
    # Models not run this time keep their stored rows (same settings) in the tables, so a
    # study run one model at a time still reports every model studied.
    all_rows = {}
    for name in sorted(set(MODELS) - set(args.models)):
        stored = [_with_more(rows, tag, rows.get(tag), args)
                  for tag in _stored_tags(rows, name, args)]  # fmt: skip
        if stored:
            all_rows[name] = stored
    floors: dict[str, dict] = {}
    for name in args.models:
        if args.stored_only:
            all_rows[name] = [_with_more(rows, tag, rows.get(tag), args)
                              for tag in _stored_tags(rows, name, args)]  # fmt: skip
        else:
            all_rows[name] = run_model(name, MODELS[name], args, rows)
        for model in all_rows:
            if all_rows[model] and model not in floors:
                floors[model] = floor_reference(model, MODELS[model], args, rows)
        if args.variants and all_rows[name]:
            all_rows[name] = score_variants(name, MODELS[name], args, rows, all_rows[name],
                                            floors[name])  # fmt: skip
        report(all_rows, args, floors)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
