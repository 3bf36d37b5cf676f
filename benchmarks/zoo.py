"""Real models as their libraries build them: do they prune, keep their output shapes, match?

Rows (random weights, built from each library's own configurations, nothing downloaded):
ultralytics YOLOv8n and YOLO11n, detect and segment (``YOLO("yolov8n.yaml")``); torchvision
SSDlite, RetinaNet and Faster R-CNN whole, called with a list of 3-D images; Hugging Face
BERT, ViT and a Llama-style and a Qwen2-style decoder (tiny configurations); and one small
model of every timm family (the module that defines it), like the torchvision sweep in
``benchmarks/support.py``.

Each row runs ``hwprune.prune`` as a user would: the model, its example inputs, a score (the
negative squared difference from the dense model's fixed-size outputs: the head before NMS
for a detector), one budget (``flops<=70%``; ``macs<=70%``, counted in torch, for the
detectors whose outputs after NMS the ONNX count cannot size; ``latency<=70%`` on ONNX
Runtime for the transformers) and the
``uniform`` searcher with a few evaluations. The row is "pruned" (the run's export passed its
parity check), "refused" (an hwprune error, its one line) or "failed" (anything else, with
its traceback). Every row also records each output's shape before and after and the FLOPs
and ONNX Runtime latency of the dense and the pruned model.

Rows are stored as they complete in ``benchmarks/results/zoo_runs/``; a second run skips
stored rows (``--redo`` repeats them), so the timm sweep can be run piecewise. ``--table``
writes ``benchmarks/results/zoo.md``, RESULTS.md's section and the README and docs summaries.

Needs the ``zoo`` extra (``pip install hwprune[zoo]``: ultralytics, transformers, timm)::

    nice python -m benchmarks.zoo            # every row not stored yet
    python -m benchmarks.zoo --models timm-beit_base_patch16_224 --redo --param-cap 1000
    python -m benchmarks.zoo --table

A timm family whose smallest model has more than 60 M parameters is left out as "too big" unless
``--param-cap`` allows it (the sweep's wall time grows with the models: 2-3 minutes each for
the 80-90 M ones on 2 cores).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import _common as common

_HERE = Path(__file__).resolve().parent
RUNS = common.RunRows("zoo")
TABLE = common.RESULTS_DIR / "zoo.md"
README = _HERE.parent / "README.md"
DOCS = _HERE.parent / "docs" / "support.md"
LATENCY_ORACLE = "onnxruntime:cpu?threads=1&max_time=0.5"
EVALUATIONS = 3
LATENCY_PAIRS = 3
TIMM_SIZES = (64, 96, 128, 160, 224)
TIMM_PARAM_CAP = 60_000_000  # a family whose smallest model is bigger is skipped here
PARAM_CAP = [TIMM_PARAM_CAP]  # this run's cap (--param-cap)
#: The timm families over the default cap, run on their own with --param-cap 1000.
BIG = ("timm-qwen3_vit_88m", "timm-beit_base_patch16_224", "timm-samvit_base_patch16_224",
       "timm-naflexvit_base_patch16_siglip", "timm-mobilenetv5_base", "timm-nasnetalarge",
       "timm-pnasnet5large", "timm-vgg11", "timm-gemma4_vit_167m_enc",
       "timm-deepseek_vit_412m")  # fmt: skip

log = logging.getLogger("zoo")


def _offline() -> None:
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("YOLO_VERBOSE", "False")


def _leaves(out: Any) -> list[Any]:
    """The floating-point tensors of an output (a tensor, or tuples, lists and dicts of them)."""
    from hwprune.inputs import flatten_outputs

    return [t for _, t in flatten_outputs(out) if t.is_floating_point()]


def _closeness(reference: Callable[[Any], list[Any]], model: Any) -> Callable[[Any], float]:
    """A score: minus the mean squared difference of ``reference(m)``'s tensors from the
    dense model's (1 per tensor, so no one output dominates)."""
    import torch

    with torch.no_grad():
        dense = [t.detach().clone() for t in reference(model)]

    def score(m: Any) -> float:
        with torch.no_grad():
            got = reference(m)
        total = 0.0
        for a, b in zip(dense, got, strict=True):
            if a.shape != b.shape:
                return -1e9
            total += float(((a - b) ** 2).mean() / (a.pow(2).mean() + 1e-12))
        return -total / max(1, len(dense))

    return score


