"""``hwprune train``: train a model on a dataset and save a checkpoint.

Train a model (e.g. vgg11_cifar, resnet56_cifar, a torchvision name, or package.module:callable)
on a dataset (digits, fashion-mnist[:PATH][?train=N], cifar10[:PATH], cifar100[:PATH],
imagefolder:PATH) and save {'state_dict', 'meta'} to --out.
"""

from __future__ import annotations

import argparse
import json

from hwprune.cli._options import add_command, add_output_options, bounded_int, shows_progress
from hwprune.config import MAX_BATCH_SIZE, MAX_EPOCHS, SEED_RANGE


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = add_command(subparsers, "train", __doc__, run=run)
    p.add_argument("--model", required=True, help="model name, e.g. vgg11_cifar")
    p.add_argument("--data", required=True, help="dataset name, e.g. digits or cifar10:/data/cifar")
    p.add_argument("--epochs", type=int, required=True, help="number of training epochs")
    p.add_argument("--out", required=True, help="checkpoint file to write (.pt)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--width", type=float, default=1.0, help="channel multiplier for *_cifar models")
    p.add_argument("--num-classes", type=int, default=None, help="default: the dataset's classes")
    p.add_argument("--input-size", type=int, default=None, help="image side (default per dataset)")
    p.add_argument("--lr", type=float, default=0.05, help="peak learning rate (default 0.05)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--label-smoothing", type=float, default=0.0)
    p.add_argument("--seed", type=bounded_int(*SEED_RANGE), default=0,
                   help="seed for initialisation and shuffling")  # fmt: skip
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--root", default=None, help="dataset root folder (for cifar10/cifar100)")
    p.add_argument("--download", action="store_true", help="download the dataset if missing")
    add_output_options(p, json_help="print the result as JSON")


def _check_options(args: argparse.Namespace) -> None:
    """Every numeric option in range, before any data is loaded (one line each)."""
    import math

    from hwprune.errors import ConfigError

    checks = [
        ("--epochs", args.epochs, 1 <= args.epochs <= MAX_EPOCHS,
         f"a whole number from 1 to {MAX_EPOCHS}"),
        ("--batch-size", args.batch_size, 1 <= args.batch_size <= MAX_BATCH_SIZE,
         f"a whole number from 1 to {MAX_BATCH_SIZE}"),
        ("--num-classes", args.num_classes, args.num_classes is None or args.num_classes >= 2,
         "an integer >= 2 (a classifier needs two classes)"),
        ("--lr", args.lr, math.isfinite(args.lr) and args.lr > 0, "a finite number > 0"),
        ("--weight-decay", args.weight_decay,
         math.isfinite(args.weight_decay) and args.weight_decay >= 0, "a finite number >= 0"),
        ("--label-smoothing", args.label_smoothing, 0 <= args.label_smoothing < 1,
         "a number in [0, 1)"),
        ("--width", args.width, math.isfinite(args.width) and 0 < args.width <= 16,
         "a number in (0, 16]"),
    ]  # fmt: skip
    for flag, value, ok, accepted in checks:
        if not ok:
            raise ConfigError(f"{flag} must be {accepted}, got {value}")


def run(args: argparse.Namespace) -> int:
    import torch

    from hwprune.cli._console import console
    from hwprune.data import get_dataset
    from hwprune.errors import ConfigError
    from hwprune.models import get_model, save_checkpoint
    from hwprune.outputs import check_file, check_home
    from hwprune.train import resolve_device, train

    _check_options(args)
    # Where it writes, before any data is loaded or an epoch trained (hwprune.outputs).
    check_file(args.out, option="--out", overwrite=args.overwrite, example="model.pt")
    if args.download and args.root is None:
        check_home()  # datasets download into hwprune's own folder
    resolve_device(args.device)  # fail before loading data
    data = get_dataset(
        args.data, root=args.root, download=args.download, seed=0, input_size=args.input_size
    )
    num_classes = args.num_classes if args.num_classes is not None else data.num_classes
    if num_classes < data.num_classes:
        raise ConfigError(
            f"--num-classes {num_classes} is fewer than the {data.num_classes} classes of {data.name}"
        )
    torch.manual_seed(args.seed)
    model = get_model(args.model, num_classes=num_classes, width=args.width,
                      input_size=data.input_shape[-1])  # fmt: skip
    params = sum(p.numel() for p in model.parameters())
    if not args.json:
        sizes = data.sizes()
        console.print(
            f"[bold]{args.model}[/] ({params / 1e6:.3f}M parameters) on [bold]{data.name}[/] "
            f"(train {sizes['train']}, search {sizes['search']}, test {sizes['test']}), "
            f"{args.epochs} epochs on {args.device} with {torch.get_num_threads()} threads",
            highlight=False,
        )

    kwargs = dict(
        epochs=args.epochs, lr=args.lr, weight_decay=args.weight_decay,
        label_smoothing=args.label_smoothing, batch_size=args.batch_size, device=args.device,
        seed=args.seed,
    )  # fmt: skip
    from hwprune.cli._progress import shown_progress, train_progress

    with shown_progress(show=shows_progress(args)) as view:
        result = train(model, data, progress=train_progress(view), **kwargs)

    meta = {
        "model": args.model,
        "num_classes": num_classes,
        "width": args.width,
        "input_size": data.input_shape[-1],
        "dataset": data.name,
        "accuracy": result.test_accuracy,
        "search_accuracy": result.search_accuracy,
        "epochs": args.epochs,
        "seed": args.seed,
        "lr": args.lr,
        "batch_size": args.batch_size,
    }
    path = save_checkpoint(model, args.out, meta=meta)
    if args.json:
        print(json.dumps({"checkpoint": str(path), "meta": meta, "result": result.to_dict()}))
    else:
        console.print(
            f"test accuracy [bold]{100 * result.test_accuracy:.2f}%[/] "
            f"(search split {100 * result.search_accuracy:.2f}%) after {args.epochs} epochs "
            f"in {result.seconds:.1f} s",
            highlight=False,
        )
        console.print(f"checkpoint: {path}", highlight=False, soft_wrap=True)
    return 0
