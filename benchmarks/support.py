"""Support matrix: does every torchvision classifier prune, export and match its torch outputs?

For each classification builder in ``torchvision.models.list_models(module=torchvision.models)``,
and each semantic-segmentation builder (``torchvision.models.segmentation``: their dict output
goes through the same pipeline), at random weights and a small input (64x64 where the architecture allows, else the
smallest size it accepts):

1. build the model (10 classes) and a ``ChannelSpace`` over it (round_to 1, min_keep 0.1);
2. find the largest uniform keep ratio whose pruned model has at most 60% of the dense
   model's FLOPs, by bisection on the ``flops`` oracle (the static ONNX count, the same
   oracle a ``flops<=60%`` budget binds), within a handful of evaluations;
3. export the chosen model with ``final_export`` (parity gate: every output within 1e-3
   of torch's, relative to the output's scale) and record FLOPs and parameters after/dense;
4. for one model per family (``--latency``), the same bisection on
   ``onnxruntime:cpu?threads=1`` latency to ``latency<=60%``.

The pieces are driven directly (space, uniform bisection on the real oracle, final export)
rather than through ``hwprune.prune``: its data sources are classification datasets at
their own image sizes, and this sweep needs each architecture at its smallest input with
no data at all (no accuracy is scored, nothing is fine-tuned).

Each model's row is stored as it completes in ``benchmarks/results/support/<model>.json``;
a second run skips stored rows (``--redo`` repeats them; with ``--latency``, a stored family
row not yet timed by the paired protocol is timed, ``--retime`` times it again). ``--table``
writes, from the stored rows only, a summary between README.md's ``support`` markers, the
per-family table and every model in docs/support.md, and the section of benchmarks/RESULTS.md.

Run it alone, on one core::

    OMP_NUM_THREADS=1 nice taskset -c 1 python -m benchmarks.support --latency --steps 4
    python -m benchmarks.support --table
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from benchmarks import _common as common

_HERE = Path(__file__).resolve().parent
ROWS_DIR = common.RESULTS_DIR / "support"
FLOPS_TARGET = 0.6
LATENCY_TARGET = 0.6
LATENCY_ORACLE = "onnxruntime:cpu?threads=1"
LATENCY_ROUNDS = 5  # interleaved dense/pruned pairs for the FLOPs-chosen model
LATENCY_STEPS = 3  # bisection steps of the latency<=60% budget (3 pairs each)
SIZES = (64, 70, 75, 96, 112, 128, 160, 192, 224, 299)
# ONNX files are protobufs with a 2 GiB limit, and a model several times that size in
# memory (dense, pruned copy, export, ONNX Runtime session) does not fit a shared 24 GB box.
MAX_PARAMS = 400_000_000
# Address-space cap for the sweep's process, so one large model cannot take the shared
# machine's memory from everyone else; exceeding it is a MemoryError, recorded as "too big".
MEMORY_CAP_GB = 16
FAMILIES = (
    "alexnet", "convnext", "densenet", "efficientnet_v2", "efficientnet", "googlenet",
    "inception", "maxvit", "mnasnet", "mobilenet_v2", "mobilenet_v3", "regnet_x", "regnet_y",
    "resnext", "wide_resnet", "resnet", "shufflenet", "squeezenet", "swin_v2", "swin", "vgg",
    "vit", "fcn", "deeplabv3", "lraspp",
)  # fmt: skip

log = logging.getLogger("support")


def family(name: str) -> str:
    return next((f for f in FAMILIES if name.startswith(f)), name)


def _smallest_first(module: Any) -> list[str]:
    """The builders of a torchvision ``module``, smallest first (parameter counts from their
    weights' metadata)."""
    import torchvision

    def size(name: str) -> int:
        try:
            return int(torchvision.models.get_model_weights(name).DEFAULT.meta["num_params"])
        except Exception:
            return 10**12

    return sorted(torchvision.models.list_models(module=module), key=lambda n: (size(n), n))


def classifiers() -> list[str]:
    """Every torchvision classifier, smallest first."""
    import torchvision

    return _smallest_first(torchvision.models)


def segmenters() -> list[str]:
    """Every torchvision semantic-segmentation builder (FCN, DeepLabV3, LR-ASPP), smallest first.

    Beyond the issue's classifiers: Torch-Pruning's 81 of 85 counts such models too. Their
    output is a dict (``out``); the pipeline prunes, exports and checks it like a tensor.
    """
    import torchvision

    return _smallest_first(torchvision.models.segmentation)


def swept() -> list[str]:
    """What the sweep covers: every classifier, then every segmentation model."""
    return classifiers() + segmenters()


def _build(name: str, size: int) -> Any:
    from hwprune.models import get_model

    if name in segmenters():
        import torchvision

        extra = {} if name.startswith("lraspp") else {"aux_loss": False}
        return torchvision.models.get_model(
            name, weights=None, weights_backbone=None, num_classes=10, **extra
        ).eval()

    return get_model(name, num_classes=10, input_size=size).eval()


def estimate_bn(model: Any, size: int, *, seed: int = 0) -> Any:
    """BN running statistics estimated on two random batches (what calibration on data does)."""
    import torch
    from torch import nn

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.reset_running_stats()
                m.momentum = None  # cumulative average over the batches below
        model.train()
        for _ in range(2):
            model(torch.randn(4, 3, size, size, generator=g))
    return model.eval()


def realistic(model: Any, size: int) -> Any:
    """Random weights whose outputs have a scale: zero-initialised layers drawn, BN statistics estimated.

    At torchvision's initialisation many classifiers output ~1e-17 (activations vanish
    through eval-mode BN with unit statistics) and ViT's head is all zeros: a parity check
    on such outputs proves nothing, and denormal activations make latency meaningless. So
    layers that start at zero get N(0, 0.02) weights and BN running statistics are
    estimated on two random batches, as a trained model's would be on its data.
    """
    import torch
    from torch import nn

    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            w = getattr(m, "weight", None)
            layer = isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)) and w is not None
            if layer and not w.detach().any():
                w.copy_(torch.randn(w.shape, generator=g) * 0.02)
    return estimate_bn(model, size)