# -- the named rows ------------------------------------------------------------------------


def _yolo(cfg: str) -> tuple[Any, Any, Any, str]:
    import torch
    from ultralytics import YOLO

    model = YOLO(cfg).model.eval()
    x = torch.rand(1, 3, 160, 160, generator=torch.Generator().manual_seed(0))
    return model, x, _closeness(lambda m: _leaves(m(x)), model), "flops<=70%"


def _torchvision_detector(name: str) -> tuple[Any, Any, Any, str]:
    import torch
    import torchvision

    ctor = getattr(torchvision.models.detection, name)
    model = ctor(weights=None, weights_backbone=None).eval()
    # Small images keep it short: SSDlite would resize every image to 320x320.
    model.transform.min_size, model.transform.max_size = (128,), 128
    if model.transform.fixed_size:
        model.transform.fixed_size = (128, 128)
    image = torch.rand(3, 128, 128, generator=torch.Generator().manual_seed(0))

    def before_nms(m: Any) -> list[Any]:
        feats = m.backbone(image[None])
        feats = list(feats.values()) if isinstance(feats, dict) else [feats]
        head = getattr(m, "head", None)
        return _leaves(head(feats)) if head is not None else feats

    # Boxes after NMS have no size the ONNX count can know; MACs are counted in torch.
    return model, ([image],), _closeness(before_nms, model), "macs<=70%"


