"""Progressive freezing (FreezeOut-style) on the offline demo: wall time and accuracy.

Two runs of full fine-tuning of EfficientNet-Lite0 (ImageNet weights) on the shipped CIFAR-10
subset, same data, seed and epochs, side by side:

- baseline: everything trainable for the whole run;
- ``ff.presets.progressive_freezing(n)``: the first ``n`` blocks freeze one after another between
  ``--start`` and ``--end`` of training (cubic spacing), so the backward pass stops earlier
  and earlier; with ``--cache`` the frozen prefix is also computed once per stage.

Goal: >= 20% less wall time at <= 0.5 point accuracy loss. Both numbers are printed as they
come out. Usage::

    python benchmarks/bench_progressive.py [--image-size 96] [--epochs 4] [--blocks 12]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

from common import load_efficientnet_lite0
from offline_transfer import subset_loaders

import freezeflow as ff


def run(args: argparse.Namespace, schedule: ff.Schedule, cache: bool) -> tuple[float, float]:
    train, test = subset_loaders(args.image_size, args.train_limit, args.test_limit)
    torch.manual_seed(0)
    model = load_efficientnet_lite0(10)
    t = time.perf_counter()
    ff.training.seed_everything(0)
    unfreezer = ff.GradualUnfreezer(
        model,
        schedule,
        torch.optim.Adam,
        eval_frozen=True,
        total_epochs=args.epochs,
        total_steps=args.epochs * len(train),
    )
    history = ff.fit(
        model,
        train,
        val_data=test,
        unfreezer=unfreezer,
        epochs=args.epochs,
        callbacks=[ff.callbacks.FeatureCaching()] if cache else [],
        progress=False,
    )
    return time.perf_counter() - t, history.epochs[-1]["metrics"]["val_accuracy"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--image-size", type=int, default=96)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--blocks", type=int, default=12, help="blocks that freeze in turn")
    p.add_argument("--start", type=float, default=0.25)
    p.add_argument("--end", type=float, default=0.75)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--train-limit", type=int, default=None)
    p.add_argument("--test-limit", type=int, default=None)
    p.add_argument("--cache", action="store_true", help="also cache the frozen prefix")
    args = p.parse_args()
    torch.set_num_threads(2)
    base = ff.Schedule([ff.Stage(ff.everything(), lr=args.lr, name="all")])
    prog = ff.presets.progressive_freezing(args.blocks, lr=args.lr, start=args.start, end=args.end)
    base_s, base_acc = run(args, base, cache=False)
    prog_s, prog_acc = run(args, prog, cache=args.cache)
    print(f"full fine-tuning, {args.epochs} epochs at {args.image_size} px")
    print(f"   everything trainable     {base_s:7.1f} s  test accuracy {100 * base_acc:5.1f}%")
    print(
        f"   progressive_freezing({args.blocks}) {prog_s:7.1f} s  test accuracy "
        f"{100 * prog_acc:5.1f}%"
    )
    print(
        f"   wall time {100 * (1 - prog_s / base_s):+.1f}% saved (goal >= 20%), accuracy "
        f"{100 * (prog_acc - base_acc):+.1f} points (goal >= -0.5)"
    )


if __name__ == "__main__":
    main()