def smallest_size(
    name: str, sizes: tuple[int, ...] = SIZES, *, build: Any = None
) -> tuple[int, Any]:
    """The first of ``sizes`` the architecture accepts (and exports), and the model built for it.

    ``build(size)`` replaces building ``name`` from the registry (the tests' tiny
    configurations of a family's torchvision class).
    """
    import torch

    from hwprune.export import export_onnx

    last: Exception | None = None
    for size in sizes:
        try:
            model = build(size).eval() if build is not None else _build(name, size)
            with torch.no_grad():
                model(torch.zeros(1, 3, size, size))
            if sum(p.numel() for p in model.parameters()) > MAX_PARAMS:
                return size, model  # too big to export at all: sweep_one says so in one line
            # Adaptive pooling exports only to sizes that divide its input (VGG, AlexNet).
            export_onnx(model, input_shape=(1, 3, size, size), fold_shapes=False)
            return size, model
        except Exception as exc:  # the architecture rejects this size: try the next
            last = exc
    raise RuntimeError(f"no input size in {sizes} is accepted: {last}")


def _measure(oracle: Any, module: Any, inputs: Any) -> float:
    import oracles
    from hwprune.export import export_onnx

    data = export_onnx(module, example_inputs=inputs)
    return float(oracles.measure(oracle, data, input_shapes=inputs.shapes).value)


