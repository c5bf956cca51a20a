"""Linear probe of EfficientNet-Lite0 (real ImageNet weights) on the shipped CIFAR-10 subset.

The backbone is frozen and run once, in eval mode, over the 5,000 training images (plus their
horizontal flips unless ``--no-flip``) and the 2,000 test images, upscaled to ``--sizes``;
a linear layer is then trained on the pooled 1280-d features with Adam (full data, a few
seconds) and evaluated on the test features. Prints test accuracy and timings per size.

Usage (the malloc variables make large CPU tensors much cheaper, see benchmarks/lite0_speed.py)::

    MALLOC_MMAP_THRESHOLD_=4000000000 MALLOC_TRIM_THRESHOLD_=4000000000 OMP_NUM_THREADS=2 \\
        .venv/bin/python benchmarks/lite0_linear_probe.py --sizes 96 128
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

from common import load_cifar10_subset, load_efficientnet_lite0


@torch.no_grad()
def features(backbone: nn.Module, x: Tensor, batch: int = 128) -> Tensor:
    """Pooled 1280-d features of ``x`` (eval mode), computed in batches."""
    backbone.eval()
    return torch.cat([backbone(x[i : i + batch]) for i in range(0, len(x), batch)])


def train_linear(
    ftr: Tensor, ytr: Tensor, fte: Tensor, yte: Tensor, epochs: int, lr: float, seed: int
) -> list[tuple[int, float]]:
    """Adam on a linear layer over standardised features; test accuracy after some epochs."""
    torch.manual_seed(seed)
    mean, std = ftr.mean(0), ftr.std(0) + 1e-6
    ftr, fte = (ftr - mean) / std, (fte - mean) / std
    head = nn.Linear(ftr.shape[1], 10)
    opt = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=1e-4)
    loss_fn = nn.CrossEntropyLoss()
    history = []
    for epoch in range(1, epochs + 1):
        perm = torch.randperm(len(ftr))
        for i in range(0, len(ftr), 128):
            idx = perm[i : i + 128]
            opt.zero_grad()
            loss_fn(head(ftr[idx]), ytr[idx]).backward()
            opt.step()
        if epoch % 5 == 0 or epoch == epochs:
            with torch.no_grad():
                acc = (head(fte).argmax(1) == yte).float().mean().item()
            history.append((epoch, acc))
    return history


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[96, 128])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--no-flip", dest="flip", action="store_false")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    malloc = "set" if os.environ.get("MALLOC_MMAP_THRESHOLD_") else "unset"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, malloc vars {malloc}")
    rows = []
    for size in args.sizes:
        t0 = time.perf_counter()
        (xtr, ytr), (xte, yte) = load_cifar10_subset(size, normalize="lite0")
        t_load = time.perf_counter() - t0

        model = load_efficientnet_lite0(10)
        model._fc = nn.Identity()  # the pooled features (dropout is off in eval mode)
        t0 = time.perf_counter()
        ftr, fte = features(model, xtr), features(model, xte)
        t_feat = time.perf_counter() - t0
        variants = [(False, ftr, ytr, 0.0)]
        if args.flip:
            t0 = time.perf_counter()
            ftr_flip = features(model, xtr.flip(-1))
            t_flip = time.perf_counter() - t0
            variants.append((True, torch.cat([ftr, ftr_flip]), ytr.repeat(2), t_flip))
        del xtr, xte

        for flip, f, y, t_extra in variants:
            t0 = time.perf_counter()
            hist = train_linear(f, y, fte, yte, args.epochs, args.lr, args.seed)
            t_train = time.perf_counter() - t0
            rows.append((size, flip, hist, t_load, t_feat + t_extra, t_train))
            curve = ", ".join(f"ep{e}: {a:.1%}" for e, a in hist)
            print(f"{size}px flip={flip}: {curve}", flush=True)

    print("\n| size | train set | test acc (final) | best | load s | features s | train s |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for size, flip, hist, t_load, t_feat, t_train in rows:
        best = max(a for _, a in hist)
        label = "5,000 + flips" if flip else "5,000"
        print(
            f"| {size} px | {label} | {hist[-1][1]:.1%} | {best:.1%} | {t_load:.1f} | "
            f"{t_feat:.1f} | {t_train:.1f} |"
        )


if __name__ == "__main__":
    main()
