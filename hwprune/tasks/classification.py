"""The built-in task of ``hwprune prune --model/--data``: image classification.

One ``Task`` among the others (``hwprune.tasks.base``): BN re-estimation on fixed training
images, a search proxy on a fixed subset of the search split, the fine-tuning recipe
(optionally distilled), test accuracy. It declares ``finetune_epochs`` and
``describe_finetune`` as any task may.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from hwprune.config import default
from hwprune.errors import ConfigError, DataError
from hwprune.progress import ProgressEvent, ProgressFn, emit

__all__ = ["BN_MIN_BATCHES", "ClassificationTask"]

#: The fewest BatchNorm batches a settling re-estimation runs (``bn_settle``): a change is
#: measured between two batches.
BN_MIN_BATCHES = 2


class ClassificationTask:
    """Today's built-in task: image classification on a ``DataSplits``.

    calibrate: BN re-estimation on ``bn_batches`` x ``bn_batch_size`` training
    images fixed by ``seed`` (with ``bn_settle``, fewer: batches until the running
    statistics settle, ``hwprune.train.loop.reestimate_bn``, at least ``BN_MIN_BATCHES``); score: the search proxy (``proxy``) on a fixed
    subset (at most ``max_eval_samples``) of the search split; finetune: SGD
    with cosine schedule for ``finetune_epochs`` (distilled from the teacher
    when ``distill``; pruned weights of a sparse run stay zero); evaluate:
    test-split accuracy.

    Proxies (``hwprune.train.proxy``), every one higher-is-better in [0, 1]:

    * ``bn``: top-1 accuracy after the BN re-estimation. A proportion over
      ``score_samples`` images, so the final choice ties accuracies within two
      standard errors (``hwprune.run.choose.rank_feasible``).
    * ``kd``: ``exp(-KL)`` of the candidate's and the dense model's (``teacher``)
      outputs softened by ``temperature`` (``agreement``): continuous, so it
      still orders candidates whose accuracy is at chance. ``score_samples`` is
      0: a continuous score is ranked as measured, with no binomial tie band
      (every candidate is scored on the same images, so their differences are
      not sampling noise of the kind a proportion has).
    * ``recover:STEPS``: ``kd`` after STEPS SGD steps on a copy (batch
      ``recover_batch_size``, fixed training batches, 0.5 CE + 0.5 KD).

    The dense model's outputs are computed once, on the first kd/recover score.
    """

    def __init__(
        self,
        data: Any,
        *,
        device: str = "cpu",
        seed: int = 0,
        bn_batches: int = 4,
        bn_batch_size: int = 64,
        eval_batch_size: int = 256,
        max_eval_samples: int | None = 2000,
        finetune_epochs: int = 0,
        finetune_lr: float = default("finetune_lr"),
        finetune_batch_size: int = default("finetune_batch_size"),
        distill: bool = False,
        keep_zeros: bool = False,
        proxy: str = default("proxy"),
        teacher: Any = None,
        temperature: float = 4.0,
        recover_batch_size: int = 32,
        progress: ProgressFn | None = None,
        bn_settle: float | None = None,
    ) -> None:
        import torch

        from hwprune.config import parse_proxy

        self.proxy_spec = parse_proxy(proxy)
        self.proxy = str(self.proxy_spec)
        if self.proxy_spec.kind != "bn" and teacher is None:
            raise ConfigError(
                f"the {self.proxy} proxy compares candidates with the dense model; pass teacher="
            )
        if not temperature > 0:
            raise ConfigError(f"temperature must be positive, got {temperature!r}")
        self.teacher = teacher
        self.temperature = float(temperature)
        self.recover_batch_size = int(recover_batch_size)
        self._fixed: dict[str, Any] = {}
        self.data = data
        self.device = device
        self.seed = int(seed)
        self.bn_batches = bn_batches
        self.bn_batch_size = bn_batch_size
        if bn_settle is not None and not (isinstance(bn_settle, (int, float)) and bn_settle > 0):
            raise ConfigError(
                f"bn_settle must be a positive fraction such as 0.05, got {bn_settle!r}"
            )
        self.bn_settle = None if bn_settle is None else float(bn_settle)
        self.eval_batch_size = eval_batch_size
        self.finetune_epochs = int(finetune_epochs)
        self.finetune_lr = float(finetune_lr)
        self.finetune_batch_size = int(finetune_batch_size)
        self.distill = bool(distill)
        self.keep_zeros = bool(keep_zeros)
        self.proxy = proxy
        self.progress = progress
        # Fixed calibration and proxy sets: the same images for every candidate.
        g = torch.Generator().manual_seed(self.seed)
        n_train = len(data.train)
        n_bn = min(n_train, bn_batches * bn_batch_size)
        self._bn_indices = torch.randperm(n_train, generator=g)[:n_bn].tolist()
        n_search = len(data.search)
        n_eval = n_search if max_eval_samples is None else min(n_search, max_eval_samples)
        self._eval_indices = torch.randperm(n_search, generator=g)[:n_eval].tolist()

    def __getstate__(self) -> dict[str, Any]:
        # A task sent to worker processes (hwprune.evaluate.parallel) leaves its progress
        # callback behind: it reports to the main process's display.
        return {**self.__dict__, "progress": None}

    @property
    def score_samples(self) -> int:
        """How many search-split images the bn accuracy is a proportion over; 0 for the
        continuous kd/recover scores (ranked as measured)."""
        return len(self._eval_indices) if self.proxy_spec.kind == "bn" else 0

    def _labels(self, split: str) -> list[int]:
        """The labels of the proxy's (``search``) or the calibration's (``train``) fixed images,
        read once: a user's image folder decodes an image to give its label."""
        if split not in self._fixed:
            dataset, indices = (
                (self.data.search, self._eval_indices)
                if split == "search"
                else (self.data.train, self._bn_indices)
            )
            self._fixed[split] = [int(dataset[i][1]) for i in indices]
        return self._fixed[split]

    @property
    def score_chance(self) -> float | None:
        """The bn accuracy of a model that knows nothing: the largest class's share of the
        proxy's images (a model that always answers that class). None for kd/recover, whose
        continuous scores still order candidates at chance."""
        if self.proxy_spec.kind != "bn" or not self._eval_indices:
            return None
        from collections import Counter

        labels = Counter(self._labels("search"))  # read once (``_labels``)
        return max(labels.values()) / len(self._eval_indices)

    @property
    def score_key(self) -> str:
        """What a score measures: the proxy, its images, the data and the seed. A logged score
        is reused only under the same key, so runs with other settings never mix.

        The data part is the dataset's name, split sizes, input shape and a digest of the
        proxy's images (their labels, the first image of each fixed set), which tells apart
        splits drawn with another seed or from another subset of the same dataset."""
        if "key" not in self._fixed:
            self._fixed["key"] = self._score_key()
        return self._fixed["key"]

    def _score_key(self) -> str:
        import hashlib

        import torch

        d = self.data
        digest = hashlib.sha256()
        for split, dataset, indices in (("search", d.search, self._eval_indices),
                                        ("train", d.train, self._bn_indices)):  # fmt: skip
            labels = self._labels(split)
            digest.update(torch.tensor(labels, dtype=torch.int64).numpy().tobytes())
            if indices:
                digest.update(dataset[indices[0]][0].float().numpy().tobytes())
        sizes = "/".join(str(n) for n in d.sizes().values())
        shape = "x".join(str(n) for n in d.input_shape)
        proxy = (
            self.proxy if self.proxy_spec.kind == "bn" else f"{self.proxy} T={self.temperature:g}"
        )
        if self.proxy_spec.kind == "recover":
            proxy += f" batch {self.recover_batch_size}"
        if self.bn_settle is not None:  # fewer calibration images: another score
            proxy += f" bn settle {self.bn_settle:g}"
        return (f"{proxy} on {len(self._eval_indices)} search images; data {d.name} "
                f"{sizes} {shape} {digest.hexdigest()[:16]}; seed {self.seed}")  # fmt: skip

    def calibrate(self, model: Any) -> None:
        import torch

        from hwprune.train import reestimate_bn

        asked = len(self._bn_indices)
        seen = reestimate_bn(
            model.to(self.device),
            torch.utils.data.Subset(self.data.train, self._bn_indices),
            batches=self.bn_batches,
            batch_size=self.bn_batch_size,
            device=self.device,
            settle=self.bn_settle,
            min_batches=BN_MIN_BATCHES,
        )
        if self.bn_settle is not None:  # settled early by design: short only below the minimum
            asked = min(asked, BN_MIN_BATCHES * self.bn_batch_size)
        if 0 < seen < asked:  # 0: the model has no BatchNorm
            raise DataError(
                f"BatchNorm re-estimation saw {seen} of the {asked} training images it was asked "
                f"to run ({self.bn_batches} batches of {self.bn_batch_size}); the training split "
                f"of {self.data.name} yielded fewer"
            )

    def score(self, model: Any) -> float:
        """The proxy of a calibrated candidate (see the class docstring); higher is better."""
        import torch

        from hwprune.train import accuracy

        if self.proxy_spec.kind == "bn":
            return float(
                accuracy(
                    model.to(self.device),
                    torch.utils.data.Subset(self.data.search, self._eval_indices),
                    device=self.device,
                    batch_size=self.eval_batch_size,
                )
            )
        from hwprune.train.proxy import agreement, kd_proxy, recover_proxy

        common = {"calib": None, "reference": self._reference(), "temperature": self.temperature,
                  "batch_size": self.eval_batch_size, "device": self.device,
                  "seed": self.seed}  # fmt: skip
        if self.proxy_spec.kind == "kd":
            result = kd_proxy(model, **common)
        else:
            result = recover_proxy(model, batches=self._distill_batches(), **common)
        return agreement(float(result.kd_loss), temperature=self.temperature)

    def score_stream(self, model: Any) -> Iterator[tuple[float, int]]:
        """The bn accuracy on growing prefixes of the proxy's images (``look_sizes``: 128, 256,
        ... then all), with each prefix's size: what a race (``hwprune.evaluate.racing``) stops
        early. The last value is ``score``'s, on the same images."""
        import torch

        from hwprune.evaluate.racing import look_sizes
        from hwprune.train import accuracy

        model = model.to(self.device)
        correct, start = 0, 0
        for end in look_sizes(len(self._eval_indices)):
            part = torch.utils.data.Subset(self.data.search, self._eval_indices[start:end])
            share = accuracy(model, part, device=self.device, batch_size=self.eval_batch_size)
            correct += round(share * (end - start))
            start = end
            yield correct / end, end

    def _reference(self) -> Any:
        """The dense model's outputs on the proxy images (once per task)."""
        if "reference" not in self._fixed:
            import torch

            from hwprune.train.proxy import reference_outputs

            images = torch.utils.data.Subset(self.data.search, self._eval_indices)
            self._fixed["reference"] = reference_outputs(
                self.teacher, images, batch_size=self.eval_batch_size, device=self.device
            )
        return self._fixed["reference"]

    def _distill_batches(self) -> Any:
        """recover's fixed training batches with the dense model's outputs (once per task)."""
        if "batches" not in self._fixed:
            from hwprune.train.proxy import distill_batches

            self._fixed["batches"] = distill_batches(
                self.teacher, self.data.train, steps=self.proxy_spec.steps,
                batch_size=self.recover_batch_size, seed=self.seed, device=self.device,
            )  # fmt: skip
        return self._fixed["batches"]

    def evaluate(self, model: Any) -> dict[str, float]:
        from hwprune.train import accuracy

        return {
            "accuracy": float(accuracy(model.to(self.device), self.data.test, device=self.device))
        }

    def finetune(self, model: Any, teacher: Any) -> Any:
        """The fine-tuning recipe, in place; returns ``model``."""
        from hwprune.train import finetune

        if self.finetune_epochs <= 0:
            return model
        epochs = self.finetune_epochs

        def on_step(p: Any) -> None:
            if p.epoch_done:
                info = {"search_accuracy": p.search_accuracy, "loss": p.loss}
                emit(self.progress, ProgressEvent("finetune", p.epoch, epochs, info=info))

        hooks = self._keep_zero_hooks(model) if self.keep_zeros else []
        try:
            finetune(
                model,
                self.data,
                epochs=epochs,
                lr=self.finetune_lr,
                batch_size=self.finetune_batch_size,
                teacher=teacher if self.distill else None,
                device=self.device,
                seed=self.seed,
                progress=on_step if self.progress is not None else None,
            )
        finally:
            for h in hooks:
                h.remove()
        return model

    @staticmethod
    def _keep_zero_hooks(model: Any) -> list[Any]:
        """Sparse runs: pruned weights must stay zero, or fine-tuning refills them. A zero
        gradient keeps them zero under SGD, momentum and weight decay (w * wd = 0)."""
        import torch

        hooks = []
        for m in model.modules():
            if isinstance(m, (torch.nn.modules.conv._ConvNd, torch.nn.Linear)):
                keep = (m.weight.detach() != 0).to(m.weight.dtype)
                hooks.append(m.weight.register_hook(lambda g, keep=keep: g * keep.to(g.device)))
        return hooks

    def describe_finetune(self) -> str:
        """The recipe in words, for the report."""
        if self.finetune_epochs <= 0:
            return "Fine-tuning: none (0 epochs)."
        return (
            f"Fine-tuning: {self.finetune_epochs} epoch(s), SGD at peak learning rate "
            f"{self.finetune_lr:g} with a cosine schedule, batch size {self.finetune_batch_size}"
            + (", distilled from the dense model." if self.distill else ".")
        )
