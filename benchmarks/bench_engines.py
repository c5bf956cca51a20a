"""What the guarantees of issue 22 cost, each against a baseline measured in the same run.

1. **The transition check** (``GradualUnfreezer(verify=True)``, the default): the step time of
   a run through three stages with it on and off (runs interleaved, medians), and the time of
   the check itself at the first step after a stage change.
2. **Soft freezing** (``freezing="soft"``, for DeepSpeed and other engines that build their
   optimizer once) against hard freezing, in the first stage (only ``fc`` trains) of a
   schedule that ends with everything trainable, on torchvision's ResNet18: step time, the
   bytes the backward saves for itself (activations, counted with
   ``torch.autograd.graph.saved_tensors_hooks``), the gradient bytes alive after backward,
   and the optimizer state after the step.

Writes ``benchmarks/results/engines.json``, which docs/benchmarks.md shows through
docs/sources.py. Usage::

    python benchmarks/bench_engines.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

import freezeflow as ff

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "benchmarks" / "results" / "engines.json"


# --------------------------------------------------------------------------- 1. the check


def _transformer() -> nn.Module:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(64, 4, 128, dropout=0.0, batch_first=True)
    return nn.Sequential(
        nn.Linear(16, 64), nn.TransformerEncoder(layer, 4, enable_nested_tensor=False),
        nn.Flatten(), nn.Linear(64 * 8, 4),
    )  # fmt: skip


class _Run:
    """One 3-stage run (``steps`` steps per stage) of the small transformer, stepped one step
    at a time so that two runs can alternate."""

    def __init__(self, verify: bool, steps: int) -> None:
        self.model = _transformer()
        sched = [
            ff.Stage("3", lr=1e-3),
            ff.Stage("1.layers.3", lr=1e-3, start=ff.at_step(steps)),
            ff.Stage(ff.everything(), lr=1e-4, start=ff.at_step(2 * steps)),
        ]
        self.uf = ff.GradualUnfreezer(self.model, sched, torch.optim.AdamW, verify=verify)
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(32, 8, 16, generator=g)
        self.y = torch.randint(0, 4, (32,), generator=g)

    def step(self) -> float:
        t0 = time.perf_counter()
        self.uf.optimizer.zero_grad()
        loss = nn.functional.cross_entropy(self.model(self.x), self.y)
        loss.backward()  # type: ignore[no-untyped-call]
        self.uf.optimizer.step()
        self.uf.step()
        return time.perf_counter() - t0


def _check_seconds(repeats: int) -> tuple[float, int]:
    """The transition check alone, armed on every tensor but the head's, timed at the
    optimizer step (the step itself excluded); and how many tensors it checks."""
    model = _transformer()
    sched = [ff.Stage("3", lr=1e-3), ff.Stage(ff.everything(), lr=1e-4, start=1)]
    uf = ff.GradualUnfreezer(model, sched, torch.optim.AdamW)
    uf.on_epoch_start(1)
    x, y = torch.randn(32, 8, 16), torch.randint(0, 4, (32,))
    nn.functional.cross_entropy(model(x), y).backward()  # type: ignore[no-untyped-call]
    check = uf._verify
    assert check is not None and check.pending is not None
    pending = check.pending
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        check.check(*pending)
        out.append(time.perf_counter() - t0)
    return statistics.median(out), len(pending[1])


def bench_check(repeats: int, steps: int = 20) -> dict[str, Any]:
    """Runs with the check on and off, alternating step by step (so that the machine's load
    falls on both alike): medians of the step times, and the median of the per-step ratios.
    The first step after each change (where the check runs) is timed apart."""
    on: list[float] = []
    off: list[float] = []
    ratios: list[float] = []
    for _ in range(repeats):
        a, b = _Run(True, steps), _Run(False, steps)
        for k in range(3 * steps):
            ta, tb = a.step(), b.step()
            if k not in (steps, 2 * steps):
                on.append(ta)
                off.append(tb)
                ratios.append(ta / tb)
    check_s, tensors = _check_seconds(max(repeats, 5))
    return {
        "step_ms_verify": 1e3 * statistics.median(on),
        "step_ms_no_verify": 1e3 * statistics.median(off),
        "ratio": statistics.median(ratios),
        "check_ms": 1e3 * check_s,
        "check_tensors": tensors,
        "steps": len(on),
    }


# --------------------------------------------------------------------------- 2. soft freezing


def _saved_bytes(fn: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, int]:
    """``fn()`` and the bytes of the distinct storages autograd saved for the backward."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(seen.values())


class _ResNetRun:
    """torchvision's ResNet18 (10 classes) in the first stage (only ``fc`` trains) of a
    schedule that ends with everything trainable: the head, then layer4, then everything
    (so soft freezing holds every parameter from the start)."""

    def __init__(self, freezing: str) -> None:
        torch.manual_seed(0)
        self.model = torchvision.models.resnet18(num_classes=10)
        sched = [
            ff.Stage("fc", lr=1e-3),
            ff.Stage("layer4", lr=1e-4, start=1),
            ff.Stage(ff.everything(), lr=1e-5, start=2),
        ]
        self.uf = ff.GradualUnfreezer(
            self.model,
            sched,
            torch.optim.AdamW,
            freezing=freezing,  # type: ignore[arg-type]
        )
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(32, 3, 64, 64, generator=g)
        self.y = torch.randint(0, 10, (32,), generator=g)
        self.model.train()
        self.saved = self.grads = 0

    def step(self) -> float:
        self.uf.optimizer.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        out, self.saved = _saved_bytes(lambda: self.model(self.x))
        nn.functional.cross_entropy(out, self.y).backward()  # type: ignore[no-untyped-call]
        self.grads = sum(p.grad.nbytes for p in self.model.parameters() if p.grad is not None)
        self.uf.optimizer.step()
        return time.perf_counter() - t0

    def state_bytes(self) -> int:
        return sum(
            t.nbytes
            for s in self.uf.optimizer.state.values()
            for t in s.values()
            if torch.is_tensor(t)
        )


def bench_soft(repeats: int) -> dict[str, Any]:
    """Hard and soft freezing alternating step by step; medians, and the median of the
    per-step ratios (the first step of each, which allocates, left out)."""
    hard, soft = _ResNetRun("hard"), _ResNetRun("soft")
    times: dict[str, list[float]] = {"hard": [], "soft": []}
    ratios = []
    for k in range(repeats + 1):
        th, ts = hard.step(), soft.step()
        if k:
            times["hard"].append(th)
            times["soft"].append(ts)
            ratios.append(ts / th)
    out: dict[str, Any] = {}
    for name, run in (("hard", hard), ("soft", soft)):
        out[name] = {
            "step_ms": 1e3 * statistics.median(times[name]),
            "saved_for_backward_mb": run.saved / 2**20,
            "gradients_mb": run.grads / 2**20,
            "optimizer_state_mb": run.state_bytes() / 2**20,
        }
    out["step_ratio"] = statistics.median(ratios)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--note", default="", help="what else ran on the machine, if anything")
    args = parser.parse_args(argv)
    result = {
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "command": "python benchmarks/bench_engines.py " + " ".join(argv or sys.argv[1:]),
        "note": args.note,
        "check": bench_check(args.repeats),
        "soft": bench_soft(args.repeats),
    }
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
