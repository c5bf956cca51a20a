"""Resume a 3-stage GradualUnfreezer run from a checkpoint, in a fresh process.

Usage: ``python tests/_resume_worker.py CHECKPOINT RESULT``. Loads CHECKPOINT (written by
:func:`checkpoint`) with ``torch.load(weights_only=True)``, rebuilds model, optimizer,
unfreezer and LR scheduler from code, loads their states, trains to the end and saves
:func:`result` to RESULT. ``test_resume.py`` imports the same functions for the
uninterrupted run and the in-process variant, so both sides run identical code.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from models import (
    flags,
    make_net,
    norm_state,
    three_stage,
    train_step,
)

import freezeflow as ff

EPOCHS = 6
STEPS = 3  # per epoch
TOTAL = EPOCHS * STEPS

Run = tuple[torch.nn.Module, torch.optim.Optimizer, ff.GradualUnfreezer, Any]


def build(seed: int = 0) -> Run:
    """Model, AdamW, unfreezer (head at 1e-2, + body.1 at epoch 2, + all with lr_decay at
    epoch 4) and a OneCycle LR scheduler built after the unfreezer over every group."""
    model = make_net(seed=seed)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    uf = ff.GradualUnfreezer(model, three_stage(), opt)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=[g["base_lr"] for g in opt.param_groups], total_steps=TOTAL
    )
    uf.attach(sched)
    return model, opt, uf, sched


def train(run: Run, start: int, stop: int) -> None:
    """Global steps ``start`` to ``stop - 1``; ``on_epoch_start`` at the first step of each
    epoch (not again for an epoch resumed in the middle)."""
    model, opt, uf, sched = run
    for t in range(start, stop):
        epoch, i = divmod(t, STEPS)
        if i == 0:
            uf.on_epoch_start(epoch)
        model.train()
        train_step(model, opt, t)
        sched.step()
        uf.step()


def checkpoint(run: Run) -> dict[str, Any]:
    model, opt, uf, sched = run
    return {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "unfreezer": uf.state_dict(),
    }


def restore(state: dict[str, Any]) -> Run:
    """Rebuild from code (a different seed, so every value must come from the checkpoint) and
    load the states."""
    run = build(seed=123)
    model, opt, uf, sched = run
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    uf.load_state_dict(state["unfreezer"])
    return run


def result(run: Run) -> dict[str, Any]:
    """What must match bit for bit between the resumed and the uninterrupted run."""
    model, opt, uf, sched = run
    model.train()
    return {
        "params": {n: p.detach().clone() for n, p in model.named_parameters()},
        "buffers": {n: b.clone() for n, b in model.named_buffers()},
        "flags": flags(model),
        "norm": {k: list(v) for k, v in norm_state(model).items()},
        "lrs": uf.lrs(),
        "groups": [
            {k: v for k, v in g.items() if k != "params"} for g in opt.state_dict()["param_groups"]
        ],
        "opt_state": opt.state_dict()["state"],
        "scheduler": sched.state_dict(),
        "unfreezer": uf.state_dict(),
    }


def main(ckpt: str, out: str) -> None:
    torch.set_num_threads(1)  # the same kernels, in the same order, as the parent's run
    state = torch.load(ckpt, weights_only=True)
    start = int(state["unfreezer"]["global_step"])
    run = restore(state)
    train(run, start, TOTAL)
    torch.save(result(run), out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
