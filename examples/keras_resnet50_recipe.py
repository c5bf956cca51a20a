"""The seed tutorial's Keras ResNet50 recipe, reproduced with freezeflow on torchvision's ResNet50.

The Keras listing this reproduces::

    base_model = ResNet50(weights="imagenet", include_top=False, input_shape=(32, 32, 3))
    for layer in base_model.layers:
        layer.trainable = False
    model = models.Sequential([base_model, layers.GlobalAveragePooling2D(),
                               layers.Dense(128, activation="relu"), layers.Dropout(0.5),
                               layers.Dense(10, activation="softmax")])
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=5, batch_size=64, validation_data=(x_test, y_test))
    for layer in base_model.layers[-10:]:
        layer.trainable = True
    model.compile(optimizer=tf.keras.optimizers.Adam(learning_rate=1e-5), ...)
    model.fit(x_train, y_train, epochs=10, batch_size=64, validation_data=(x_test, y_test))

What maps to what:

- ``include_top=False`` + ``GlobalAveragePooling2D`` + the new layers: torchvision's ResNet50
  already ends in global average pooling, so ``ff.replace_head(model, 10, hidden=128,
  dropout=0.5)`` gives the same head (``softmax`` + ``categorical_crossentropy`` on one-hot
  labels is ``cross_entropy`` on logits and class indices).
- ``base_model.layers[-10:]``: Keras counts layers without weights too (ReLU, Add...); the
  last 10 are ``conv5_block3``'s ``1_conv, 1_bn, 1_relu, 2_conv, 2_bn, 2_relu, 3_conv, 3_bn,
  add, out``, of which 6 have weights. ``ff.layers(-6, among=~ff.name("fc"))`` selects those
  6: ``layer4.2``'s ``conv1, bn1, conv2, bn2, conv3, bn3``.
- Keras' ``trainable = False`` on a BatchNormalization layer also makes it run in inference
  mode; the unfreezer's ``norm="eval"`` (the default) does the same: frozen BatchNorm layers
  keep their statistics, and the three unfrozen ones in ``layer4.2`` train.
- ``compile`` again builds a fresh optimizer: the schedule's second stage resets the
  optimizer state (``reset_state=True``), and trains everything trainable at 1e-5.
- ``"adam"``: ``torch.optim.Adam`` at 1e-3 with Keras' default epsilon (1e-7), no weight decay.

By default it runs offline in seconds: random weights (``--weights imagenet`` downloads the
ImageNet ones), 192 training and 64 test images of the shipped CIFAR-10 subset at the
seed's 32 px, one epoch per stage. That exercises the code, not the accuracy; ``--full``
gives the seed's 5 + 10 epochs on all 7,000 images of the subset.

    python examples/keras_resnet50_recipe.py
    python examples/keras_resnet50_recipe.py --weights imagenet --full
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from typing import Any

import torch
import torchvision
from common import load_cifar10_subset
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import freezeflow as ff


def keras_model(weights: str | None = None) -> nn.Module:
    """torchvision's ResNet50 with the seed's Keras head (GAP is ResNet50's own avgpool)."""
    if weights == "imagenet":
        model = torchvision.models.resnet50(
            weights=torchvision.models.ResNet50_Weights.IMAGENET1K_V1
        )
    elif weights is None:
        model = torchvision.models.resnet50(weights=None)
    else:
        raise ValueError(f"weights must be None or 'imagenet', got {weights!r}")
    ff.replace_head(model, 10, hidden=128, dropout=0.5)
    return model


def keras_schedule(head_epochs: int = 5) -> ff.Schedule:
    """Head at 1e-3 for ``head_epochs``, then ``base_model.layers[-10:]`` at 1e-5 with a
    fresh optimizer (layer4.2's conv1, bn1, conv2, bn2, conv3, bn3)."""
    return ff.presets.two_stage(
        "fc",
        ff.layers(-6, among=~ff.name("fc")),
        head_epochs=head_epochs,
        lr=1e-5,
        reset_state=True,
    )


def keras_adam(groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    """Keras' ``Adam``: betas (0.9, 0.999), epsilon 1e-7, no weight decay."""
    return torch.optim.Adam(groups, eps=1e-7)


def bn_running_stats(model: nn.Module) -> dict[str, torch.Tensor]:
    return {
        f"{name}.{buf}": getattr(m, buf).detach().cpu().clone()
        for name, m in model.named_modules()
        if isinstance(m, nn.BatchNorm2d)
        for buf in ("running_mean", "running_var")
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", choices=["none", "imagenet"], default="none")
    p.add_argument("--image-size", type=int, default=32, help="the seed's 32 px by default")
    p.add_argument("--head-epochs", type=int, default=1, help="the seed's is 5")
    p.add_argument("--finetune-epochs", type=int, default=1, help="the seed's is 10")
    p.add_argument("--train-limit", type=int, default=192, help="0: all 5,000")
    p.add_argument("--test-limit", type=int, default=64, help="0: all 2,000")
    p.add_argument("--batch-size", type=int, default=64, help="the seed's 64")
    p.add_argument(
        "--full",
        action="store_true",
        help="the seed's 5 + 10 epochs on the whole subset (overrides epochs and limits)",
    )
    args = p.parse_args(argv)
    if args.full:
        args.head_epochs, args.finetune_epochs, args.train_limit, args.test_limit = 5, 10, 0, 0
    return args


def main(argv: Sequence[str] | None = None) -> ff.History:
    args = parse_args(argv)
    started = time.perf_counter()
    torch.manual_seed(0)
    (x_train, y_train), (x_test, y_test) = load_cifar10_subset(
        args.image_size,
        train_limit=args.train_limit or None,
        test_limit=args.test_limit or None,
        normalize="imagenet",  # torchvision's weights expect it (the seed's Keras code: x / 255)
    )
    train = DataLoader(
        TensorDataset(x_train, y_train),
        batch_size=args.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(0),
    )
    test = DataLoader(TensorDataset(x_test, y_test), batch_size=args.batch_size)
    kind = "ImageNet" if args.weights == "imagenet" else "random"
    print(
        f"ResNet50 ({kind} weights), {len(x_train):,} training and {len(x_test):,} test "
        f"images at {args.image_size} px, epochs {args.head_epochs} + {args.finetune_epochs}"
    )

    model = keras_model(None if args.weights == "none" else args.weights)
    schedule = keras_schedule(args.head_epochs)
    print(ff.plan(model, schedule))
    before = bn_running_stats(model)

    ff.training.seed_everything(0)
    history = ff.fit(
        model,
        train,
        val_data=test,
        schedule=schedule,
        optimizer=keras_adam,
        epochs=args.head_epochs + args.finetune_epochs,
        callbacks=[ff.callbacks.ProgressBar(tqdm=False)],
    )

    print(ff.summary(model))
    backbone = [n for n, p in model.named_parameters() if p.requires_grad and n[:3] != "fc."]
    print(f"trainable in the backbone after stage 'finetune': {', '.join(backbone)}")
    model.train()
    training_bn = [
        n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d) and m.training
    ]
    print(f"BatchNorm layers in training mode after model.train(): {', '.join(training_bn)}")
    after = bn_running_stats(model)
    frozen_drift = max(
        (after[k] - v).abs().max().item()
        for k, v in before.items()
        if not k.startswith("layer4.2.")
    )
    print(f"max change of the frozen BatchNorm layers' running statistics: {frozen_drift:.6g}")
    last = history.epochs[-1]
    print(
        f"final test loss {last['val_loss']:.4f}, accuracy {last['metrics']['val_accuracy']:.3f} "
        f"({time.perf_counter() - started:.1f} s)"
    )
    return history


if __name__ == "__main__":
    main()