def paired_latency(timer: Any, dense: Any, pruned: Any, inputs: Any, *, rounds: int) -> dict:
    """Dense and pruned timed by one oracle in one process, interleaved (ABBA), ``rounds`` pairs.

    Each round times both models back to back (the order alternates), so a slow moment
    of the shared machine lands on both; the ratio reported is the median of the
    per-round ratios, with every value kept.
    """
    import os
    import statistics

    import oracles
    from hwprune.export import export_onnx

    shapes = inputs.shapes
    blobs = (export_onnx(dense, example_inputs=inputs), export_onnx(pruned, example_inputs=inputs))
    load_before = os.getloadavg()[0]
    d: list[float] = []
    p: list[float] = []
    for i in range(rounds):
        order = (0, 1) if i % 2 == 0 else (1, 0)
        got = {k: float(oracles.measure(timer, blobs[k], input_shapes=shapes).value) for k in order}
        d.append(got[0])
        p.append(got[1])
    return {
        "dense_ms": statistics.median(d),
        "pruned_ms": statistics.median(p),
        "ratio": statistics.median(b / a for a, b in zip(d, p, strict=True)),
        "dense_values": d,
        "pruned_values": p,
        "load_average": [load_before, os.getloadavg()[0]],
    }


def latency_fields(space: Any, model: Any, *, keep: float, size: int) -> dict[str, Any]:
    """The FLOPs-chosen keep ratio timed against dense, and a latency<=60% uniform bisection.

    Timed twice: with the sweep's channel counts (``round_to`` 1, the FLOPs-chosen model
    itself) and with every count rounded to a multiple of 8 (``--round-to 8``), because ONNX
    Runtime's CPU kernels run counts off that grid many times slower (MnasNet: 5x slower
    than dense at round_to 1). The latency<=60% bisection uses the multiples of 8.
    Every timed candidate has its BN statistics re-estimated (as a calibrated or fine-tuned
    model would), so no activation drifts into denormal floats. Each comparison is
    ``paired_latency``: same oracle, same process, interleaved.
    """
    import oracles
    from hwprune.space import Policy

    timer = oracles.get_oracle(LATENCY_ORACLE)
    inputs = space.example_inputs
    space8 = _space(model, size, round_to=8)

    def candidate(sp: Any, k: float) -> Any:
        return estimate_bn(sp.apply(Policy.uniform(sp, k)), size)

    chosen = paired_latency(timer, model, candidate(space, keep), inputs, rounds=LATENCY_ROUNDS)
    chosen8 = paired_latency(timer, model, candidate(space8, keep), inputs, rounds=LATENCY_ROUNDS)
    out: dict[str, Any] = {
        "latency_protocol": (
            f"{LATENCY_ORACLE}, dense and pruned interleaved in one process, "
            f"{LATENCY_ROUNDS} rounds, median of per-round ratios; BN re-estimated on each "
            "pruned candidate; round_to 1 and 8; shared 2-core machine under load"
        ),
        "latency_dense_ms": chosen["dense_ms"],
        "latency_after_ms": chosen["pruned_ms"],
        "latency_ratio": chosen["ratio"],
        "latency_pairs": chosen,
        "latency_ratio_round8": chosen8["ratio"],
        "latency_pairs_round8": chosen8,
    }
    lo, hi = space8.min_keep, 1.0
    best: tuple[float, float] | None = None
    seen = []
    k = math.sqrt(LATENCY_TARGET)
    for _ in range(LATENCY_STEPS):
        pair = paired_latency(timer, model, candidate(space8, k), inputs, rounds=3)
        seen.append({"keep": k, "ratio": pair["ratio"], "pairs": pair})
        if pair["ratio"] <= LATENCY_TARGET:
            best = (k, pair["ratio"]) if best is None or k > best[0] else best
            lo = k
        else:
            hi = k
        k = (lo + hi) / 2
    out["latency_search"] = seen
    out["latency_budget_keep"] = best[0] if best else None
    out["latency_budget_ratio"] = best[1] if best else None
    return out