def _hf(family: str) -> tuple[Any, Any, Any, str]:
    import torch
    import transformers as tf

    torch.manual_seed(0)
    seq = 64
    ids = torch.randint(0, 100, (1, seq), generator=torch.Generator().manual_seed(0))
    text = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    common_cfg = {"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                  "intermediate_size": 1024}  # fmt: skip
    if family == "bert":
        cfg = tf.BertConfig(vocab_size=100, max_position_embeddings=128, **common_cfg)
        model, x = tf.BertModel(cfg), text
    elif family == "vit":
        cfg = tf.ViTConfig(image_size=64, patch_size=8, num_labels=10, **common_cfg)
        model = tf.ViTForImageClassification(cfg)
        x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    else:
        config_class, model_class = {
            "llama": (tf.LlamaConfig, tf.LlamaForCausalLM),
            "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM),
        }[family]
        cfg = config_class(vocab_size=100, num_key_value_heads=2, max_position_embeddings=128,
                           use_cache=False, **common_cfg)  # fmt: skip
        model, x = model_class(cfg), text
    model.eval()

    def main(m: Any) -> list[Any]:
        out = m(**x) if isinstance(x, dict) else m(x)
        return [out["logits"] if "logits" in out else out["last_hidden_state"]]

    return model, x, _closeness(main, model), "latency<=70%"


NAMED: dict[str, Callable[[], tuple[Any, Any, Any, str]]] = {
    "yolov8n": lambda: _yolo("yolov8n.yaml"),
    "yolov8n-seg": lambda: _yolo("yolov8n-seg.yaml"),
    "yolo11n": lambda: _yolo("yolo11n.yaml"),
    "yolo11n-seg": lambda: _yolo("yolo11n-seg.yaml"),
    "ssdlite320_mobilenet_v3_large": lambda: _torchvision_detector("ssdlite320_mobilenet_v3_large"),
    "retinanet_resnet50_fpn": lambda: _torchvision_detector("retinanet_resnet50_fpn"),
    "fasterrcnn_mobilenet_v3_large_fpn": lambda: _torchvision_detector(
        "fasterrcnn_mobilenet_v3_large_fpn"
    ),
    "hf-bert": lambda: _hf("bert"),
    "hf-vit": lambda: _hf("vit"),
    "hf-llama": lambda: _hf("llama"),
    "hf-qwen2": lambda: _hf("qwen2"),
}
GROUPS = {"yolo": "ultralytics", "ssdlite": "torchvision", "retinanet": "torchvision",
          "fasterrcnn": "torchvision", "hf-": "transformers", "timm-": "timm"}  # fmt: skip


def group(name: str) -> str:
    return next((g for p, g in GROUPS.items() if name.startswith(p)), "other")


# -- the timm sweep ------------------------------------------------------------------------


def _param_count(name: str) -> int:
    import timm
    import torch

    try:
        with torch.device("meta"):
            model = timm.create_model(name, pretrained=False, num_classes=10)
        return sum(p.numel() for p in model.parameters())
    except Exception:
        return 10**12


_SMALL_WORDS = ("atto", "femto", "pico", "nano", "xxs", "tiny", "xs", "small", "_s", "18", "b0")


def timm_families(*, probe: int = 4) -> dict[str, str]:
    """One small model per timm module (its family), by parameter count among the ``probe``
    names whose size words (atto, nano, tiny, ...) come first; counted on the meta device."""
    import timm

    out = {}
    for module in sorted(timm.list_modules()):
        names = timm.list_models(module=module)
        if not names:
            continue

        def rank(n: str) -> tuple[int, int, str]:
            hit = next((i for i, w in enumerate(_SMALL_WORDS) if w in n), len(_SMALL_WORDS))
            return (hit, len(n), n)

        pool = sorted(names, key=rank)[:probe]
        out[module] = min(pool, key=lambda n: (_param_count(n), n))
    return out


def _timm(name: str) -> tuple[Any, Any, Any, str]:
    import timm
    import torch

    last: Exception | None = None
    default = timm.get_pretrained_cfg(name)
    native = int(default.input_size[-1]) if default is not None else 224
    for size in (*(s for s in TIMM_SIZES if s < native), native):
        try:
            try:
                model = timm.create_model(name, pretrained=False, num_classes=10, img_size=size)
            except TypeError:  # no img_size: a convolutional model takes any size
                model = timm.create_model(name, pretrained=False, num_classes=10)
            model.eval()
            x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
            with torch.no_grad():
                model(x)
            break
        except Exception as exc:
            last = exc
    else:
        raise NotBuilt(f"no input size up to {native} is accepted: {last}")
    params = sum(p.numel() for p in model.parameters())
    if params > PARAM_CAP[0]:
        raise MemoryError(f"{params / 1e6:.0f} M parameters, over --param-cap")
    return model, x, _closeness(lambda m: _leaves(m(x)), model), "flops<=70%"


class NotBuilt(RuntimeError):
    """The suite could not build or call the model itself: no verdict on hwprune."""


def builder(name: str) -> Callable[[], tuple[Any, Any, Any, str]]:
    if name in NAMED:
        return NAMED[name]
    if name.startswith("timm-"):
        model = name.split("-", 1)[1]
        return lambda: _timm(model)
    raise KeyError(name)


# -- one row ------------------------------------------------------------------------------


def _cost(model: Any, inputs: Any) -> dict[str, Any]:
    """FLOPs (static count; the one-line reason where it cannot count) and ORT latency, of
    the exported ``model``."""
    import oracles
    from hwprune.export import export_onnx
    from hwprune.inputs import ExampleInputs

    x = ExampleInputs.from_user(inputs, model=model)
    data = export_onnx(model, example_inputs=x, allow_trace_warnings=True)
    out: dict[str, Any] = {}
    try:
        out["flops"] = float(
            oracles.measure(oracles.get_oracle("flops"), data, input_shapes=x.shapes).value
        )
    except Exception as exc:
        out["flops_error"] = str(exc).strip().splitlines()[0][:300]
    timer = oracles.get_oracle(LATENCY_ORACLE)
    values = [float(oracles.measure(timer, data, input_shapes=x.shapes).value)
              for _ in range(LATENCY_PAIRS)]  # fmt: skip
    out["latency_ms"] = sorted(values)[len(values) // 2]
    return out


def prune_row(
    name: str,
    build: Callable[[], tuple[Any, Any, Any, str]],
    *,
    evaluations: int = EVALUATIONS,
    agent: str = "uniform",
) -> dict[str, Any]:
    """Build, prune with ``hwprune.prune``, and describe the outcome in one row."""
    import hwprune
    from hwprune.errors import HwpruneError
    from oracles.errors import OracleError

    row: dict[str, Any] = {"model": name, "group": group(name), "status": "failed"}
    start = time.perf_counter()
    try:
        model, inputs, score, budget = build()
        row["budget"] = budget
        row["params_dense"] = sum(p.numel() for p in model.parameters())
        dense_cost = _cost(model, inputs)
        timed = {"oracle": f"latency={LATENCY_ORACLE}"} if budget.startswith("latency") else {}
        with tempfile.TemporaryDirectory() as tmp:
            result = hwprune.prune(
                model, example_inputs=inputs, score=score, out=Path(tmp) / "run",
                budgets=[budget], agent=agent, evaluations=evaluations, seed=0, **timed,
            )  # fmt: skip
            report = json.loads((Path(tmp) / "run" / "report.json").read_text(encoding="utf-8"))
        pruned = result.model
        row["params_after"] = sum(p.numel() for p in pruned.parameters())
        row["all_met"] = bool(result.all_met)
        row["parity_abs"] = result.export_max_abs_diff
        row["output_shapes"] = {k: dict(v) for k, v in result.output_shapes.items()}
        row["shapes_kept"] = all(
            v.get("dense") == v.get("final") for v in result.output_shapes.values()
        )
        row["left_whole"] = report.get("left_whole") or {}
        after_cost = _cost(pruned, inputs)
        for key in ("flops", "latency_ms", "flops_error"):
            if key in dense_cost:
                row[f"{key}_dense"] = dense_cost[key]
            if key in after_cost:
                row[f"{key}_after"] = after_cost[key]
        row["status"] = "pruned"
    except (HwpruneError, OracleError) as exc:  # an oracle's own one-line refusal counts too
        row["status"] = "refused"
        row["error"] = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    except NotBuilt as exc:
        row["status"] = "not built"
        row["error"] = str(exc).strip().splitlines()[0][:300]
    except MemoryError as exc:
        row["status"] = "too big"
        row["error"] = f"too big for this shared machine ({exc})"
    except BaseException as exc:  # a time limit, or anything hwprune did not turn into one line
        if isinstance(exc, KeyboardInterrupt):
            raise
        row["status"] = "failed"
        text = str(exc).strip()
        row["error"] = f"{type(exc).__name__}: {text.splitlines()[0][:300] if text else ''}"
        row["traceback"] = traceback.format_exc(limit=-8)
    finally:
        row["seconds"] = round(time.perf_counter() - start, 1)
    return row


# -- tables --------------------------------------------------------------------------------


def _pct(a: Any, b: Any) -> str:
    ok = isinstance(a, (int, float)) and isinstance(b, (int, float)) and a
    return f"{100 * b / a:.0f}%" if ok else "-"


def _shapes_text(r: dict[str, Any]) -> str:
    if r["status"] != "pruned":
        return "-"
    if r.get("shapes_kept"):
        return "unchanged"
    counts = [n for n, v in r["output_shapes"].items() if v.get("dense")[1:] == v.get("final")[1:]]
    return "unchanged but the detection count" if counts else "changed"


def table_rows(rows: list[dict[str, Any]]) -> list[list[str]]:
    out = []
    for r in rows:
        note = r.get("error", "")
        if r["status"] == "pruned" and r.get("left_whole"):
            note = f"{len(r['left_whole'])} unit(s) left whole"
        if r["status"] == "pruned" and "flops_error_dense" in r:
            note = (note + "; " if note else "") + "FLOPs: size after NMS not static"
        out.append([
            r["model"], r["group"], r["status"], r.get("budget", "-"), _shapes_text(r),
            f"{r['parity_abs']:.1e}" if isinstance(r.get("parity_abs"), float) else "-",
            _pct(r.get("flops_dense"), r.get("flops_after")),
            f"{r['latency_ms_dense']:.2f} -> {r['latency_ms_after']:.2f}"
            if "latency_ms_after" in r else "-",
            f"{r.get('seconds', 0):.0f}", note.replace("|", "/")[:200],
        ])  # fmt: skip
    return out


HEADERS = ["model", "library", "status", "budget", "output shapes", "parity (abs)",
           "FLOPs after/dense", "ORT latency ms (loaded CPU)", "s", "note"]  # fmt: skip


def stored() -> list[dict[str, Any]]:
    if not RUNS.dir.exists():
        return []
    rows = []
    for path in sorted(RUNS.dir.glob("*.json")):
        try:
            rows.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            continue
    order = list(NAMED)
    return sorted(rows, key=lambda r: (order.index(r["model"]) if r["model"] in order
                                       else len(order), r["model"]))  # fmt: skip


def counts(rows: list[dict[str, Any]]) -> dict[str, int]:
    out = {"pruned": 0, "refused": 0, "too big": 0, "not built": 0, "failed": 0}
    for r in rows:
        out[r["status"]] = out.get(r["status"], 0) + 1
    return out


def summary(rows: list[dict[str, Any]]) -> str:
    by: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by.setdefault(r["group"], []).append(r)
    parts = []
    for g, rs in sorted(by.items()):
        c = counts(rs)
        parts.append(f"{g} {c['pruned']} of {len(rs)} pruned and matched"
                     + (f", {c['refused']} refused" if c["refused"] else "")
                     + (f", {c['failed']} failed" if c["failed"] else "")
                     + (f", {c['too big']} too big" if c["too big"] else "")
                     + (f", {c['not built']} not built" if c["not built"] else ""))  # fmt: skip
    return "; ".join(parts)


PROTOCOL = (
    "Random weights, each library's own configuration; `hwprune.prune` with a score that "
    "compares the fixed-size outputs (a detector's head before NMS) with the dense model's, "
    f"the `uniform` searcher, {EVALUATIONS} evaluations, one budget per row; parity: the run's "
    "own export check. FLOPs: the static count on the exported ONNX; latency: "
    f"`{LATENCY_ORACLE}`, median of {LATENCY_PAIRS}, dense and pruned in one process, **on a "
    "shared 2-core machine running other benchmarks (load average above 4): the latencies are "
    "noisy indications, not results.**"
)


def write_tables() -> list[Path]:
    import textwrap

    rows = stored()
    env = common.environment()
    c = counts(rows)
    line = (f"{len(rows)} rows: {c['pruned']} pruned and matched, {c['refused']} refused in one "
            f"line, {c['failed']} failed, {c['too big']} too big, {c['not built']} not built "
            "(the suite could not call the model at any input size)")  # fmt: skip
    try:
        import timm

        modules = len(timm.list_modules())
    except ImportError:
        modules = None
    timm_rows = sum(r["group"] == "timm" for r in rows)
    if modules and timm_rows < modules:
        line += (f"; timm: {timm_rows} of its {modules} families (modules) run so far, the same "
                 "command runs the rest (stored rows are kept)")  # fmt: skip
    import importlib.metadata as md

    found = []
    for package in ("ultralytics", "transformers", "timm"):
        try:
            found.append(f"{package} {md.version(package)}")
        except md.PackageNotFoundError:
            continue
    line += f" ({', '.join(found)})" if found else ""
    table = common.markdown_table(HEADERS, table_rows(rows))
    TABLE.write_text(
        f"# Real-models suite\n\n{line}. {summary(rows)}.\n\n{PROTOCOL}\n\n{table}\n",
        encoding="utf-8",
    )
    results = common.update_results_md(
        "zoo", "Real-models suite: YOLO, torchvision detectors, Hugging Face, timm", table,
        command="nice python -m benchmarks.zoo && python -m benchmarks.zoo --models "
        + " ".join(BIG)
        + " --no-timm --redo --param-cap 1000 --time-limit 1200 && python -m benchmarks.zoo --table",
        env=env,
        notes=f"{line}. {summary(rows)}.\n\n{PROTOCOL}",
    )  # fmt: skip
    block = textwrap.fill(
        f"Real models ([benchmarks.zoo](benchmarks/results/zoo.md), random weights, "
        f"each library's configs): {summary(rows)}.",
        width=100, break_on_hyphens=False,
    )  # fmt: skip
    _replace_or_append(README, block, after="<!-- END support -->")
    _replace_or_append(DOCS, f"## Real models\n\n{line}. {summary(rows)}.\n\n{PROTOCOL}\n\n"
                       f"{table}", after=None)  # fmt: skip
    return [TABLE, results, README, DOCS]


def _replace_or_append(path: Path, body: str, *, after: str | None) -> None:
    """``path`` with its zoo block replaced, or placed after the line ``after`` (the end)."""
    begin, end = "<!-- BEGIN zoo -->", "<!-- END zoo -->"
    text = path.read_text(encoding="utf-8")
    block = f"{begin}\n{body.strip()}\n{end}"
    if begin in text and end in text:
        head, _, rest = text.partition(begin)
        text = head + block + rest.partition(end)[2]
    elif after is not None and after in text:
        head, _, tail = text.partition(after)
        text = f"{head}{after}\n\n{block}{tail}"
    else:
        text = text.rstrip("\n") + f"\n\n{block}\n"
    path.write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=common.module_command(__file__), description=__doc__.splitlines()[0]
    )
    parser.add_argument("--models", nargs="*", help="only these rows (names, or timm-NAME)")
    parser.add_argument("--no-timm", action="store_true", help="only the named models")
    parser.add_argument("--redo", action="store_true", help="repeat stored rows")
    parser.add_argument("--evaluations", type=int, default=EVALUATIONS)
    parser.add_argument("--time-limit", type=int, default=600, help="seconds per row")
    parser.add_argument("--table", action="store_true", help="only write the tables")
    parser.add_argument(
        "--param-cap",
        type=float,
        default=TIMM_PARAM_CAP / 1e6,
        metavar="M",
        help="skip a timm family whose smallest model has more than M million parameters, "
        "as 'too big' (default: %(default)g; the sweep's wall time grows with the models)",
    )
    args = parser.parse_args(argv)
    PARAM_CAP[0] = int(args.param_cap * 1e6)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for noisy in ("hwprune", "oracles", "ultralytics"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    _offline()
    if args.table:
        for path in write_tables():
            print(path)
        return 0
    from benchmarks.support import _time_limit

    todo = args.models or list(NAMED)
    if not args.models and not args.no_timm:
        todo += [f"timm-{n}" for n in timm_families().values()]
    for name in todo:
        done = RUNS.get(name)
        if done is not None and done["status"] != "failed" and not args.redo:
            continue  # a failed row (a time limit on a loaded machine) is tried again
        log.info("%s ...", name)
        with _time_limit(args.time_limit):
            row = prune_row(name, builder(name), evaluations=args.evaluations)
        RUNS.put(name, row)
        log.info("%s: %s in %.0f s %s", name, row["status"], row["seconds"], row.get("error", ""))
        gc.collect()
    write_tables()
    print(json.dumps(counts(stored())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
