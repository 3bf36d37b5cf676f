"""Benchmark: hwprune against the pruners users already use, at the same measured latency bound.

For each cell (model, latency budget) and seed, every system prunes the same dense model
(``benchmarks.quality.dense_checkpoint``, trained once per seed on that seed's split) to one
absolute bound: the budget's fraction of the dense model's reference latency (the median of 9
fresh calls on ``onnxruntime:cpu?threads=1``, measured once per machine and stored, as
``quality.py --fixed-bound`` does). The systems:

* hwprune: ``hwprune.prune`` runs exactly as ``benchmarks.quality.prune_row`` makes them,
  one row per searcher (``--searchers``, default ppo-lagrangian, latency-knapsack,
  knapsack-ppo).
* Torch-Pruning (``tp.pruner.MetaPruner``): L2-magnitude or first-order Taylor importance
  (Taylor from one backward pass on a fixed training batch), uniform (per layer) or global
  ranking, channel counts rounded to 8 or 16, the final classifier left alone. Rows are named
  ``tp-{mag,taylor}-{uniform,global}-r{8,16}``; also without rounding (``r1``, Torch-Pruning's
  default): ``tp-mag-uniform-r1`` and ``tp-taylor-global-r1``.
* NVIDIA ModelOpt FastNAS (``mtp.prune(mode="fastnas")``, optional: ``pip install
  'hwprune[peers]'``): its search under a FLOPs constraint, scored by accuracy on the search
  split. Without ``modelopt`` the row is shown as "not installed".

A peer has one knob (Torch-Pruning's ``pruning_ratio``, FastNAS's FLOPs target). It is
bisected (8 probes) against hwprune's own oracle on the exported ONNX: the largest model
whose measured latency is within the bound, confirmed by the median of 3 fresh calls as
hwprune confirms its own choice. Every chosen model then gets hwprune's final stage: BN
re-estimation, the same fine-tuning recipe (the built-in task's, at the epochs, learning
rate and batch size of the hwprune rows), the same export.

The final timing is one interleaved re-measurement of every system's exported ONNX of a cell
and seed: round-robin over the files (a new ONNX Runtime session per call, the order rotated
each round), 5 rounds, the median per file; load on the machine then hits every system alike.
Reported per system: test accuracy after fine-tuning, that verified latency against the bound,
parameters, and the seconds it took to choose its model. Per cell and seed: hwprune's default
searcher minus the best peer (by mean accuracy in the cell), with McNemar's exact test on the two
models' test predictions. ``benchmarks/results/peers.png`` plots accuracy against verified
latency for every system.

    python -m benchmarks.peers                  # the full grid (hours on 2 cores)
    python -m benchmarks.peers --quick          # digits, one tiny cell, 2 Torch-Pruning peers
    python -m benchmarks.peers --peers tp-mag-uniform-r8 modelopt-fastnas --seeds 0

Each finished row is stored in ``benchmarks/results/peers_runs/`` as it completes, and so is
each cell's timing, so a stopped run continues where it stopped (``--fresh`` redoes);
``--stored-only`` tabulates what is stored. Run directories and exported models go to
``runs/benchmarks/peers/`` (git-ignored). Quick runs write to ``benchmarks/results/quick/``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import importlib.util
import io
import itertools
import json
import logging
import math
import re
import shutil
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import _common as common
from benchmarks import quality
from hwprune.errors import ConfigError

log = logging.getLogger("benchmarks.peers")

RUNS_DIR = quality.RUNS_DIR / "peers"
MODELS = {"vgg11_cifar": 0.5, "resnet32_cifar": 1.0}  # name -> width
DATA = "fashion-mnist?train=3000"
BUDGETS = ("latency<=40%", "latency<=30%")
SEEDS = (0, 1, 2)
ORACLE = quality.ORACLE
SEARCHERS = ("ppo-lagrangian", "latency-knapsack", "knapsack-ppo")
TP_PEERS = tuple(
    f"tp-{imp}-{scope}-r{r}"
    for imp in ("mag", "taylor")
    for scope in ("uniform", "global")
    for r in (8, 16)
)
#: Torch-Pruning as its README runs it (no rounding: every channel count allowed), magnitude
#: per layer, and the Taylor-global setting: the only ones that reach a bound round_to 8 and
#: 16 cannot (ResNet-32's 16-channel stages left at 8 or 16 channels).
TP_UNROUNDED = ("tp-mag-uniform-r1", "tp-taylor-global-r1")
MODELOPT = "modelopt-fastnas"
PEERS = (*TP_PEERS, MODELOPT, *TP_UNROUNDED)
#: Probes of a peer's knob: the smallest model, then halvings of the interval.
BISECT_STEPS = 8
#: The smallest model a peer may build keeps 10% (prune_row's min_keep for hwprune's rows).
MIN_KEEP = 0.1
#: Knob values a Torch-Pruning peer is built at to order its models by size (size_ladder).
LADDER_POINTS = 91
#: Fresh calls whose median confirms a peer's choice (hwprune's verification takes 3).
CONFIRM_CALLS = 3
TIMING_ROUNDS = 5
#: hwprune's stages before fine-tuning, which a peer's bisection does the work of.
SELECTION_STAGES = ("staircase", "dense", "search", "choose")
#: Training images of the fixed batch whose gradients give Taylor importance.
CALIBRATION_BATCH = 64
#: The dense model's name in an interleaved timing.
DENSE = "dense"
#: Search-split images FastNAS scores its subnets on.
SCORE_SAMPLES = 1000

QUICK = {
    "models": {"vgg11_cifar": 0.25},
    "data": "digits",
    "budgets": ("latency<=50%",),
    "seeds": (0,),
    "searchers": ("latency-knapsack",),
    "peers": ("tp-mag-uniform-r8", "tp-taylor-global-r8"),
    "evaluations": 6,
    "train_epochs": 3,
    "finetune_epochs": 1,
    "bisect_steps": 5,
    "rounds": 3,
    "oracle": "onnxruntime:cpu?threads=1&min_time=0.05&max_time=1",
}


# ----------------------------------------------------------------------------------------
# Peers and their knobs


@dataclass(frozen=True)
class Peer:
    """One peer's settings, parsed from its name."""

    name: str
    kind: str  # "tp" or "modelopt"
    importance: str = ""  # "mag" or "taylor"
    global_pruning: bool = False
    round_to: int = 1


_TP_NAME = re.compile(r"tp-(mag|taylor)-(uniform|global)-r(\d+)")