def bisect_uniform(space: Any, oracle: Any, *, target: float, dense: float, steps: int) -> dict:
    """The largest uniform keep whose value is at most ``target * dense``, in ``steps`` evaluations.

    The first guess assumes the value falls with keep squared (FLOPs of a layer pruned on
    both sides); later guesses bisect the bracket. Returns the best feasible keep and value
    (None when no evaluation met the target) and every evaluation made.
    """
    from hwprune.space import Policy

    lo, hi = space.min_keep, 1.0
    bound = target * dense
    seen: list[tuple[float, float]] = []
    best: tuple[float, float] | None = None
    keep = math.sqrt(target)
    for _ in range(steps):
        value = _measure(oracle, space.apply(Policy.uniform(space, keep)), space.example_inputs)
        seen.append((keep, value))
        if value <= bound:
            if best is None or keep > best[0]:
                best = (keep, value)
            lo = keep
        else:
            hi = keep
        if hi - lo < 0.01:
            break
        keep = (lo + hi) / 2
    if best is None:  # the smallest model the space allows
        value = _measure(oracle, space.apply(Policy.uniform(space, lo)), space.example_inputs)
        seen.append((lo, value))
        if value <= bound:
            best = (lo, value)
    return {
        "keep": best[0] if best else None,
        "value": best[1] if best else None,
        "evaluations": [{"keep": k, "value": v} for k, v in seen],
    }


def _space(model: Any, size: int, *, round_to: int = 1) -> Any:
    import torch

    from hwprune.space import ChannelSpace

    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    return ChannelSpace(model, example_inputs=x, round_to=round_to, min_keep=0.1)


def latency_only(row: dict[str, Any]) -> dict[str, Any]:
    """A stored pruned row with its latency (re)measured: same input, same keep, fresh timing."""
    start = time.perf_counter()
    size = int(row["input"])
    model = realistic(_build(row["model"], size), size)
    space = _space(model, size)
    fields = latency_fields(space, model, keep=float(row["keep"]), size=size)
    env = common.environment()
    when = {"date": env["date"], "machine": env["machine"], "commit": env.get("commit")}
    seconds = round(time.perf_counter() - start, 1)
    return {**row, **fields, "latency_seconds": seconds, "latency_measured": when}


class _TimeLimit(BaseException):  # not caught by the size probing's "except Exception"
    """A model's sweep ran past ``--time-limit`` (Torch-Pruning's grouping can run for hours)."""


def _time_limit(seconds: int) -> Any:
    """A context in which SIGALRM after ``seconds`` raises _TimeLimit naming where it was."""
    import contextlib
    import signal

    def expired(signum: int, frame: Any) -> None:
        where = frame.f_code.co_name if frame is not None else "?"
        module = frame.f_globals.get("__name__", "?") if frame is not None else "?"
        raise _TimeLimit(f"did not finish in {seconds} s (stopped in {module}.{where})")

    @contextlib.contextmanager
    def limit() -> Any:
        old = signal.signal(signal.SIGALRM, expired)
        signal.alarm(seconds)
        try:
            yield
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, old)

    return limit()


