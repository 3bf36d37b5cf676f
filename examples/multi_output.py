"""Prune a two-headed model (class logits and a box, returned as a dict) with its heads kept whole.

Synthetic data: one shape (circle, square, cross or ring) on a noisy image;
the model returns ``{"logits": class scores, "boxes": (cx, cy, w, h) in [0, 1]}``.
Both heads are passed as ``ignored_layers`` so Torch-Pruning never touches
them (only the backbone feeding them shrinks). The task is given as plain
callables: ``score`` (accuracy minus the mean box L1 error, written here),
``calibrate`` (a DataLoader: hwprune re-estimates BatchNorm from it),
``finetune`` (this script's training loop) and ``evaluate``.
Budgets: ``flops<=50%`` and ``latency<=70%`` on ONNX Runtime (CPU, one thread).

    python examples/multi_output.py [--tiny] [--out DIR]
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import hwprune

from _check import main_or_one_line, parse_args, report, summarize

SHAPES = ("circle", "square", "cross", "ring")


def make_data(n: int, size: int, *, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images with one shape each, its class, and its box (cx, cy, w, h) as fractions of the side."""
    g = torch.Generator().manual_seed(seed)
    images = 0.3 * torch.randn(n, 1, size, size, generator=g).repeat(1, 3, 1, 1)
    labels = torch.randint(0, len(SHAPES), (n,), generator=g)
    boxes = torch.zeros(n, 4)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    for i in range(n):
        r = int(torch.randint(size // 8, size // 3, (1,), generator=g))
        cy, cx = (int(v) for v in torch.randint(r, size - r, (2,), generator=g))
        dy, dx = yy - cy, xx - cx
        kind = SHAPES[int(labels[i])]
        if kind == "circle":
            mask = dy**2 + dx**2 <= r * r
        elif kind == "square":
            mask = (dy.abs() <= r) & (dx.abs() <= r)
        elif kind == "cross":
            mask = ((dy.abs() <= r // 3) & (dx.abs() <= r)) | (
                (dx.abs() <= r // 3) & (dy.abs() <= r)
            )
        else:
            mask = (dy**2 + dx**2 <= r * r) & (dy**2 + dx**2 >= (r * 0.6) ** 2)
        images[i][:, mask] += 1.0 + torch.rand(3, 1, generator=g)
        boxes[i] = torch.tensor([cx, cy, 2 * r + 1, 2 * r + 1]) / size
    return images, labels, boxes


class TwoHeadNet(nn.Module):
    """A conv backbone, then a class head and a box head, as named outputs."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()

        def conv(c_in: int, c_out: int, stride: int) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out),
                    nn.ReLU()]  # fmt: skip

        w = width
        self.backbone = nn.Sequential(*conv(3, w, 1), *conv(w, w, 2), *conv(w, 2 * w, 1),
                                      *conv(2 * w, 2 * w, 2), *conv(2 * w, 4 * w, 2))  # fmt: skip
        self.cls_head = nn.Sequential(nn.Linear(4 * w, 64), nn.ReLU(), nn.Linear(64, len(SHAPES)))
        self.box_head = nn.Sequential(nn.Linear(4 * w * 16, 64), nn.ReLU(), nn.Linear(64, 4))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.backbone(x)
        pooled = f.mean((2, 3))
        coarse = F.adaptive_avg_pool2d(f, 4).flatten(1)  # where the shape is: for the box
        return {"logits": self.cls_head(pooled), "boxes": self.box_head(coarse).sigmoid()}


def loss_fn(
    out: dict[str, torch.Tensor], labels: torch.Tensor, boxes: torch.Tensor
) -> torch.Tensor:
    return F.cross_entropy(out["logits"], labels) + 5.0 * F.l1_loss(out["boxes"], boxes)


def train(model: nn.Module, data: tuple, *, steps: int, lr: float, seed: int = 0) -> nn.Module:
    images, labels, boxes = data
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(images), (32,), generator=g)
        loss = loss_fn(model(images[idx]), labels[idx], boxes[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def metrics(model: nn.Module, data: tuple) -> dict[str, float]:
    """Class accuracy, mean L1 error of the box, and the score: accuracy minus box L1."""
    images, labels, boxes = data
    model.eval()
    with torch.no_grad():
        out = model(images)
    acc = (out["logits"].argmax(1) == labels).float().mean().item()
    l1 = (out["boxes"] - boxes).abs().mean().item()
    return {"accuracy": acc, "box_l1": l1, "score": acc - l1}


def fresh_net() -> TwoHeadNet:
    torch.manual_seed(0)
    return TwoHeadNet().eval()


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    out = Path(args.out or "hwprune-multi-output")
    size = 32
    n_train, n_eval = (128, 64) if args.tiny else (2048, 256)
    t0 = time.perf_counter()
    torch.set_num_threads(1)
    train_set = make_data(n_train, size, seed=0)
    val_set, test_set = make_data(n_eval, size, seed=1), make_data(n_eval, size, seed=2)
    model = fresh_net()
    train(model, train_set, steps=5 if args.tiny else 400, lr=2e-3)
    print(f"dense model: {metrics(model, test_set)} after {time.perf_counter() - t0:.0f} s")

    finetune_steps = 1 if args.tiny else 100

    def finetune(pruned: nn.Module, teacher: nn.Module) -> nn.Module:
        return train(pruned, train_set, steps=finetune_steps, lr=1e-3, seed=1)

    result = hwprune.prune(
        model,
        example_inputs=torch.randn(1, 3, size, size),
        budgets=["flops<=50%", "latency<=70%"],
        oracles={"latency": "onnxruntime:cpu?threads=1"},
        score=lambda m: metrics(m, val_set)["score"],
        calibrate=torch.utils.data.DataLoader(train_set[0][:256], batch_size=32),
        finetune=finetune,
        evaluate=lambda m: metrics(m, test_set),
        ignored_layers=[model.cls_head, model.box_head],
        agent="ppo-lagrangian",
        evaluations=4 if args.tiny else 24,
        out=out,
        overwrite=True,
    )
    pruned = result.model
    heads_whole = (
        pruned.cls_head[2].out_features == len(SHAPES)
        and pruned.cls_head[0].out_features == 64
        and pruned.box_head[0].out_features == 64
        and pruned.box_head[2].out_features == 4
    )
    print(f"heads kept whole: {heads_whole}; backbone output channels "
          f"{model.backbone[12].out_channels} -> {pruned.backbone[12].out_channels}")  # fmt: skip
    summary = summarize(
        result,
        name="multi_output",
        fresh=fresh_net,
        samples=[test_set[0][i : i + 1] for i in range(4)] + [torch.randn(1, 3, size, size)],
        batch=test_set[0][:8],
        extra={"heads_whole": heads_whole, "wall_seconds": round(time.perf_counter() - t0, 1)},
    )
    report(summary)


if __name__ == "__main__":
    main_or_one_line(main)
