"""Prune whole attention heads and MLP width of a vision transformer to a latency budget.

torchvision's ``VisionTransformer`` class at a small configuration (32x32
images, 4x4 patches, 4 layers of 4 heads, hidden size 64, MLP 128) is trained
briefly on hwprune's built-in digits set, then pruned to ``latency<=70%`` of
the dense model on ONNX Runtime (CPU, one thread). ``num_heads`` tells
Torch-Pruning to remove whole heads (the head size stays 16; the hidden size
shrinks by whole heads) instead of shrinking every head alike; the MLP's
width is pruned freely. The classifier is found and kept whole by hwprune.
The task here is a small class with no ``calibrate`` (no BatchNorm to
re-estimate): ``score`` is accuracy on the search split, ``finetune`` a few
steps of this script's loop, ``evaluate`` test accuracy.

    python examples/vit.py [--tiny] [--out DIR]
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import VisionTransformer

import hwprune
from hwprune.data import get_dataset

from _check import main_or_one_line, parse_args, report, summarize


def fresh_vit() -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(
        image_size=32, patch_size=4, num_layers=4, num_heads=4, hidden_dim=64, mlp_dim=128,
        num_classes=10,
    ).eval()  # fmt: skip


def tensors(dataset: torch.utils.data.Dataset, limit: int) -> tuple[torch.Tensor, torch.Tensor]:
    n = min(limit, len(dataset))
    xs, ys = zip(*(dataset[i] for i in range(n)), strict=True)
    return torch.stack(xs), torch.as_tensor(ys)


def train(model: nn.Module, data: tuple, *, steps: int, lr: float, seed: int = 0) -> nn.Module:
    images, labels = data
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 1))
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(images), (64,), generator=g)
        loss = F.cross_entropy(model(images[idx]), labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


def accuracy(model: nn.Module, data: tuple) -> float:
    images, labels = data
    model.eval()
    with torch.no_grad():
        return (model(images).argmax(1) == labels).float().mean().item()


class DigitsTask:
    """score: search-split accuracy; finetune: our loop; evaluate: test accuracy. No calibrate."""

    def __init__(self, train_set: tuple, search_set: tuple, test_set: tuple, *, steps: int):
        self.train_set, self.search_set, self.test_set = train_set, search_set, test_set
        self.steps = steps

    def score(self, model: nn.Module) -> float:
        return accuracy(model, self.search_set)

    def finetune(self, model: nn.Module, teacher: nn.Module) -> nn.Module:
        return train(model, self.train_set, steps=self.steps, lr=1e-3, seed=1)

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        return {"accuracy": accuracy(model, self.test_set)}


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    out = Path(args.out or "hwprune-vit")
    t0 = time.perf_counter()
    torch.set_num_threads(1)
    data = get_dataset("digits", seed=0)
    limit = 128 if args.tiny else 10_000
    train_set, search_set = tensors(data.train, limit), tensors(data.search, limit)
    test_set = tensors(data.test, limit)
    model = fresh_vit()
    train(model, train_set, steps=5 if args.tiny else 300, lr=2e-3)
    print(f"dense ViT: test accuracy {accuracy(model, test_set):.3f} "
          f"after {time.perf_counter() - t0:.0f} s")  # fmt: skip

    attention = [m for m in model.modules() if isinstance(m, nn.MultiheadAttention)]
    result = hwprune.prune(
        model,
        example_inputs=torch.randn(1, 3, 32, 32),
        budgets=["latency<=70%"],
        oracles={"latency": "onnxruntime:cpu?threads=1"},
        task=DigitsTask(train_set, search_set, test_set, steps=1 if args.tiny else 100),
        num_heads={m: m.num_heads for m in attention},
        agent="ppo-lagrangian",
        evaluations=4 if args.tiny else 24,
        out=out,
        overwrite=True,
    )
    vit = result.model
    layers = [
        {
            "heads": b.self_attention.num_heads,
            "head_dim": b.self_attention.head_dim,
            "mlp": b.mlp[0].out_features,
        }  # fmt: skip
        for b in vit.encoder.layers
    ]
    latency = next(b for b in result.budgets if b.quantity == "latency")
    print(f"pruned ViT: hidden {vit.hidden_dim} (dense 64); per layer {layers}")
    print(f"latency on {latency.oracle} (threads=1): dense {latency.dense:.4g} ms, "
          f"final {latency.final:.4g} ms ({latency.final / latency.dense:.0%} of dense)")  # fmt: skip
    summary = summarize(
        result,
        name="vit",
        fresh=fresh_vit,
        samples=[test_set[0][i : i + 1] for i in range(4)] + [torch.randn(1, 3, 32, 32)],
        batch=test_set[0][:8],
        extra={
            "latency_ms": {"dense": latency.dense, "final": latency.final},
            "latency_lower_than_dense": latency.final < latency.dense,
            "hidden_dim": vit.hidden_dim,
            "layers": layers,
            "wall_seconds": round(time.perf_counter() - t0, 1),
        },
    )
    report(summary)


if __name__ == "__main__":
    main_or_one_line(main)