def sweep_one(
    name: str, *, latency: bool, steps: int, sizes: tuple[int, ...] = SIZES, build: Any = None
) -> dict[str, Any]:
    """One model's row: built, pruned to flops<=60% by uniform bisection, exported, checked.

    ``build(size)``, when given, builds the model instead of the registry's ``name``.
    """
    import tempfile

    import torch

    import oracles
    from hwprune.errors import HwpruneError
    from hwprune.export.final import final_export
    from hwprune.space import Policy

    row: dict[str, Any] = {"model": name, "family": family(name), "status": "failed"}
    start = time.perf_counter()
    try:
        size, model = smallest_size(name, sizes, build=build)
        model = realistic(model, size)
        row["input"] = size
        params = sum(p.numel() for p in model.parameters())
        row["params_dense"] = params
        if params > MAX_PARAMS:
            row["status"] = "too big"
            row["error"] = (
                f"{params / 1e6:.0f} M parameters: its ONNX file passes protobuf's 2 GiB limit "
                "and the dense model, a pruned copy and a runtime session do not fit a shared "
                "24 GB machine"
            )
            return row
        space = _space(model, size)
        row["units"] = len(space.units)
        row["skipped"] = [{"id": s.id, "reason": s.reason} for s in space.skipped]
        flops = oracles.get_oracle("flops")
        dense = _measure(flops, model, space.example_inputs)
        found = bisect_uniform(space, flops, target=FLOPS_TARGET, dense=dense, steps=steps)
        row["flops_dense"] = dense
        row["flops_search"] = found["evaluations"]
        if found["keep"] is None:
            row["status"] = "refused"
            least = min(e["value"] for e in found["evaluations"]) / dense
            left_out = (
                f"; {len(space.skipped)} groups left out, first: {space.skipped[0].reason}"
                if space.skipped
                else ""
            )
            row["error"] = (
                f"no uniform keep ratio reaches flops<={FLOPS_TARGET:.0%}: the "
                f"{len(space.units)} prunable units cut it to {least:.0%} of dense at most"
                f"{left_out}"
            )
            return row
        row["keep"] = found["keep"]
        pruned = space.apply(Policy.uniform(space, found["keep"]))
        row["flops_after"] = found["value"]
        row["flops_ratio"] = found["value"] / dense
        row["params_after"] = sum(p.numel() for p in pruned.parameters())
        with tempfile.TemporaryDirectory() as tmp:
            try:
                exported = final_export(
                    pruned, example_inputs=space.example_inputs, onnx_path=Path(tmp) / "m.onnx"
                )
                row["parity_rel"] = exported.max_rel_diff
                row["parity_abs"] = exported.max_abs_diff
                row["output_scale"] = max(p.scale for p in exported.outputs)
                with torch.no_grad():
                    out = space.example_inputs.call(pruned)  # a tensor, or a dict (segmenters)
                    leaves = out.values() if isinstance(out, dict) else [out]
                    row["output_max"] = max(float(t.abs().max()) for t in leaves)
                row["parity"] = True
            except HwpruneError as exc:
                row["parity"] = False
                row["error"] = str(exc)
                return row
        if latency:
            row.update(latency_fields(space, model, keep=found["keep"], size=size))
        row["status"] = "pruned"
    except HwpruneError as exc:
        row["status"] = "refused"
        row["error"] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    except _TimeLimit as exc:
        row["status"] = "failed"
        row["error"] = str(exc)
        row["traceback"] = traceback.format_exc(limit=-6)
    except MemoryError:
        row["status"] = "too big"
        row["error"] = (
            f"ran out of the {MEMORY_CAP_GB} GiB memory cap the sweep sets on a shared 24 GB machine"
        )
    except Exception as exc:
        row["status"] = "failed"
        row["error"] = (
            f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        )
        row["traceback"] = traceback.format_exc(limit=-6)
    finally:
        row["seconds"] = round(time.perf_counter() - start, 1)
    return row


def store(row: dict[str, Any]) -> Path:
    env = common.environment()
    ROWS_DIR.mkdir(parents=True, exist_ok=True)
    path = ROWS_DIR / f"{row['model']}.json"
    # A row re-timed by latency_only keeps when its sweep was measured.
    stored = {**row, "measured": row.get("measured") or {
        "date": env["date"], "machine": env["machine"], "commit": env.get("commit")}}  # fmt: skip
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(stored, indent=2, default=str) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def stored_rows() -> dict[str, dict[str, Any]]:
    rows = {}
    for path in sorted(ROWS_DIR.glob("*.json")):
        try:
            row = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        rows[row["model"]] = row
    return rows


def _pct(x: Any) -> str:
    return f"{100 * x:.0f}%" if isinstance(x, (int, float)) else "-"


def _latency(r: dict[str, Any], key: str) -> Any:
    # Only rows timed by the paired protocol count; earlier single-shot figures were not valid.
    return r.get(key) if "latency_ratio_round8" in r else None


def _outcome(r: dict[str, Any] | None) -> str:
    if r is None:
        return "not run"
    if r["status"] == "pruned":
        return "pruned and matched" if r.get("parity") else "failed"  # a mismatch ships nothing
    return r["status"] if r["status"] in ("refused", "too big") else "failed"