def parse_peer(name: str) -> Peer:
    """``tp-mag-uniform-r8`` -> Peer; ConfigError for a name that is neither form."""
    if name == MODELOPT:
        return Peer(name=name, kind="modelopt")
    m = _TP_NAME.fullmatch(name)
    if m is None or int(m.group(3)) < 1:
        raise ConfigError(
            f"unknown peer {name!r}: expected tp-{{mag,taylor}}-{{uniform,global}}-rN "
            f"(e.g. tp-mag-uniform-r8) or {MODELOPT}"
        )
    return Peer(name=name, kind="tp", importance=m.group(1),
                global_pruning=m.group(2) == "global", round_to=int(m.group(3)))  # fmt: skip


def modelopt_installed() -> bool:
    """Whether NVIDIA ModelOpt can be imported (the ``peers`` extra)."""
    return importlib.util.find_spec("modelopt") is not None


def _classifier(model: Any) -> Any:
    """The final classifier: the last Linear layer (Torch-Pruning leaves it whole)."""
    import torch

    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    if not linears:
        raise ConfigError(f"{type(model).__name__} has no Linear classifier to keep whole")
    return linears[-1]


def calibration_batch(splits: Any, *, seed: int, size: int = CALIBRATION_BATCH) -> tuple:
    """A fixed batch of training images and labels, chosen by ``seed``."""
    import torch

    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(splits.train), generator=g)[:size].tolist()
    xs, ys = zip(*(splits.train[i] for i in idx), strict=True)
    return torch.stack(list(xs)), torch.as_tensor([int(y) for y in ys])


def tp_builder(
    dense: Any, peer: Peer, *, input_shape: Sequence[int], batch: tuple | None = None
) -> Callable[[float], Any]:
    """``build(keep)``: a copy of ``dense`` pruned by Torch-Pruning at ratio ``1 - keep``.

    Taylor importance needs ``batch`` (images, labels): one backward pass of the
    cross-entropy on it before the pruner ranks channels, as Torch-Pruning's examples do.
    """
    import torch
    import torch_pruning as tp

    if peer.importance == "taylor" and batch is None:
        raise ConfigError("Taylor importance needs a calibration batch")
    example = torch.zeros(1, *(int(s) for s in input_shape))

    def build(keep: float) -> Any:
        net = copy.deepcopy(dense).cpu().eval()
        imp = (tp.importance.TaylorImportance() if peer.importance == "taylor"
               else tp.importance.MagnitudeImportance(p=2))  # fmt: skip
        pruner = tp.pruner.MetaPruner(
            net, example, importance=imp, global_pruning=peer.global_pruning,
            pruning_ratio=max(0.0, 1.0 - keep), max_pruning_ratio=1.0 - MIN_KEEP,
            ignored_layers=[_classifier(net)], round_to=peer.round_to,
        )  # fmt: skip
        if peer.importance == "taylor":
            x, y = batch
            net.zero_grad()
            torch.nn.functional.cross_entropy(net(x), y).backward()
        pruner.step()
        net.zero_grad(set_to_none=True)
        return net

    return build


def modelopt_builder(
    dense: Any,
    *,
    input_shape: Sequence[int],
    splits: Any,
    seed: int,
    batch_size: int,
    checkpoint: Path,
) -> tuple[Callable[[float], Any], float]:
    """``build(keep)``: a copy of ``dense`` pruned by ModelOpt FastNAS to ``keep`` of its FLOPs;
    and the smallest ``keep`` its search space holds (its default channel choices, multiples
    of 32, put a floor under the FLOPs).

    FastNAS calibrates BN on the training loader and ranks subnets by ``score_func``
    (accuracy on a fixed subset of the search split). Its sensitivity map is kept in
    ``checkpoint`` and reused by every later probe of the bisection, as ModelOpt's guide
    suggests for re-running the search under another constraint.
    """
    import modelopt.torch.nas as mtn
    import modelopt.torch.prune as mtp
    import torch
    from modelopt.torch.prune.pruning import PruneModeRegistry
    from torch.utils.data import DataLoader, Subset

    from hwprune.train import accuracy

    g = torch.Generator().manual_seed(seed)
    n = min(len(splits.search), SCORE_SAMPLES)
    scored = Subset(splits.search, torch.randperm(len(splits.search), generator=g)[:n].tolist())
    loader = DataLoader(splits.train, batch_size=batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))  # fmt: skip
    example = torch.zeros(1, *(int(s) for s in input_shape))
    space = mtn.convert(copy.deepcopy(dense).cpu().eval(), "fastnas", registry=PruneModeRegistry)
    _, stats = mtn.profile(space, dummy_input=example, constraints={"flops": "100%"},
                           verbose=False)  # fmt: skip
    full, least = float(stats["max"]["flops"]), float(stats["min"]["flops"])

    def score(model: Any) -> float:
        return accuracy(model, scored)

    def build(keep: float) -> Any:
        net = copy.deepcopy(dense).cpu().eval()
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):  # its search tables go to the debug log
            pruned, _ = mtp.prune(
                model=net,
                mode="fastnas",
                # An absolute count: the smallest subnet's own FLOPs must be a reachable target.
                constraints={"flops": max(keep * full, least)},
                dummy_input=example,
                config={"data_loader": loader, "score_func": score, "checkpoint": str(checkpoint)},
            )
        log.debug("FastNAS at %.3f of the FLOPs:\n%s", keep, printed.getvalue())
        return pruned.eval()

    return build, least / full


# ----------------------------------------------------------------------------------------
# The bisection


@dataclass
class Bisection:
    """What a bisection found: the chosen module (None: nothing met the bound) and its trace."""

    keep: float | None
    module: Any
    latency_ms: float | None
    trace: list[dict[str, Any]] = field(default_factory=list)


def _params(module: Any) -> int:
    return int(sum(p.numel() for p in module.parameters()))


def size_ladder(
    build: Callable[[float], Any],
    *,
    input_shape: Sequence[int],
    lo: float = MIN_KEEP,
    hi: float = 1.0,
    points: int = LADDER_POINTS,
) -> list[float]:
    """Knob values whose models grow strictly in MACs, from the smallest model the knob builds.

    Torch-Pruning's knob is not monotone: ``round_to`` rounds a layer's kept channels down
    to a multiple and leaves the layer whole when that is 0, so on ResNet-32 with
    ``round_to=8`` a pruning ratio of 0.9 prunes nothing while 0.5 halves every layer. The
    knob is built at ``points`` evenly spaced values (surgery and a MACs count only, no
    timing); of the models with the same channel counts the largest knob value stands for
    them; they are ordered by MACs (then parameters), and a model that is not larger than
    one already kept is dropped, so bisection over the ladder's index is bisection over size.
    """
    import torch
    import torch_pruning as tp

    example = torch.zeros(1, *(int(s) for s in input_shape))
    models: dict[tuple[int, ...], tuple[float, float, int]] = {}
    for i in range(points):
        keep = lo + (hi - lo) * i / (points - 1)
        net = build(keep)
        shape = tuple(int(getattr(m, "out_channels", getattr(m, "out_features", 0)))
                      for m in net.modules() if hasattr(m, "weight"))  # fmt: skip
        macs, params = tp.utils.count_ops_and_params(net, example)
        models[shape] = (keep, float(macs), int(params))  # the largest knob value of the shape
    ladder: list[float] = []
    last = (-1.0, -1)
    for keep, macs, params in sorted(models.values(), key=lambda m: (m[1], m[2])):
        if (macs, params) > last and macs >= last[0] and params >= last[1]:
            ladder.append(keep)
            last = (macs, params)
    return ladder


