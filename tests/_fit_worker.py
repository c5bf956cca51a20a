"""Toy training tasks for the fit() tests, and a subprocess entry point for the resume and
kill tests.

Task: 3x8x8 noisy images with a bright 3x3 patch at a random place in one channel; the class
is the channel. A small CNN (conv stem, conv + BatchNorm, Dropout, linear head:
``models.SmallCNN(3, stem_norm=False, pool="amax")``) learns it in a few epochs on CPU. The
schedule trains the head for 2 epochs, then everything. A tinier task (:func:`tiny_data`,
:func:`tiny_model`, :func:`tiny_schedule`: a 4-8-2 MLP on 64 points) serves the tests that
only need *a* run.

Run as a script::

    python tests/_fit_worker.py DIR --epochs 4 [--stop-after 2] [--resume] [--slow-saves]
        [--out FILE]

prints ``TRAINING`` once training has started, writes the final ``state_dict`` and the
history to ``--out`` (a torch file), and exits 0.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import torch
from models import SmallCNN, StopAfter, make_small_cnn
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import freezeflow as ff
from freezeflow.training.loop import fit
from freezeflow.training.run import Callback, Run
from freezeflow.training.setup import seed_everything


def make_model(seed: int = 0) -> SmallCNN:
    return make_small_cnn(3, seed=seed, stem_norm=False, pool="amax")


def tiny_data(n: int = 64, batch: int = 16) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n`` points of 4 features in batches of ``batch``; the class is the first one's sign."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    y = (x[:, 0] > 0).long()
    return [(x[i : i + batch], y[i : i + batch]) for i in range(0, n, batch)]


def tiny_model() -> nn.Sequential:
    """A seeded 4-8-2 MLP (``nn.Sequential``: blocks "0", "1", "2")."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


def tiny_schedule() -> ff.Schedule:
    """The last layer for an epoch, then the first one too."""
    return ff.Schedule([ff.Stage("2", lr=1e-2), ff.Stage("0", lr=1e-2, start=1)])


def make_tensors(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    x = 0.5 * torch.randn(n, 3, 8, 8, generator=g)
    rows = torch.randint(0, 6, (n,), generator=g)
    cols = torch.randint(0, 6, (n,), generator=g)
    for i in range(n):
        x[i, y[i], rows[i] : rows[i] + 3, cols[i] : cols[i] + 3] += 2.0
    return x, y


def make_loaders(
    n_train: int = 256, batch_size: int = 32
) -> tuple[DataLoader[Any], DataLoader[Any]]:
    """A shuffled training loader (no generator of its own: it draws from torch's global RNG,
    which checkpoints restore) and a validation loader."""
    train = DataLoader(
        TensorDataset(*make_tensors(n_train, 1)), batch_size=batch_size, shuffle=True
    )
    val = DataLoader(TensorDataset(*make_tensors(128, 2)), batch_size=64)
    return train, val


def make_schedule() -> ff.Schedule:
    return ff.Schedule(
        [
            ff.Stage("head", lr=1e-2, name="head"),
            ff.Stage(ff.everything(), lr=3e-3, start=2, name="all"),
        ]
    )


class Announce(Callback):
    def on_train_start(self, run: Run) -> None:
        print("TRAINING", flush=True)


def _slow_saves() -> None:
    """Make every checkpoint write slow, so that kills often land in the middle of one."""
    real = torch.save

    def slow(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        real(obj, f, *args, **kwargs)
        print("SAVING", flush=True)  # the temporary file is written, not yet renamed
        time.sleep(0.2)

    torch.save = slow


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("dir")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--stop-after", type=int, default=None)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--slow-saves", action="store_true")
    p.add_argument("--train-size", type=int, default=256)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    if args.slow_saves:
        _slow_saves()
    train, val = make_loaders(args.train_size)
    model = make_model()
    callbacks: list[Callback] = [Announce()]
    if args.stop_after is not None:
        callbacks.append(StopAfter(args.stop_after))
    seed_everything(0)
    history = fit(
        model,
        train,
        schedule=make_schedule(),
        val_data=val,
        epochs=args.epochs,
        callbacks=[*callbacks, ff.Checkpoint(args.dir, keep_last=2, resume=args.resume)],
        progress=False,
    )
    if args.out:
        torch.save({"model": model.state_dict(), "history": history.to_json()}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