def table(names: list[str]) -> str:
    """The per-model table, from stored rows."""
    rows = stored_rows()
    out = []
    for name in names:
        r = rows.get(name)
        if r is None:
            out.append([name, "-", "not run", "-", "-", "-", "-", "-", "-", "-"])
            continue
        status = r["status"]
        parity = (
            f"{r['parity_rel']:.1e}"
            if r.get("parity")
            else "mismatch"
            if r.get("parity") is False
            else "-"
        )
        note = r.get("error", "") if status != "pruned" else ""
        if status == "pruned" and r.get("skipped"):
            note = f"{len(r['skipped'])} group(s) left out: {r['skipped'][0]['reason']}"
        out.append(
            [
                name,
                f"{r.get('input', '-')}",
                status,
                _pct(r.get("flops_ratio")),
                _pct(_latency(r, "latency_ratio")),
                _pct(_latency(r, "latency_ratio_round8")),
                _pct(_latency(r, "latency_budget_ratio")),
                parity,
                f"{r.get('seconds', 0):.0f}",
                note.replace("|", "/")[:160],
            ]
        )
    headers = [
        "model", "input", "status", "FLOPs after/dense", "latency after/dense",
        "same, channels x8", "latency<=60% reached (x8)", "parity (rel.)", "s", "note",
    ]  # fmt: skip
    return common.markdown_table(headers, out)