def bisect_keep(
    build: Callable[[float], Any],
    measure: Callable[[Any], float],
    *,
    bound: float,
    lo: float = MIN_KEEP,
    hi: float = 1.0,
    steps: int = BISECT_STEPS,
    confirm: Callable[[Any], float] | None = None,
    ladder: Sequence[float] | None = None,
) -> Bisection:
    """The largest model ``build(keep)`` whose measured latency is within ``bound``.

    ``keep`` grows with the model (1 - Torch-Pruning's ratio, FastNAS's FLOPs fraction);
    ``hi`` is taken to miss the bound (the dense model). Probes ``lo`` first, then halves
    the interval between the largest probe that met the bound and the smallest that missed
    (``steps`` probes in all). ``ladder`` (:func:`size_ladder`: knob values in the order of
    their models' size): the same over the ladder's index, from its first (smallest) model,
    stopping early once two neighbours bracket the bound. Of the probes that met it, the one
    with the most parameters is confirmed by ``confirm`` (fresh calls); one it fails falls
    back to the next.
    """
    trace: list[dict[str, Any]] = []
    built: dict[float, tuple[Any, float]] = {}

    def probe(keep: float) -> bool:
        module = build(keep)
        ms = float(measure(module))
        built[keep] = (module, ms)
        trace.append({"keep": keep, "ms": ms, "params": _params(module), "met": ms <= bound})
        return ms <= bound

    at = (lambda x: x) if ladder is None else (lambda i: ladder[int(i)])  # noqa: E731
    if not probe(at(lo if ladder is None else 0)):
        return Bisection(keep=None, module=None, latency_ms=None, trace=trace)
    met, missed = (lo, hi) if ladder is None else (0, len(ladder))
    for _ in range(steps - 1):
        if ladder is not None and missed - met <= 1:
            break
        mid = (met + missed) / 2 if ladder is None else (met + missed) // 2
        if probe(at(mid)):
            met = mid
        else:
            missed = mid
    for t in sorted((t for t in trace if t["met"]), key=lambda t: (-t["params"], -t["keep"])):
        module, ms = built[t["keep"]]
        if confirm is not None:
            ms = float(confirm(module))
            t["confirmed_ms"] = ms
            if ms > bound:
                continue
        return Bisection(keep=t["keep"], module=module, latency_ms=ms, trace=trace)
    return Bisection(keep=None, module=None, latency_ms=None, trace=trace)


def onnx_measurer(
    oracle: str, *, input_shape: Sequence[int], repeats: int = 1
) -> Callable[[Any], float]:
    """``measure(module)``: its exported ONNX timed by a fresh ``oracle`` (median of
    ``repeats`` independent calls), in the oracle's unit (ms)."""
    import oracles
    from hwprune.export.onnx import export_onnx

    shape = (1, *(int(s) for s in input_shape))

    def measure(module: Any) -> float:
        data = export_onnx(module, input_shape=shape)
        m = oracles.measure(oracles.get_oracle(oracle), data, input_shapes={"input": shape},
                            repeats=repeats)  # fmt: skip
        return float(m.value)

    return measure


# ----------------------------------------------------------------------------------------
# Test predictions and McNemar's test


def correct_on_test(module: Any, splits: Any, *, device: str = "cpu") -> list[bool]:
    """Per test image, in the split's order: whether ``module`` classifies it correctly."""
    import torch
    from torch.utils.data import DataLoader

    module = module.to(device).eval()
    out: list[bool] = []
    with torch.no_grad():
        for x, y in DataLoader(splits.test, batch_size=256):
            out += (module(x.to(device)).argmax(1).cpu() == y).tolist()
    module.to("cpu")
    return out


def pack_bits(bits: Sequence[bool]) -> str:
    """Booleans as hex (4 per digit, first in the highest bit), short enough to store."""
    padded = list(bits) + [False] * (-len(bits) % 4)
    return "".join(
        format(sum(int(b) << (3 - j) for j, b in enumerate(padded[i : i + 4])), "x")
        for i in range(0, len(padded), 4)
    )


def unpack_bits(text: str, n: int) -> list[bool]:
    """The first ``n`` booleans of ``pack_bits``' text."""
    return [bool(int(c, 16) >> (3 - j) & 1) for c in text for j in range(4)][:n]


def binom_two_sided(k: int, n: int) -> float:
    """Exact two-sided p-value of ``k`` successes in ``n`` fair coin flips (the smaller tail
    doubled, capped at 1)."""
    if n == 0:
        return 1.0
    k = min(k, n - k)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2.0 * tail)


def mcnemar(a: Sequence[bool], b: Sequence[bool]) -> dict[str, Any]:
    """McNemar's exact test of two classifiers on the same images: ``a_only`` images only
    ``a`` gets right, ``b_only`` only ``b``, and the exact binomial p-value on them."""
    if len(a) != len(b):
        raise ConfigError(f"McNemar needs predictions on the same images ({len(a)} vs {len(b)})")
    a_only = sum(1 for x, y in zip(a, b, strict=True) if x and not y)
    b_only = sum(1 for x, y in zip(a, b, strict=True) if y and not x)
    return {"a_only": a_only, "b_only": b_only, "p": binom_two_sided(a_only, a_only + b_only)}


# ----------------------------------------------------------------------------------------
# One row


