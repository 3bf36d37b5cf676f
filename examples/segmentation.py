"""Prune your own segmentation network to a latency budget on ONNX Runtime (CPU, one thread).

A small U-Net (encoder, decoder, skip connections, BatchNorm) is trained for a
few seconds on synthetic images: circles and squares on noise, with per-pixel
class masks (0 background, 1 circle, 2 square). hwprune searches for the
smallest loss of mIoU at ``latency<=60%`` of the dense model; the task is a
small class: ``calibrate`` re-estimates BatchNorm, ``score`` is mIoU (written
here), ``finetune`` is this script's own training loop, ``evaluate`` reports
mIoU and pixel accuracy.

    python examples/segmentation.py [--tiny] [--out DIR]
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import hwprune
from hwprune.tasks import reestimate_bn_on

from _check import main_or_one_line, parse_args, report, summarize

NUM_CLASSES = 3  # background, circle, square


def make_shapes(n: int, size: int, *, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` noisy RGB images with 1-3 circles/squares each, and their per-pixel class masks."""
    g = torch.Generator().manual_seed(seed)
    images = 0.3 * torch.randn(n, 3, size, size, generator=g)
    masks = torch.zeros(n, size, size, dtype=torch.long)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    for i in range(n):
        for _ in range(int(torch.randint(1, 4, (1,), generator=g))):
            cls = int(torch.randint(1, NUM_CLASSES, (1,), generator=g))
            r = int(torch.randint(size // 10, size // 4, (1,), generator=g))
            cy, cx = (int(v) for v in torch.randint(r, size - r, (2,), generator=g))
            if cls == 1:
                shape = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            else:
                shape = ((yy - cy).abs() <= r) & ((xx - cx).abs() <= r)
            color = torch.rand(3, generator=g) * 2 - 1  # the colour says nothing of the class
            images[i][:, shape] += color[:, None]
            masks[i][shape] = cls
    return images, masks


def block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
    )  # fmt: skip


class UNet(nn.Module):
    """Two downsamplings, a bottleneck, two upsamplings, each joined to its encoder level."""

    def __init__(self, width: int = 16, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        w = width
        self.enc1, self.enc2, self.mid = block(3, w), block(w, 2 * w), block(2 * w, 4 * w)
        self.dec2, self.dec1 = block(4 * w + 2 * w, 2 * w), block(2 * w + w, w)
        self.head = nn.Conv2d(w, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        m = self.mid(F.max_pool2d(e2, 2))
        d2 = self.dec2(torch.cat([F.interpolate(m, scale_factor=2.0, mode="nearest"), e2], 1))
        d1 = self.dec1(torch.cat([F.interpolate(d2, scale_factor=2.0, mode="nearest"), e1], 1))
        return self.head(d1)


def miou(model: nn.Module, images: torch.Tensor, masks: torch.Tensor) -> tuple[float, float]:
    """Mean intersection-over-union over the classes present, and pixel accuracy."""
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(images[i : i + 64]).argmax(1) for i in range(0, len(images), 64)])
    ious = []
    for c in range(NUM_CLASSES):
        inter = ((pred == c) & (masks == c)).sum().item()
        union = ((pred == c) | (masks == c)).sum().item()
        if union:
            ious.append(inter / union)
    return sum(ious) / len(ious), (pred == masks).float().mean().item()


def train(model: nn.Module, images: torch.Tensor, masks: torch.Tensor, *, steps: int,
          lr: float, teacher: nn.Module | None = None, seed: int = 0) -> nn.Module:  # fmt: skip
    """Adam on cross-entropy (plus the teacher's soft masks when given), batches of 32."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(images), (32,), generator=g)
        logits = model(images[idx])
        loss = F.cross_entropy(logits, masks[idx])
        if teacher is not None:
            with torch.no_grad():
                soft = teacher(images[idx]).softmax(1)
            loss = loss + F.kl_div(logits.log_softmax(1), soft, reduction="batchmean") / (
                logits.shape[-1] * logits.shape[-2]
            )
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


class SegmentationTask:
    """What hwprune needs from this world: BN calibration, mIoU, our training loop, the metrics."""

    def __init__(self, data: dict[str, tuple[torch.Tensor, torch.Tensor]], *, finetune_steps: int):
        self.train_x, self.train_y = data["train"]
        self.val_x, self.val_y = data["val"]
        self.test_x, self.test_y = data["test"]
        self.finetune_steps = finetune_steps
        self.loader = torch.utils.data.DataLoader(self.train_x[:256], batch_size=32)

    def calibrate(self, model: nn.Module) -> None:
        reestimate_bn_on(model, self.loader, batches=8)

    def score(self, model: nn.Module) -> float:
        return miou(model, self.val_x, self.val_y)[0]

    def finetune(self, model: nn.Module, teacher: nn.Module) -> nn.Module:
        return train(model, self.train_x, self.train_y, steps=self.finetune_steps, lr=1e-3,
                     teacher=teacher, seed=1)  # fmt: skip

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        m, acc = miou(model, self.test_x, self.test_y)
        return {"miou": m, "pixel_accuracy": acc}


def fresh_unet() -> UNet:
    torch.manual_seed(0)
    return UNet().eval()


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    out = Path(args.out or "hwprune-segmentation")
    size = 32 if args.tiny else 48
    n_train, n_eval = (128, 32) if args.tiny else (1024, 128)
    t0 = time.perf_counter()
    torch.set_num_threads(1)
    data = {
        "train": make_shapes(n_train, size, seed=0),
        "val": make_shapes(n_eval, size, seed=1),
        "test": make_shapes(n_eval, size, seed=2),
    }
    model = fresh_unet()
    train(model, *data["train"], steps=5 if args.tiny else 250, lr=3e-3)
    task = SegmentationTask(data, finetune_steps=1 if args.tiny else 60)
    print(f"dense U-Net: test mIoU {task.evaluate(model)['miou']:.3f} "
          f"after {time.perf_counter() - t0:.0f} s of data and training")  # fmt: skip

    result = hwprune.prune(
        model,
        example_inputs=torch.randn(1, 3, size, size),
        budgets=["latency<=60%"],
        oracles={"latency": "onnxruntime:cpu?threads=1"},
        task=task,
        agent="ppo-lagrangian",
        evaluations=4 if args.tiny else 24,
        out=out,
        overwrite=True,
    )
    summary = summarize(
        result,
        name="segmentation",
        fresh=fresh_unet,
        samples=[data["test"][0][i : i + 1] for i in range(4)] + [torch.randn(1, 3, size, size)],
        batch=data["test"][0][:8],
        extra={"wall_seconds": round(time.perf_counter() - t0, 1)},
    )
    m = result.metrics
    if m:
        print(f"test mIoU: dense {m['dense']['miou']:.3f}, pruned {m['pruned']['miou']:.3f}, "
              f"fine-tuned {m['final']['miou']:.3f}")  # fmt: skip
    report(summary)


if __name__ == "__main__":
    main_or_one_line(main)
