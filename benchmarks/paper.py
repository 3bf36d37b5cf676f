"""Benchmark: the seed papers' settings, run with hwprune on the data available here.

* ICPR 2022 (Malik et al., constrained RL pruning): a parameter budget of
  about 10% of the weights kept (``params<=10%``), weight granularity
  (unstructured magnitude sparsity, ``WeightSpace``), the parameter oracle
  counting non-zeros (``params?nonzero=1``), the ``ppo-lagrangian`` searcher,
  on CIFAR-style VGG-11, VGG-16, VGG-19 and ResNet-18.
* QLP (Camci et al., TCSVT 2022): sparsities of 90%, 95% and 98%
  (``params<=10%``, ``<=5%``, ``<=2%``) on ResNet-56 with the ``qlp`` searcher,
  same granularity and oracle.

Every run goes through ``hwprune.prune`` (search, fine-tuning, verification
with a fresh oracle, export) and is reported as parameter reduction and
accuracy change against the dense model, beside the figures the ICPR paper
reports on CIFAR-10. Those are the paper's numbers, quoted for orientation;
on digits the accuracies are not comparable with CIFAR-10 ones.

    python -m benchmarks.paper --data digits --device cpu --quick     # minutes, here
    python -m benchmarks.paper --data digits --device cpu             # hours on 2 cores
    python -m benchmarks.paper --data 'fashion-mnist?train=3000' --models vgg11_cifar  # hours
    python -m benchmarks.paper --only QLP --budgets "params<=5%" --no-write   # one setting
    python -m benchmarks.paper --data cifar10:/data/cifar --device cuda --train-epochs 160

``cifar10:PATH`` names a folder holding torchvision's CIFAR-10 files
(``cifar-10-batches-py``); nothing is downloaded. Dense models are trained
once and cached under ``~/.cache/hwprune/benchmarks``; run directories go to
``runs/benchmarks/paper/``. Writes ``benchmarks/results/paper.json`` and the
"paper" section of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from typing import Any

from benchmarks import _common as common
from benchmarks.quality import (
    DIGITS_BATCH,
    DIGITS_TRAIN_LR,
    RUNS_DIR,
    _slug,
    data_slug,
    needs_reselect,
    prune_row,
    reselect_rules,
)

log = logging.getLogger("benchmarks.paper")

PARAMS_ORACLE = "params=params?nonzero=1"
# The ICPR paper's CIFAR-10 figures (Malik et al., ICPR 2022), quoted, never measured here.
ICPR_VGG = "paper, CIFAR-10: 83-92.9% of parameters removed on VGG variants, comparable accuracy"
ICPR_RESNET18 = "paper, CIFAR-10: 75.09% of parameters removed, no accuracy loss"
QLP_NOTE = "paper's setting: {sparsity:.0%} sparsity (its figures are not quoted here)"


def settings(*, quick: bool) -> list[dict[str, Any]]:
    """The experiments: paper, model, width, budget, searcher, and the papers' figures to quote."""
    if quick:
        return [
            {"paper": "ICPR", "model": "vgg11_cifar", "width": 0.25, "budget": "params<=10%",
             "searcher": "ppo-lagrangian", "min_keep": 0.01, "quote": ICPR_VGG},
            {"paper": "QLP", "model": "resnet56_cifar", "width": 0.5, "budget": "params<=10%",
             "searcher": "qlp", "min_keep": 0.005, "quote": QLP_NOTE.format(sparsity=0.90)},
        ]  # fmt: skip
    out = []
    for model in ("vgg11_cifar", "vgg16_cifar", "vgg19_cifar", "resnet18_cifar"):
        quote = ICPR_RESNET18 if model.startswith("resnet") else ICPR_VGG
        out.append({"paper": "ICPR", "model": model, "width": 1.0, "budget": "params<=10%",
                    "searcher": "ppo-lagrangian", "min_keep": 0.01, "quote": quote})  # fmt: skip
    for sparsity in (0.90, 0.95, 0.98):
        keep = round((1 - sparsity) * 100)
        out.append({"paper": "QLP", "model": "resnet56_cifar", "width": 1.0,
                    "budget": f"params<={keep}%", "searcher": "qlp", "min_keep": 0.005,
                    "quote": QLP_NOTE.format(sparsity=sparsity)})  # fmt: skip
    return out


