"""Training, fine-tuning (optionally distilled from the dense model), accuracy, BN re-estimation.

Example::

    data = get_dataset("digits")
    model = get_model("vgg11_cifar", width=0.5)
    result = train(model, data, epochs=10)
    print(result.test_accuracy)
"""

from hwprune.train.loop import (
    DivergedError,
    EpochStats,
    TrainProgress,
    TrainResult,
    accuracy,
    finetune,
    reestimate_bn,
    resolve_device,
    train,
)

__all__ = [
    "DivergedError",
    "EpochStats",
    "TrainProgress",
    "TrainResult",
    "accuracy",
    "finetune",
    "reestimate_bn",
    "resolve_device",
    "train",
]