def finish(
    module: Any,
    *,
    splits: Any,
    seed: int,
    finetune_epochs: int,
    batch_size: int,
    device: str,
    onnx_path: Path,
    input_shape: Sequence[int],
) -> dict[str, Any]:
    """hwprune's final stage for a peer's model: BN re-estimation, the built-in task's
    fine-tuning recipe, test accuracy, the final export (simplified, checked against torch)."""
    from hwprune.export.final import final_export
    from hwprune.tasks.classification import ClassificationTask

    task = ClassificationTask(splits, device=device, seed=seed, finetune_epochs=finetune_epochs,
                              finetune_batch_size=batch_size)  # fmt: skip
    t0 = time.perf_counter()
    task.calibrate(module)
    before = task.evaluate(module)["accuracy"]
    module = task.finetune(module, None).to("cpu").eval()
    correct = correct_on_test(module, splits, device=device)
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    final_export(module.to("cpu").eval(), onnx_path=onnx_path,
                 input_shape=(1, *(int(s) for s in input_shape)), seed=seed)  # fmt: skip
    return {
        "accuracy_pruned": float(before),
        "accuracy": sum(correct) / len(correct),
        "test_n": len(correct),
        "test_correct": pack_bits(correct),
        "params_final": _params(module),
        "finetune_seconds": time.perf_counter() - t0,
        "onnx": str(onnx_path),
    }