def _family_latency(ok: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The family's timed row: its first pruned-and-matched model with a paired latency."""
    return next((r for r in ok if _latency(r, "latency_ratio")), None)


def family_table(names: list[str]) -> str:
    """One row per family: outcomes, median FLOPs and latency after/dense, worst parity."""
    import statistics

    rows = stored_rows()
    out = []
    for fam in sorted({family(n) for n in names}):
        members = [n for n in names if family(n) == fam]
        found = [rows[n] for n in members if n in rows]
        outcome = [_outcome(rows.get(n)) for n in members]
        ok = [r for r in found if _outcome(r) == "pruned and matched"]
        flops = [r["flops_ratio"] for r in ok]
        timed = _family_latency(ok)
        lat = [timed] if timed else []
        parity = max((r["parity_rel"] for r in ok), default=None)
        out.append(
            [
                fam,
                str(len(found)),
                str(outcome.count("pruned and matched")),
                str(outcome.count("refused") + outcome.count("too big")),
                str(outcome.count("failed")),
                _pct(statistics.median(flops)) if flops else "-",
                " / ".join(_pct(lat[0][k]) for k in ("latency_ratio", "latency_ratio_round8"))
                if lat
                else "-",
                f"{parity:.0e}" if parity is not None else "-",
            ]
        )
    headers = [
        "family", "tried", "pruned+matched", "refused or too big", "failed", "FLOPs after/dense",
        "latency after/dense (x1 / x8)", "max parity",
    ]  # fmt: skip
    return common.markdown_table(headers, out)


def counts(names: list[str]) -> dict[str, int]:
    rows = stored_rows()
    out = {
        "tried": 0,
        "pruned and matched": 0,
        "refused": 0,
        "too big": 0,
        "failed": 0,
        "not run": 0,
    }
    for name in names:
        outcome = _outcome(rows.get(name))
        out[outcome] += 1
        out["tried"] += outcome != "not run"
    return out


def _counts_line(names: list[str]) -> str:
    c = counts(names)
    return (
        f"{c['tried']} of {len(names)} tried: {c['pruned and matched']} pruned and matched, "
        f"{c['refused']} refused, {c['too big']} too big for this machine, {c['failed']} failed"
        + (f", {c['not run']} not run yet" if c["not run"] else "")
    )


PROTOCOL = (
    "Random weights (zero-initialised layers drawn, BN statistics estimated on random "
    "batches, so outputs have a scale), 10 classes, batch 1 at the smallest input of "
    "64, 70, 75, 96, ... the architecture accepts. Pruned by a uniform keep ratio, bisected "
    f"on the `flops` oracle (static count on the exported ONNX) to flops<={FLOPS_TARGET:.0%}; "
    "exported with `final_export`, whose parity gate compares every output of ONNX Runtime "
    "and torch on 3 random inputs: max |difference| relative to max(1, max |output|), "
    "within 1e-3 (or, where torch's own float32 result is that far from float64, ONNX "
    "Runtime within 10x torch's own error), or nothing is exported. Latency, the smallest "
    f"model of each family: `{LATENCY_ORACLE}`, dense and pruned timed by the same oracle in "
    f"one process, interleaved, {LATENCY_ROUNDS} pairs, median of the per-pair ratios, BN "
    "statistics re-estimated on the pruned model; x1: the FLOPs-chosen model itself "
    "(any channel count), x8: the same keep ratio with channel counts rounded to multiples "
    "of 8 (`--round-to 8`), which ONNX Runtime's CPU kernels need to run fast. **Taken on a "
    "shared, loaded 2-core machine (load average 8-15 while other engineers ran tests and "
    "benchmarks), so single figures carry noise.** No data, accuracy or fine-tuning: this "
    "is about the mechanics."
)

README = _HERE.parent / "README.md"
DOCS = _HERE.parent / "docs" / "support.md"


def latency_ranges(names: list[str]) -> dict[str, tuple[str, float, str, float]]:
    """Per rounding (x1, x8): the family whose timed model ran fastest and slowest against dense.

    Each family's timed row is the one its ``family_table`` row shows.
    """
    rows = stored_rows()
    timed: dict[str, dict[str, Any]] = {}
    for fam in sorted({family(n) for n in names}):
        ok = [rows[n] for n in names if family(n) == fam and n in rows]
        row = _family_latency([r for r in ok if _outcome(r) == "pruned and matched"])
        if row is not None:
            timed[fam] = row
    out = {}
    for label, key in (("x1", "latency_ratio"), ("x8", "latency_ratio_round8")):
        ratios = {fam: r[key] for fam, r in timed.items() if isinstance(r.get(key), (int, float))}
        if ratios:
            lo, hi = min(ratios, key=ratios.get), max(ratios, key=ratios.get)
            out[label] = (lo, ratios[lo], hi, ratios[hi])
    return out


def readme_block(names: list[str]) -> str:
    """README's support summary; the table by family is docs/support.md's (README stays short)."""
    import textwrap

    ranges = latency_ranges(names)
    spread = ""
    if "x1" in ranges and "x8" in ranges:
        (lo1, r_lo1, hi1, r_hi1), (lo8, r_lo8, hi8, r_hi8) = ranges["x1"], ranges["x8"]
        spread = (
            f" With channels as chosen the pruned model ran at {_pct(r_lo1)} ({lo1}) to "
            f"{_pct(r_hi1)} ({hi1}) of its dense latency; in multiples of 8 (`--round-to 8`) at "
            f"{_pct(r_lo8)} ({lo8}) to {_pct(r_hi8)} ({hi8})."
        )
    intro = (
        f"{_counts_line(names)} (Torch-Pruning: 81 of 85). Random weights, "
        f"flops<={FLOPS_TARGET:.0%} (uniform), ONNX parity 1e-3; latency: the smallest model per "
        "family against its dense model, interleaved, on a shared loaded CPU (noisy)."
        + spread
        + " [By family](docs/support.md#by-family), [every model and the method](docs/support.md)."
    )
    return textwrap.fill(intro, width=100, break_on_hyphens=False)


def replace_between(text: str, section: str, body: str) -> str:
    """``text`` with what lies between ``<!-- BEGIN section -->`` and its END marker replaced."""
    begin, end = f"<!-- BEGIN {section} -->", f"<!-- END {section} -->"
    if begin not in text or end not in text:
        raise ValueError(f"the markers {begin} / {end} are missing")
    head, _, rest = text.partition(begin)
    _, _, tail = rest.partition(end)
    return f"{head}{begin}\n{body.strip()}\n{end}{tail}"


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def write_tables(names: list[str]) -> list[Path]:
    """README's summary, docs/support.md (by family, every model) and RESULTS.md's section."""
    _write(
        README, replace_between(README.read_text(encoding="utf-8"), "support", readme_block(names))
    )
    env = common.environment()
    docs = "\n\n".join(
        [
            "# Support matrix: torchvision classifiers and segmentation models",
            "Written by `python -m benchmarks.support --table` from the stored rows in "
            "[benchmarks/results/support/](../benchmarks/results/support/) (one JSON file per "
            "model, with its evaluations, timings, machine and commit); the sweep itself: "
            "`OMP_NUM_THREADS=1 taskset -c 1 nice python -m benchmarks.support --latency --steps 4`.",
            f"**{_counts_line(names)}.** Torch-Pruning reports 81 of 85 torchvision models pruned.",
            PROTOCOL,
            "## By family",
            family_table(names),
            "## Every model",
            '"latency<=60% reached" is the ratio a uniform bisection on the latency oracle '
            'reached (3 steps, 3 interleaved pairs each); "s": the model\'s sweep time in '
            "seconds. A note names the groups Torch-Pruning cannot map and that were left "
            "unpruned (the rest of the model is pruned).",
            table(names),
            f"Machine: {env['machine']}.",
        ]
    )
    # The real-models suite's section (benchmarks/zoo.py) is written there by its own command.
    old = DOCS.read_text(encoding="utf-8") if DOCS.exists() else ""
    zoo = old[old.find("<!-- BEGIN zoo -->") :] if "<!-- BEGIN zoo -->" in old else ""
    _write(DOCS, docs + "\n" + (f"\n{zoo.rstrip()}\n" if zoo else ""))
    results = common.update_results_md(
        "support",
        "Support matrix: torchvision classifiers and segmentation models",
        family_table(names) + "\n\nEvery model: [docs/support.md](../docs/support.md).",
        command=common.command_line(),
        env=env,
        notes=f"{_counts_line(names)}.\n\n{PROTOCOL}",
    )
    return [README, DOCS, results]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=common.module_command(__file__), description=__doc__.splitlines()[0]
    )
    parser.add_argument("--models", nargs="*", help="only these models (default: all)")
    parser.add_argument("--latency", action="store_true", help="latency too, one model per family")
    parser.add_argument("--steps", type=int, default=6, help="evaluations per bisection")
    parser.add_argument(
        "--redo", action="store_true", help="repeat stored rows (failed ones always are)"
    )
    parser.add_argument(
        "--retime", action="store_true", help="with --latency: time stored rows again"
    )
    parser.add_argument(
        "--time-limit", type=int, default=1200, help="seconds per model before it counts as failed"
    )
    parser.add_argument(
        "--families-first",
        action="store_true",
        help="the smallest model of every family before the rest",
    )
    parser.add_argument(
        "--table", action="store_true", help="only write the table from stored rows"
    )
    args = parser.parse_args(argv)
    import resource

    hard = resource.getrlimit(resource.RLIMIT_AS)[1]
    cap = MEMORY_CAP_GB * 2**30
    cap = cap if hard == resource.RLIM_INFINITY else min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("hwprune").setLevel(logging.WARNING)
    names = swept()
    if args.table:
        for path in write_tables(names):
            print(path)
        print(json.dumps(counts(names)))
        return 0
    todo = args.models or names
    unknown = [n for n in todo if n not in names]
    if unknown:
        parser.error(f"not a torchvision classifier or segmentation model: {', '.join(unknown)}")
    done = stored_rows()
    firsts: dict[str, str] = {}
    for n in names:
        firsts.setdefault(family(n), n)
    if args.families_first:
        heads = [n for n in todo if firsts[family(n)] == n]
        todo = heads + [n for n in todo if n not in heads]
    for name in todo:
        latency = args.latency and firsts[family(name)] == name
        if name in done and not args.redo and done[name]["status"] != "failed":
            old = done[name]
            stale = args.retime or "latency_ratio_round8" not in old
            if latency and old["status"] == "pruned" and stale:
                log.info("%s: latency only ...", name)
                row = latency_only(old)
                store(row)
                log.info("%s: latency %.2f of dense", name, row["latency_ratio"])
            continue
        log.info("%s ...", name)
        with _time_limit(args.time_limit):
            row = sweep_one(name, latency=latency, steps=args.steps)
        store(row)
        log.info("%s: %s in %.0f s %s", name, row["status"], row["seconds"], row.get("error", ""))
        gc.collect()
    print(json.dumps(counts(names)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