def _f(x: Any, spec: str) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return spec.format(x)


def table(rows: list[dict[str, Any]]) -> str:
    headers = ["paper", "model", "budget", "searcher", "seed", "params dense", "params kept",
               "removed", "acc. dense", "acc. pruned", "change", "budget met",
               "papers' figures (not ours)"]  # fmt: skip
    out = []
    for r in rows:
        s = r["setting"]
        model = f"{s['model']} (w{s['width']:g})"
        if not r.get("ok"):
            out.append(
                [
                    s["paper"],
                    model,
                    f"`{s['budget']}`",
                    s["searcher"],
                    r["seed"],
                    "-",
                    "-",
                    "-",
                    "-",
                    "-",
                    "-",
                    f"failed: {r.get('error', '')[:80]}",
                    s["quote"],
                ]
            )
            continue  # fmt: skip
        removed = 1 - r["params_final"] / r["params_dense"]
        out.append([
            s["paper"], model, f"`{s['budget']}`", s["searcher"], r["seed"],
            f"{r['params_dense']:,}", f"{r['params_final']:,}", f"{removed:.2%}",
            _f(r["accuracy_dense"], "{:.3f}"), _f(r["accuracy"], "{:.3f}"),
            _f(r["accuracy"] - r["accuracy_dense"], "{:+.3f}"),
            "yes" if r["all_met"] else "no", s["quote"],
        ])  # fmt: skip
    return common.markdown_table(headers, out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog=common.module_command(__file__), description=__doc__.split("\n\n")[0]
    )
    p.add_argument(
        "--data",
        default="digits",
        help="digits (built in), fashion-mnist[:PATH][?train=N] (the Debian package "
        "dataset-fashion-mnist, or a folder with its four idx files) or cifar10:PATH (a folder "
        "with cifar-10-batches-py)",
    )
    p.add_argument(
        "--device",
        default="cpu",
        choices=("cpu", "cuda"),
        help="where training, fine-tuning and accuracy run",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="one ICPR run (vgg11_cifar w0.25) and one QLP run (resnet56_cifar w0.5, "
        "90%%), 8 evaluations, short training",
    )
    p.add_argument("--seeds", nargs="+", type=int, default=[0], help="seeds (default: 0)")
    p.add_argument("--evaluations", type=int, default=None, help="per search (100; quick 8)")
    p.add_argument(
        "--train-epochs",
        type=int,
        default=None,
        help="dense training epochs (digits 20, cifar10 100; quick 5)",
    )
    p.add_argument(
        "--finetune-epochs",
        type=int,
        default=None,
        help="fine-tuning epochs of every pruned model (10; quick 1)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help=f"batch size of dense training and fine-tuning (digits {DIGITS_BATCH}, cifar10 128)",
    )
    p.add_argument(
        "--train-lr",
        type=float,
        default=None,
        help=f"peak learning rate of dense training (digits {DIGITS_TRAIN_LR:g}, cifar10 0.05)",
    )
    p.add_argument("--width", type=float, default=None, help="override every model's width")
    p.add_argument("--only", choices=("ICPR", "QLP"), default=None, help="one paper's settings")
    p.add_argument("--models", nargs="+", default=None, metavar="NAME",
                   help="only these models' settings (to run the grid piecewise)")  # fmt: skip
    p.add_argument("--budgets", nargs="+", default=None, metavar="BUDGET",
                   help="only these budgets' settings, e.g. params<=5%%")  # fmt: skip
    p.add_argument("--fresh", action="store_true", help="redo runs that finished before")
    p.add_argument("--reselect", action="store_true",
                   help="for stored runs made with an earlier final-choice rule: redo the "
                        "choice, fine-tuning, verification and export from the search history "
                        "in the run directory (the search is not repeated)")  # fmt: skip
    p.add_argument("--no-write", action="store_true", help="write no results (log only)")
    p.add_argument("--stored-only", action="store_true",
                   help="collect: tabulate the stored runs and leave out the rest instead of "
                        "running them")  # fmt: skip
    args = p.parse_args(argv)  # fmt: skip
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    from hwprune.data import parse_dataset_name

    data_name, data_path = parse_dataset_name(args.data)
    if data_name not in ("digits", "fashion-mnist", "cifar10"):
        p.error(f"--data must be digits, fashion-mnist[:PATH][?train=N] or cifar10:PATH, "
                f"got {args.data!r}")  # fmt: skip
    if data_name == "cifar10" and not data_path:
        p.error("--data cifar10 needs the folder that holds CIFAR-10: cifar10:PATH")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            p.error("--device cuda: no CUDA GPU is visible to torch here; use --device cpu")
    evaluations = args.evaluations or (8 if args.quick else 100)
    small = data_name in ("digits", "fashion-mnist")  # the CPU recipe of the quality grid
    default_epochs = 5 if args.quick else (20 if small else 100)
    train_epochs = args.train_epochs or default_epochs
    finetune_epochs = (args.finetune_epochs if args.finetune_epochs is not None
                       else 1 if args.quick else 10)  # fmt: skip
    batch_size = args.batch_size or (DIGITS_BATCH if small else 128)
    if batch_size < 1:
        p.error(f"--batch-size must be a positive integer, got {batch_size}")
    train_lr = args.train_lr or (DIGITS_TRAIN_LR if small else 0.05)
    if not train_lr > 0:
        p.error(f"--train-lr must be positive, got {train_lr}")
    plan = [
        s for s in settings(quick=args.quick)
        if args.only in (None, s["paper"])
        and (args.models is None or s["model"] in args.models)
        and (args.budgets is None or s["budget"] in args.budgets)
    ]  # fmt: skip
    if not plan:
        p.error("no setting matches --only/--models/--budgets: see the settings in this script")
    if args.width is not None:
        plan = [{**s, "width": args.width} for s in plan]

    env = common.environment()
    t0 = time.perf_counter()
    rows = []
    missing: list[dict[str, Any]] = []
    # Finished runs are stored (committed) and reused, except in quick mode: see quality.py.
    # Another dataset's runs, results and RESULTS.md section sit beside the digits ones.
    name = "paper" if args.data == "digits" else f"paper_{data_slug(args.data)}"
    store = None if args.quick or data_name == "cifar10" else common.RunRows(name)
    if args.stored_only and store is None:
        p.error("--stored-only collects stored runs; only full runs on digits or Fashion-MNIST "
                "are stored")  # fmt: skip
    for s in plan:
        for seed in args.seeds:
            tag = _slug(
                f"{s['paper']}-{s['model']}-w{s['width']:g}-{s['budget']}-{s['searcher']}-"
                f"{data_name if args.data == 'digits' else data_slug(args.data)}-s{seed}-"
                f"e{evaluations}-f{finetune_epochs}-t{train_epochs}"
                # The old default recipe (batch 128, lr 0.05) keeps the tags earlier runs have.
                + ("" if batch_size == 128 else f"-b{batch_size}")
                + ("" if train_lr == 0.05 else f"-lr{train_lr:g}")
            )
            stored = store.get(tag) if store is not None and not args.fresh else None
            again = args.reselect and not args.stored_only and needs_reselect(stored)
            if stored is not None and stored.get("ok") and not again:
                log.info("%s: %s %s seed %d stored", s["paper"], s["model"], s["budget"], seed)
                rows.append(stored)
                continue
            if args.stored_only and stored is not None:  # a stored failure
                log.info("%s: %s %s seed %d stored, failed", s["paper"], s["model"],
                         s["budget"], seed)  # fmt: skip
                rows.append(stored)
                continue
            if args.stored_only:
                log.info("%s: %s %s seed %d not stored, left out", s["paper"], s["model"],
                         s["budget"], seed)  # fmt: skip
                missing.append({**s, "seed": seed})
                continue
            log.info("%s: %s %s with %s, seed %d", s["paper"], s["model"], s["budget"],
                     s["searcher"], seed)  # fmt: skip
            row = prune_row(
                model=s["model"], width=s["width"], data=args.data, budgets=[s["budget"]],
                oracles=[PARAMS_ORACLE], searcher=s["searcher"], seed=seed,
                evaluations=evaluations, finetune_epochs=finetune_epochs,
                train_epochs=train_epochs, run_dir=RUNS_DIR / "paper" / tag,
                device=args.device, granularity="weight", min_keep=s["min_keep"],
                fresh=args.fresh or args.quick,  # a quick run checks today's code
                batch_size=batch_size, train_lr=train_lr,
                reselect_from=stored if again else None,
            )  # fmt: skip
            row["setting"] = s
            if store is not None:  # failures too: a collection shows them
                store.put(tag, row)
            rows.append(row)
    seconds = time.perf_counter() - t0
    body = table(rows)
    print(body)
    if args.no_write:
        return 0
    config = {"data": args.data, "device": args.device, "quick": args.quick, "seeds": args.seeds,
              "evaluations": evaluations, "train_epochs": train_epochs,
              "finetune_epochs": finetune_epochs, "batch_size": batch_size,
              "train_lr": train_lr}  # fmt: skip
    common.write_results(name, {"settings": config, "seconds": seconds, "runs": rows},
                  command=common.command_line(), env=env, quick=args.quick)  # fmt: skip
    notes = (
        f"Data: `{args.data}`; device: {args.device}. Weight granularity (unstructured magnitude "
        f"sparsity per layer), parameters counted as non-zeros by `params?nonzero=1` (biases and "
        f"BatchNorm included, so the weights themselves are pruned a little further than the "
        f"budget); {evaluations} evaluations per search; dense models trained {train_epochs} "
        f"epochs at batch size {batch_size} (peak learning rate {train_lr:g}, cosine); every "
        f"pruned model fine-tuned {finetune_epochs} "
        f"epoch(s) at batch size {batch_size} (learning rate 0.01, cosine) and its budget "
        "re-measured before it counts. Accuracy: test split. The last column quotes the papers' "
        "own CIFAR-10 results for orientation; they are not produced by this command, and "
        f"accuracies on `{args.data}` are not comparable with CIFAR-10 ones."
    )
    if args.quick:
        notes += "\n\n**Quick mode (small widths, few evaluations): an end-to-end check.**"
    ok = [r for r in rows if r.get("ok")]
    weak = sorted({(r["setting"]["model"], r["accuracy_dense"]) for r in ok
                   if r["accuracy_dense"] < 0.5})  # fmt: skip
    if weak:
        names = ", ".join(f"{m} ({a:.3f})" for m, a in weak)
        notes += (f"\n\n**Dense training did not converge** for {names} with this recipe "
                  f"({train_epochs} epochs): its row prunes a model that never learned the task, "
                  "and its accuracy change says nothing about pruning.")  # fmt: skip
    lost = [
        r for r in ok if r["accuracy_dense"] >= 0.5 and r["accuracy"] < r["accuracy_dense"] - 0.1
    ]
    if lost:
        which = ", ".join(
            f"{r['setting']['model']} `{r['setting']['budget']}` ({r['accuracy_pruned']:.3f} "
            f"before fine-tuning, {r['accuracy']:.3f} after)"
            for r in lost
        )
        notes += (f"\n\n**Fine-tuning did not recover** {which}: at these sparsities the "
                  f"pruned model starts near chance, and {finetune_epochs} epoch(s) on the "
                  "training split are far fewer steps than the papers' fine-tuning; these rows "
                  "show what this recipe reaches, not what the sparsity allows.")  # fmt: skip
    again = [r for r in rows if r.get("reselected")]
    if again:
        which = ", ".join(
            f"{r['setting']['model']} `{r['setting']['budget']}` "
            f"{r['accuracy_before_reselect']:.3f} -> "
            + (f"{r['accuracy']:.3f}" if r.get("ok") else "failed")
            for r in again
            if r.get("accuracy_before_reselect") is not None
        )
        before, after = reselect_rules(again)
        notes += (f"\n\n{len(again)} of {len(rows)} runs were re-selected (`--reselect`): "
                  f"searched under an earlier final-choice rule ({before}), "
                  "then chosen, fine-tuned, verified and exported again from the same search "
                  f"history under a later one ({after}). Test accuracy before -> "
                  f"after: {which}.")  # fmt: skip
    if missing:
        left = "; ".join(f"{m['paper']} {m['model']} `{m['budget']}` seed {m['seed']}"
                         for m in missing)  # fmt: skip
        notes += (f"\n\n**Not run yet, left out of this table** (collected with "
                  f"`--stored-only`): {left}.")  # fmt: skip
    title = "The seed papers' settings" + ("" if name == "paper" else f" on `{args.data}`")
    common.update_results_md(name, title, body, command=common.command_line(),
                      env=env, notes=notes, quick=args.quick)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