def _slug_data(data: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", data)


@dataclass(frozen=True)
class Cell:
    """What every row of one cell and seed shares."""

    model: str
    width: float
    data: str
    budget: str
    seed: int
    bound_ms: float
    reference_ms: float
    oracle: str
    train_epochs: int
    finetune_epochs: int
    batch_size: int = quality.DIGITS_BATCH
    train_lr: float = quality.DIGITS_TRAIN_LR
    device: str = "cpu"

    def base(self) -> dict[str, Any]:
        return {"model": self.model, "width": self.width, "data": self.data,
                "budget": self.budget, "seed": self.seed, "bound_ms": self.bound_ms,
                "reference_ms": self.reference_ms, "oracle": self.oracle,
                "finetune_epochs": self.finetune_epochs, "train_epochs": self.train_epochs,
                "batch_size": self.batch_size}  # fmt: skip

    def dense_path(self) -> Path:
        name = f"dense-{self.model}-w{self.width:g}-{_slug_data(self.data)}-s{self.seed}.onnx"
        return RUNS_DIR / name

    def dense_onnx(self, input_shape: Sequence[int]) -> Path:
        """The dense model of this seed exported once (the interleaved timing's yardstick)."""
        from hwprune.export.onnx import export_onnx
        from hwprune.models import model_from_checkpoint

        path = self.dense_path()
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            shape = (1, *(int(x) for x in input_shape))
            data = export_onnx(model_from_checkpoint(self.dense()[0]), input_shape=shape)
            path.write_bytes(data)
        return path

    def dense(self) -> tuple[Path, float]:
        return quality.dense_checkpoint(self.model, width=self.width, data=self.data,
                                        epochs=self.train_epochs, seed=self.seed,
                                        device=self.device, batch_size=self.batch_size,
                                        lr=self.train_lr)  # fmt: skip


def peer_row(cell: Cell, peer: Peer, *, run_dir: Path, steps: int = BISECT_STEPS) -> dict[str, Any]:
    """One peer on one cell and seed: bisect its knob to the bound, then hwprune's final stage."""
    from hwprune.data import get_dataset
    from hwprune.models import model_from_checkpoint

    row = {**cell.base(), "system": peer.name, "kind": "peer", "bisect_steps": steps}
    ckpt, dense_acc = cell.dense()
    splits = get_dataset(cell.data, seed=cell.seed)
    shape = tuple(int(s) for s in splits.input_shape)
    dense = model_from_checkpoint(ckpt)
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    ladder = None
    t0 = time.perf_counter()
    if peer.kind == "tp":
        batch = calibration_batch(splits, seed=cell.seed) if peer.importance == "taylor" else None
        build, lo = tp_builder(dense, peer, input_shape=shape, batch=batch), MIN_KEEP
        ladder = size_ladder(build, input_shape=shape)
        row["ladder"] = ladder
    else:
        build, lo = modelopt_builder(dense, input_shape=shape, splits=splits, seed=cell.seed,
                                     batch_size=cell.batch_size,
                                     checkpoint=run_dir / "fastnas_search.pth")  # fmt: skip
    found = bisect_keep(
        build, onnx_measurer(cell.oracle, input_shape=shape), bound=cell.bound_ms, lo=lo,
        steps=steps, ladder=ladder,
        confirm=onnx_measurer(cell.oracle, input_shape=shape, repeats=CONFIRM_CALLS),
    )  # fmt: skip
    seconds = time.perf_counter() - t0
    row.update(search_seconds=seconds, selection_seconds=seconds, trace=found.trace,
               accuracy_dense_trained=dense_acc, params_dense=_params(dense))  # fmt: skip
    if found.module is None:
        smallest = lo if ladder is None else ladder[0]
        row.update(ok=False, infeasible=True,
                   error=f"no {peer.name} model meets {cell.bound_ms:.4f} ms (the smallest "
                   f"it builds, keep {smallest:.3f}, does not)")  # fmt: skip
        return row
    row.update(ok=True, keep=found.keep, confirmed_ms=found.latency_ms)
    row.update(finish(found.module, splits=splits, seed=cell.seed,
                      finetune_epochs=cell.finetune_epochs, batch_size=cell.batch_size,
                      device=cell.device, onnx_path=run_dir / "model.onnx",
                      input_shape=shape))  # fmt: skip
    return row


def hwprune_row(
    cell: Cell, searcher: str, *, evaluations: int, run_dir: Path, proxy: str | None = None
) -> dict[str, Any]:
    """One ``hwprune.prune`` run as ``quality.prune_row`` makes it, held to the cell's bound,
    plus its final model's test predictions."""
    import hwprune
    from hwprune.data import get_dataset

    budget = common.absolute_budget(cell.budget, cell.reference_ms)
    got = quality.prune_row(
        model=cell.model, width=cell.width, data=cell.data, budgets=[budget],
        oracles=[f"latency={cell.oracle}"], searcher=searcher, seed=cell.seed,
        evaluations=evaluations, finetune_epochs=cell.finetune_epochs,
        train_epochs=cell.train_epochs, run_dir=run_dir, device=cell.device,
        remeasure_oracle=cell.oracle, fresh=True, batch_size=cell.batch_size,
        train_lr=cell.train_lr, proxy=proxy,
    )  # fmt: skip
    row = {**got, **cell.base(), "system": f"hwprune-{searcher}", "kind": "hwprune",
           "budget_run": budget}  # fmt: skip
    if not got.get("ok"):
        return row
    stages = json.loads((run_dir / "report.json").read_text(encoding="utf-8"))["stage_seconds"]
    row["stage_seconds"] = stages
    # Everything before fine-tuning, as a peer's bisection is: the staircase probe, the dense
    # measurement, the search and the confirmation of its choice.
    row["selection_seconds"] = sum(stages.get(k, 0.0) for k in SELECTION_STAGES)
    splits = get_dataset(cell.data, seed=cell.seed)
    correct = correct_on_test(hwprune.load_pruned(run_dir / "model.pt"), splits, device=cell.device)
    row.update(
        test_n=len(correct), test_correct=pack_bits(correct), onnx=str(run_dir / "model.onnx")
    )
    return row


# ----------------------------------------------------------------------------------------
# The interleaved final timing


def interleaved_timing(
    files: Mapping[str, Path], *, oracle: str, input_shape: Sequence[int], rounds: int
) -> dict[str, list[float]]:
    """Every file timed ``rounds`` times, round-robin (one fresh oracle call each, the order
    rotated by one per round), so a slow moment of the machine hits every file alike."""
    import oracles

    shape = (1, *(int(s) for s in input_shape))
    names = sorted(files)
    blobs = {n: Path(files[n]).read_bytes() for n in names}
    values: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for n in names[r % len(names) :] + names[: r % len(names)]:
            m = oracles.get_oracle(oracle).measure(blobs[n], input_shapes={"input": shape})
            values[n].append(float(m.value))
    return values


def _digest(files: Mapping[str, Path]) -> str:
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(name.encode() + b"\0" + hashlib.sha256(Path(files[name]).read_bytes()).digest())
    return h.hexdigest()[:10]


def time_cell(
    rows: Sequence[dict[str, Any]],
    *,
    store: common.RunRows,
    rounds: int,
    input_shape: Sequence[int],
    fresh: bool = False,
    measure: bool = True,
    dense: Path | None = None,
) -> None:
    """Verified latency of every finished row of one cell and seed, from one interleaved
    timing of their ONNX files (stored, keyed by the files: a redone row times them again).
    ``measure`` False (``--stored-only``): only a stored timing of exactly these files.

    ``dense``: the dense model's ONNX, timed with them: each row's latency over the dense
    model's in the same rounds (``verified_over_dense_interleaved``) is free of the machine's
    drift since the reference latency was taken, which the fraction of the bound is not."""
    ok = [r for r in rows if r.get("ok") and Path(r.get("onnx", "")).is_file()]
    if not ok:
        return
    first = ok[0]
    files = {r["system"]: Path(r["onnx"]) for r in ok}
    if dense is not None and dense.is_file():
        files[DENSE] = dense
    tag = quality._slug(f"timing-{first['model']}-w{first['width']:g}-{first['budget']}-"
                        f"s{first['seed']}-{_digest(files)}")  # fmt: skip
    stored = None if fresh else store.get(tag)
    if stored is None and not measure:
        log.info("%s %s seed %d: no stored timing of these %d models, left untimed",
                 first["model"], first["budget"], first["seed"], len(files))  # fmt: skip
        return
    if stored is None:
        log.info("timing %d models of %s %s seed %d, %d rounds", len(files), first["model"],
                 first["budget"], first["seed"], rounds)  # fmt: skip
        values = interleaved_timing(files, oracle=first["oracle"], input_shape=input_shape,
                                    rounds=rounds)  # fmt: skip
        stored = {"tag": tag, "rounds": rounds, "oracle": first["oracle"], "values": values,
                  "median": {n: statistics.median(v) for n, v in values.items()}}  # fmt: skip
        store.put(tag, stored)
    dense_ms = stored["median"].get(DENSE)
    for r in ok:
        ms = stored["median"][r["system"]]
        r.update(verified_ms=ms, verified_over_bound=ms / r["bound_ms"],
                 verified_over_dense=ms / r["reference_ms"], timing=tag)  # fmt: skip
        if dense_ms:
            r["verified_over_dense_interleaved"] = ms / dense_ms


# ----------------------------------------------------------------------------------------
# Tables and the plot


def _mean_std(xs: Sequence[float]) -> tuple[float, float]:
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    if not xs:
        return math.nan, math.nan
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def _fraction(budget: str) -> float:
    """``latency<=40%`` -> 0.4: the budget's fraction of the dense latency."""
    m = re.search(r"<=\s*([0-9.]+)\s*%", budget)
    return float(m.group(1)) / 100 if m else math.nan


def summarise(rows: Sequence[dict[str, Any]], *, planned: int) -> list[dict[str, Any]]:
    """One entry per (model, budget, system): means over the seeds that finished."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["width"], r["budget"], r["system"]), []).append(r)
    out = []
    for (model, width, budget, system), rs in groups.items():
        ok = [r for r in rs if r.get("ok")]
        acc = _mean_std([r["accuracy"] for r in ok])
        over = [r["verified_over_bound"] for r in ok if "verified_over_bound" in r]
        beside = [r["verified_over_dense_interleaved"] / _fraction(budget) for r in ok
                  if "verified_over_dense_interleaved" in r]  # fmt: skip
        out.append({
            "model": model, "width": width, "budget": budget, "system": system,
            "kind": rs[0].get("kind"), "planned": planned, "finished": len(ok),
            "skipped": next((r["skipped"] for r in rs if r.get("skipped")), None),
            "errors": [r.get("error") for r in rs if not r.get("ok") and not r.get("skipped")],
            "accuracy_mean": acc[0], "accuracy_std": acc[1],
            "accuracy_pruned_mean": _mean_std([r.get("accuracy_pruned") for r in ok])[0],
            "accuracy_by_seed": {r["seed"]: r["accuracy"] for r in ok},
            "verified_over_bound_mean": statistics.fmean(over) if over else math.nan,
            "verified_over_bound_max": max(over) if over else math.nan,
            "use_beside_dense_mean": statistics.fmean(beside) if beside else math.nan,
            "params_ratio": _mean_std([r["params_final"] / r["params_dense"] for r in ok
                                       if r.get("params_dense")])[0],
            "selection_seconds_median": (statistics.median(r["selection_seconds"] for r in ok)
                                         if ok else math.nan),
        })  # fmt: skip
    return out


def default_system(searchers: Sequence[str]) -> str:
    """The hwprune row the peers are paired with: hwprune's default searcher where it ran,
    else the first searcher given."""
    from hwprune.config import default

    agent = default("agent")
    return f"hwprune-{agent if agent in searchers else searchers[0]}"


def latency_ratio(
    a: Mapping[str, Any], b: Mapping[str, Any], timings: Mapping[str, Mapping[str, Any]]
) -> dict[str, Any]:
    """``a``'s verified latency over ``b``'s, from the interleaved timing that measured both:
    the ratio of their medians, the ratios round by round, and ``slower`` (True: ``a`` was
    slower in every round; False: faster in every round; None: neither, or not timed)."""
    t = timings.get(a.get("timing", "")) if a.get("timing") == b.get("timing") else None
    if not t:
        return {"latency_ratio": None, "latency_ratios": [], "slower": None}
    va, vb = t["values"][a["system"]], t["values"][b["system"]]
    ratios = [x / y for x, y in zip(va, vb, strict=True)]
    slower = True if min(ratios) > 1 else False if max(ratios) < 1 else None
    return {"latency_ratio": t["median"][a["system"]] / t["median"][b["system"]],
            "latency_ratios": ratios, "slower": slower}  # fmt: skip


def paired(
    rows: Sequence[dict[str, Any]],
    summary: Sequence[dict[str, Any]],
    *,
    hwprune_system: str,
    timings: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Per cell and seed: hwprune's default row minus the best peer (by mean accuracy in the
    cell), with McNemar's exact test on their test predictions and the two models' latency
    ratio in their shared interleaved timing (``timings``: stored timings by tag)."""
    timings = timings or {}
    out = []
    for model, width, budget in dict.fromkeys(
        (s["model"], s["width"], s["budget"]) for s in summary
    ):
        cell = [
            s for s in summary if (s["model"], s["width"], s["budget"]) == (model, width, budget)
        ]
        peers = [s for s in cell if s["kind"] == "peer" and s["finished"]]
        if not peers or not any(s["system"] == hwprune_system and s["finished"] for s in cell):
            continue
        best = max(peers, key=lambda s: s["accuracy_mean"])["system"]
        mine = {(r["system"], r["seed"]): r for r in rows if r.get("ok")
                and (r["model"], r["width"], r["budget"]) == (model, width, budget)}  # fmt: skip
        for seed in sorted({k[1] for k in mine}):
            a, b = mine.get((hwprune_system, seed)), mine.get((best, seed))
            if a is None or b is None or "test_correct" not in a or "test_correct" not in b:
                continue
            if not math.isclose(a["bound_ms"], b["bound_ms"], rel_tol=1e-9):
                continue  # held to different bounds (two machines): not a pair
            test = mcnemar(unpack_bits(a["test_correct"], a["test_n"]),
                           unpack_bits(b["test_correct"], b["test_n"]))  # fmt: skip
            out.append({"model": model, "width": width, "budget": budget, "seed": seed,
                        "hwprune": hwprune_system, "peer": best, "accuracy_hwprune":
                        a["accuracy"], "accuracy_peer": b["accuracy"],
                        "difference": a["accuracy"] - b["accuracy"], **test,
                        **latency_ratio(a, b, timings)})  # fmt: skip
    return out


def _f(x: Any, spec: str = "{:.3f}") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return spec.format(x)


def table(summary: Sequence[dict[str, Any]]) -> str:
    headers = ["model", "budget", "system", "seeds ok", "test acc. (mean ± std)",
               "before fine-tuning", "verified / bound (mean, max)",
               "budget use, dense timed beside (mean)", "params (final / dense)",
               "seconds to a model (median)"]  # fmt: skip
    body = []
    for s in summary:
        name = f"{s['model']} w{s['width']:g}"
        if s["skipped"]:
            body.append([name, s["budget"], s["system"], s["skipped"], *["-"] * 6])
            continue
        body.append([
            name, s["budget"], s["system"], f"{s['finished']}/{s['planned']}",
            f"{_f(s['accuracy_mean'])} ± {_f(s['accuracy_std'])}",
            _f(s["accuracy_pruned_mean"]),
            f"{_f(s['verified_over_bound_mean'])}, {_f(s['verified_over_bound_max'])}",
            _f(s.get("use_beside_dense_mean")), _f(s["params_ratio"]), _f(s["selection_seconds_median"], "{:.0f}"),
        ])  # fmt: skip
    return common.markdown_table(headers, body)


def failures(rows: Sequence[dict[str, Any]]) -> str:
    """The rows that shipped no model, each with its reason (skipped rows are in the table)."""
    failed = [r for r in rows if not r.get("ok") and not r.get("skipped")]
    if not failed:
        return ""
    lines = [f"- {r['model']} w{r['width']:g} {r['budget']} {r['system']} seed {r['seed']}: "
             f"{r.get('error', 'failed')}" for r in failed]  # fmt: skip
    return "\n\nNo model shipped:\n\n" + "\n".join(lines)


#: The lead, in test accuracy, that counts as hwprune ahead of the best peer in a cell.
LEAD = 0.005


def verdicts(pairs: Sequence[Mapping[str, Any]]) -> list[str]:
    """One line per cell from its stored pairs: hwprune's default ahead of the best peer (a
    mean lead of at least ``LEAD`` over the seeds, never slower in every timing round), or
    why not (behind, within the lead, or ahead only with a slower model)."""
    cells: dict[tuple, list[Mapping[str, Any]]] = {}
    for p in pairs:
        cells.setdefault((p["model"], p["width"], p["budget"]), []).append(p)
    out = []
    for (model, width, budget), ps in cells.items():
        diff = statistics.fmean(p["difference"] for p in ps)
        slower = [p["seed"] for p in ps if p.get("slower") is True]
        if diff >= LEAD and not slower:
            word = "ahead"
        elif diff >= LEAD:
            word = f"ahead in accuracy, but slower in every round on seed(s) {slower}"
        elif diff <= -LEAD:
            word = "behind"
        else:
            word = f"within {LEAD * 100:.1f} points"
        out.append(f"- {model} w{width:g} `{budget}`: {ps[0]['hwprune']} against {ps[0]['peer']}, "
                   f"{diff * 100:+.1f} points over {len(ps)} seed(s): {word}")  # fmt: skip
    return out


def _latency(p: Mapping[str, Any]) -> str:
    if p.get("latency_ratio") is None:
        return "-"
    rs = p["latency_ratios"]
    word = {True: "slower", False: "faster", None: "tied"}[p["slower"]]
    return f"{p['latency_ratio']:.3f} ({min(rs):.3f}-{max(rs):.3f}, {word})"


def paired_table(pairs: Sequence[dict[str, Any]]) -> str:
    """Per cell and seed; latency: hwprune's verified latency over the peer's in their shared
    interleaved timing (median; round by round min-max; slower or faster in every round)."""
    headers = ["model", "budget", "seed", "hwprune", "best peer", "acc. hwprune", "acc. peer",
               "difference", "only hwprune right", "only peer right", "McNemar p",
               "latency hwprune / peer"]  # fmt: skip
    body = [[f"{p['model']} w{p['width']:g}", p["budget"], p["seed"], p["hwprune"], p["peer"],
             _f(p["accuracy_hwprune"]), _f(p["accuracy_peer"]), _f(p["difference"], "{:+.3f}"),
             p["a_only"], p["b_only"], _f(p["p"], "{:.3g}"), _latency(p)]
            for p in pairs]  # fmt: skip
    return common.markdown_table(headers, body)


def plot(rows: Sequence[dict[str, Any]], path: Path) -> Path | None:
    """Test accuracy against verified latency (fraction of the dense reference), one panel per
    model, every system's points (hwprune filled, peers hollow)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no plot")
        return None
    ok = [r for r in rows if r.get("ok") and "verified_over_dense" in r]
    if not ok:
        return None
    models = sorted({(r["model"], r["width"]) for r in ok})
    systems = sorted({r["system"] for r in ok}, key=lambda s: (not s.startswith("hwprune"), s))
    markers = "os^DvP*X<>hp"
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.5), squeeze=False)
    for ax, (model, width) in zip(axes[0], models, strict=True):
        mine = [r for r in ok if (r["model"], r["width"]) == (model, width)]
        for i, s in enumerate(systems):
            pts = [r for r in mine if r["system"] == s]
            if not pts:
                continue
            hollow = {} if s.startswith("hwprune") else {"facecolors": "none"}
            xs, ys = [r["verified_over_dense"] for r in pts], [r["accuracy"] for r in pts]
            sc = ax.scatter(xs, ys, marker=markers[i % len(markers)], label=s, alpha=0.85, **hollow)
            if hollow:  # a hollow marker takes its line colour from the cycle
                sc.set_edgecolor(f"C{i % 10}")
        for frac in sorted({r["bound_ms"] / r["reference_ms"] for r in mine}):
            ax.axvline(frac, color="grey", linestyle=":", linewidth=1)
        ax.set_title(f"{model} (width {width:g})")
        ax.set_xlabel("verified latency / dense reference latency")
        ax.set_ylabel("test accuracy after fine-tuning")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------------------
# The command


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=common.module_command(__file__), description=__doc__.split("\n\n")[0]
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="digits, vgg11_cifar w0.25, latency<=50%%, seed 0, latency-knapsack with "
        "6 evaluations, 2 Torch-Pruning peers, 1 fine-tuning epoch",
    )
    p.add_argument(
        "--models",
        nargs="+",
        default=None,
        metavar="NAME[=WIDTH]",
        help="models and widths (default: vgg11_cifar=0.5 resnet32_cifar=1)",
    )
    p.add_argument("--data", default=None, help=f"dataset spec (default {DATA})")
    p.add_argument(
        "--budgets",
        nargs="+",
        default=None,
        help="relative latency budgets (default 'latency<=40%%' 'latency<=30%%')",
    )
    p.add_argument("--seeds", nargs="+", type=int, default=None, help="seeds (default 0 1 2)")
    p.add_argument(
        "--searchers",
        nargs="+",
        default=None,
        help=f"hwprune searchers (default {' '.join(SEARCHERS)})",
    )
    p.add_argument("--peers", nargs="+", default=None, help=f"peers (default {' '.join(PEERS)})")
    p.add_argument(
        "--evaluations", type=int, default=None, help=f"per hwprune search ({quality.EVALUATIONS})"
    )
    p.add_argument("--train-epochs", type=int, default=None, help=f"dense ({quality.TRAIN_EPOCHS})")
    p.add_argument(
        "--finetune-epochs",
        type=int,
        default=None,
        help=f"every pruned model's fine-tuning ({quality.FINETUNE_EPOCHS})",
    )
    p.add_argument(
        "--bisect-steps",
        type=int,
        default=None,
        help=f"probes of each peer's knob ({BISECT_STEPS})",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=None,
        help=f"rounds of the interleaved final timing ({TIMING_ROUNDS})",
    )
    p.add_argument("--oracle", default=None, help=f"latency oracle spec ({ORACLE})")
    p.add_argument("--device", default="cpu", help="training/fine-tuning device: cpu or cuda")
    p.add_argument("--fresh", action="store_true", help="redo rows that finished before")
    p.add_argument(
        "--stored-only",
        action="store_true",
        help="tabulate the stored rows and leave out the rest instead of running them",
    )
    p.add_argument("--no-write", action="store_true", help="write no results (log only)")
    return p


def _settings(p: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, Any]:
    q = QUICK if args.quick else {}
    models = dict(q.get("models", MODELS))
    if args.models:
        models = {}
        for m in args.models:
            name, _, w = m.partition("=")
            models[name] = float(w) if w else MODELS.get(name, 1.0)
    s = {
        "quick": args.quick, "models": models, "data": args.data or q.get("data", DATA),
        "budgets": list(args.budgets or q.get("budgets", BUDGETS)),
        "seeds": list(args.seeds or q.get("seeds", SEEDS)),
        "searchers": list(args.searchers or q.get("searchers", SEARCHERS)),
        "peers": list(args.peers or q.get("peers", PEERS)),
        "evaluations": args.evaluations or q.get("evaluations", quality.EVALUATIONS),
        "train_epochs": args.train_epochs or q.get("train_epochs", quality.TRAIN_EPOCHS),
        "finetune_epochs": (args.finetune_epochs if args.finetune_epochs is not None
                            else q.get("finetune_epochs", quality.FINETUNE_EPOCHS)),
        "bisect_steps": args.bisect_steps or q.get("bisect_steps", BISECT_STEPS),
        "rounds": args.rounds or q.get("rounds", TIMING_ROUNDS),
        "oracle": args.oracle or q.get("oracle", ORACLE), "device": args.device,
    }  # fmt: skip
    try:
        for name in s["peers"]:
            parse_peer(name)
        from hwprune.budgets import parse_budget

        for b in s["budgets"]:
            if not parse_budget(b).relative or parse_budget(b).quantity != "latency":
                raise ConfigError(f"{b!r} is not a relative latency budget such as latency<=40%")
    except ConfigError as exc:
        p.error(str(exc))
    if args.quick and args.stored_only:
        p.error("--stored-only collects stored rows of the full grid; quick rows are not kept")
    if s["bisect_steps"] < 1 or s["rounds"] < 1:
        p.error("--bisect-steps and --rounds take positive counts")
    return s


def _row_tag(s: Mapping[str, Any], cell: Cell, system: str) -> str:
    run = (f"-e{s['evaluations']}" if system.startswith("hwprune-")
           else f"-b{s['bisect_steps']}")  # fmt: skip
    return quality._slug(f"{cell.model}-w{cell.width:g}-{cell.budget}-{system}-s{cell.seed}-"
                         f"f{cell.finetune_epochs}-t{cell.train_epochs}-"
                         f"{quality.data_slug(cell.data)}{run}")  # fmt: skip


def _run_cell(
    s: Mapping[str, Any], cell: Cell, store: common.RunRows, *, fresh: bool, stored_only: bool
) -> list[dict[str, Any]]:
    """Every system's row of one cell and seed: stored, run now, or (``stored_only``) left out."""
    rows = []
    systems = [f"hwprune-{a}" for a in s["searchers"]] + list(s["peers"])
    for system in systems:
        tag = _row_tag(s, cell, system)
        stored = None if fresh else store.get(tag)
        same = stored is not None and math.isclose(stored.get("bound_ms", -1), cell.bound_ms,
                                                   rel_tol=1e-9)  # fmt: skip
        # A peer that cannot reach the bound is a result, kept like a finished row.
        if same and (stored.get("ok") or stored.get("infeasible") or stored_only):
            rows.append(stored)
            continue
        if system == MODELOPT and not modelopt_installed():
            log.info("%s: nvidia-modelopt is not installed (pip install 'hwprune[peers]'); "
                     "skipped", system)  # fmt: skip
            rows.append({**cell.base(), "system": system, "kind": "peer", "ok": False,
                         "skipped": "not installed"})  # fmt: skip
            continue
        if stored_only:
            log.info("%s: not stored, left out", tag)
            continue
        log.info("%s %s %s seed %d", cell.model, cell.budget, system, cell.seed)
        run_dir = RUNS_DIR / tag
        if system.startswith("hwprune-"):
            row = hwprune_row(cell, system.removeprefix("hwprune-"),
                              evaluations=s["evaluations"], run_dir=run_dir)  # fmt: skip
        else:
            row = peer_row(cell, parse_peer(system), run_dir=run_dir, steps=s["bisect_steps"])
        store.put(tag, row)
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = _parser()
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    s = _settings(p, args)
    q = s["quick"]
    store = common.RunRows("peers", root=common.results_dir(quick=q))
    if q and store.dir.exists():  # a quick run checks today's code: nothing reused
        shutil.rmtree(store.dir)
    env = common.environment()
    from hwprune.budgets import parse_budget
    from hwprune.data import get_dataset

    shape = tuple(int(x) for x in get_dataset(s["data"], seed=0).input_shape)
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    # Seed outermost: a grid stopped part way still holds whole seeds of every cell.
    for seed, (model, width), budget in itertools.product(s["seeds"], s["models"].items(),
                                                          s["budgets"]):  # fmt: skip
        reference = quality._reference(model, width, s["data"], s["oracle"], store)
        cell = Cell(model=model, width=width, data=s["data"], budget=budget, seed=seed,
                    bound_ms=parse_budget(common.absolute_budget(budget, reference)).limit,
                    reference_ms=reference, oracle=s["oracle"],
                    train_epochs=s["train_epochs"], finetune_epochs=s["finetune_epochs"],
                    device=s["device"])  # fmt: skip
        got = _run_cell(s, cell, store, fresh=args.fresh or q, stored_only=args.stored_only)
        dense = cell.dense_onnx(shape) if not args.stored_only else cell.dense_path()
        time_cell(got, store=store, rounds=s["rounds"], input_shape=shape,
                  fresh=args.fresh or q, measure=not args.stored_only, dense=dense)  # fmt: skip
        rows += got
    summary = summarise(rows, planned=len(s["seeds"]))
    timings = {r["timing"]: store.get(r["timing"]) for r in rows if r.get("timing")}
    pairs = paired(rows, summary, hwprune_system=default_system(s["searchers"]),
                   timings={k: v for k, v in timings.items() if v})  # fmt: skip
    body = table(summary) + failures(rows)
    body += "\n\nhwprune's default searcher against the best peer:\n\n"
    body += paired_table(pairs)
    body += "\n\nPer cell (ahead: a mean lead of at least 0.5 points, never slower in every "
    body += "round of the shared timing):\n\n" + "\n".join(verdicts(pairs))
    print(body)
    if args.no_write:
        return 0
    name = "peers"
    png = plot(rows, common.results_dir(quick=q) / f"{name}.png")
    results = {"settings": s, "seconds": time.perf_counter() - t0, "summary": summary,
               "paired": pairs, "runs": rows}  # fmt: skip
    common.write_results(name, results, command=common.command_line(), env=env, quick=q)
    notes = _notes(s)
    if png is not None:
        notes += (
            f"\n\n![accuracy against latency]({png.relative_to(common.results_md(quick=q).parent)})"
        )
    if q:
        notes += "\n\n**Quick mode: an end-to-end check, not a comparison.**"
    common.update_results_md(name, "hwprune against other pruners at one measured latency bound",
                             body, command=common.command_line(), env=env, notes=notes,
                             quick=q)  # fmt: skip
    return 0


def _notes(s: Mapping[str, Any]) -> str:
    return (
        f"Every system prunes the same dense models (trained {s['train_epochs']} epochs on "
        f"`{s['data']}`, per seed) to one absolute bound per model and budget: the budget's "
        "fraction of the dense model's reference latency (median of 9 fresh calls on "
        f"`{s['oracle']}`). hwprune rows: `hwprune.prune` with {s['evaluations']} evaluations, "
        "as `quality.py` runs it. Peers: their knob (Torch-Pruning's `pruning_ratio`, "
        f"FastNAS's FLOPs target) bisected in {s['bisect_steps']} probes against the same "
        "oracle on the exported ONNX (Torch-Pruning's over its distinct models in order of "
        f"MACs, built at {LADDER_POINTS} ratios: with `round_to` a layer whose kept channels "
        "round to 0 is left whole, so a larger ratio can build a larger model), the largest "
        "model within the bound confirmed by the "
        f"median of {CONFIRM_CALLS} fresh calls; then hwprune's final stage (BN re-estimation, "
        f"{s['finetune_epochs']} fine-tuning epoch(s) of the built-in task's recipe, SGD at "
        f"peak learning rate 0.01, cosine, batch size {quality.DIGITS_BATCH}; the same export). "
        "Verified: one interleaved timing of every exported model of a cell and seed "
        f"({s['rounds']} round-robin rounds of fresh calls, the median per model), as a "
        "fraction of the bound. Seconds to a model: hwprune's stages before fine-tuning "
        "(staircase probe, dense measurement, search, confirmation), a peer's whole bisection "
        "with its confirmation. "
        "McNemar: exact two-sided binomial test on the test images exactly one of the two "
        "models classifies correctly. A peer marked infeasible cannot build a model within "
        "the bound with its settings: Torch-Pruning's smallest model keeps at least "
        "`round_to` channels per layer (ResNet-32's 16-channel stages: 8 or 16); FastNAS "
        "runs ModelOpt's default search space (channel counts in multiples of 32, so "
        "ResNet-32's 16- and 32-channel layers stay whole)."
    )


if __name__ == "__main__":
    raise SystemExit(main())
