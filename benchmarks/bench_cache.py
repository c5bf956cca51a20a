"""Frozen-prefix feature caching on the offline demo's model and data, against the seed's loop.

Measured in one run, side by side (EfficientNet-Lite0 with ImageNet weights, the shipped
CIFAR-10 subset, the demo's image size):

A. One frozen-backbone epoch (train the head only): the seed's loop (a full forward through
   the frozen backbone at every step) versus freezeflow's cached epoch (the backbone's output
   computed once, then only the head runs). Reported with and without the one-off caching
   pass. Goal: >= 20x after the caching pass.
B. The whole two-stage recipe (head for ``--head-epochs``, then the last block for the rest):
   ``fit()`` as the seed runs it (no cache) versus ``fit(callbacks=[FeatureCaching()])``.
   Goal: >= 3x end to end.

Usage::

    MALLOC_MMAP_THRESHOLD_=4000000000 MALLOC_TRIM_THRESHOLD_=4000000000 \\
        python benchmarks/bench_cache.py [--image-size 96] [--train-limit 5000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

from common import load_efficientnet_lite0
from offline_transfer import subset_loaders

import freezeflow as ff
from freezeflow.training.cache import FeatureCache


def loaders(args: argparse.Namespace) -> tuple[DataLoader[object], DataLoader[object]]:
    return subset_loaders(args.image_size, args.train_limit, args.test_limit)  # type: ignore[return-value]


def head_epoch_seed_loop(train: DataLoader[object]) -> float:
    """The seed's loop: frozen backbone by requires_grad, model.train(), full forward."""
    torch.manual_seed(0)
    model = load_efficientnet_lite0(10)
    for p in model.parameters():
        p.requires_grad = False
    for p in model._fc.parameters():
        p.requires_grad = True
    opt = torch.optim.Adam(model._fc.parameters(), lr=1e-3)
    model.train()
    t = time.perf_counter()
    for x, y in train:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return time.perf_counter() - t


def head_epoch_cached(train: DataLoader[object]) -> tuple[float, float]:
    """freezeflow: freeze all but the head (norm eval, eval_frozen), cache, one epoch."""
    torch.manual_seed(0)
    model = load_efficientnet_lite0(10)
    ff.freeze(model, ~ff.name("_fc"), eval_frozen=True)
    opt = torch.optim.Adam(model._fc.parameters(), lr=1e-3)
    model.train()
    t = time.perf_counter()
    cache = FeatureCache(model, train)
    cache.check()
    cache.build()
    build = time.perf_counter() - t
    t = time.perf_counter()
    with cache.replaying() as replay:
        for f, y in cache.batches():
            replay.features = f
            opt.zero_grad()
            F.cross_entropy(model(f), y).backward()
            opt.step()
    epoch = time.perf_counter() - t
    cache.close()
    return build, epoch


def recipe(
    train: DataLoader[object], test: DataLoader[object], args: argparse.Namespace, cached: bool
) -> tuple[float, float]:
    torch.manual_seed(0)
    model = load_efficientnet_lite0(10)
    schedule = ff.presets.two_stage(
        "_fc",
        ["_blocks.15", "_conv_head", "_bn1"],
        head_epochs=args.head_epochs,
        lr=1e-5,
        reset_state=True,
    )
    t = time.perf_counter()
    ff.training.seed_everything(0)
    unfreezer = ff.GradualUnfreezer(
        model,
        schedule,
        torch.optim.Adam,
        norm="eval" if cached else "ignore",
        eval_frozen=cached,
        total_epochs=args.epochs,
        total_steps=args.epochs * len(train),
    )
    history = ff.fit(
        model,
        train,
        val_data=test,
        unfreezer=unfreezer,
        epochs=args.epochs,
        callbacks=[ff.callbacks.FeatureCaching()] if cached else [],
        progress=False,
    )
    return time.perf_counter() - t, history.epochs[-1]["metrics"]["val_accuracy"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--image-size", type=int, default=96)
    p.add_argument("--train-limit", type=int, default=None)
    p.add_argument("--test-limit", type=int, default=None)
    p.add_argument("--epochs", type=int, default=15, help="the seed's 5 + 10 by default")
    p.add_argument("--head-epochs", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3, help="repeats of part A (medians)")
    p.add_argument("--skip-recipe", action="store_true", help="only part A")
    args = p.parse_args()
    torch.set_num_threads(2)
    train, test = loaders(args)
    print(f"EfficientNet-Lite0, {len(train.dataset):,} train images at {args.image_size} px")  # type: ignore[arg-type]

    seed_t, build_t, epoch_t = [], [], []
    for _ in range(args.repeats):
        seed_t.append(head_epoch_seed_loop(train))
        b, e = head_epoch_cached(train)
        build_t.append(b)
        epoch_t.append(e)
    s, b, e = (statistics.median(v) for v in (seed_t, build_t, epoch_t))
    print("A. one frozen-backbone (head-only) epoch, medians of", args.repeats)
    print(f"   seed loop (full forward each step) {s:.2f} s")
    print(f"   freezeflow cached epoch            {e:.3f} s  -> {s / e:.0f}x faster (goal >= 20x)")
    print(
        f"   one-off caching pass               {b:.2f} s  (first epoch incl. pass: "
        f"{s / (b + e):.2f}x)"
    )
    if args.skip_recipe:
        return
    seed_s, seed_acc = recipe(train, test, args, cached=False)
    ff_s, ff_acc = recipe(train, test, args, cached=True)
    print(
        f"B. two-stage seed recipe end to end, {args.epochs} epochs ({args.head_epochs} head-only),"
        " evaluation on the test images every epoch"
    )
    print(
        f"   as the seed runs it (no cache, BN in train mode) {seed_s:.1f} s, "
        f"test accuracy {100 * seed_acc:.1f}%"
    )
    print(
        f"   FeatureCaching(), norm='eval', eval_frozen=True  {ff_s:.1f} s, "
        f"test accuracy {100 * ff_acc:.1f}%  -> {seed_s / ff_s:.1f}x faster (goal >= 3x)"
    )


if __name__ == "__main__":
    main()
