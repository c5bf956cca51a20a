"""CPU speed of EfficientNet-Lite0: forward, full backward, and backward through the last blocks.

Prints, per image size, the median (over ``--repeats`` runs) time per image in milliseconds of

- ``fwd``: forward only, eval mode, under ``torch.no_grad()``;
- ``fwd+bwd all``: forward + backward of the whole network in train mode;
- ``fwd+bwd last4``: forward + backward when only ``_blocks.12``-``_blocks.15``, the head conv
  (``_conv_head``/``_bn1``) and ``_fc`` are trainable; everything else has
  ``requires_grad=False`` and its BatchNorm layers in eval mode.

glibc's malloc returns large freed blocks to the kernel, which costs a lot on these machines.
The two environment variables ``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_`` must be
set before Python starts, so by default this script runs itself twice in child processes
(once with the variables unset, once set to 4e9) and prints both tables. ``--malloc keep``
measures in the current process with the environment as it is.

Inputs are real subset images normalised for Lite0 (``--input cifar``, default; ``randn``
for synthetic ones) and the weights the real ImageNet ones (``--weights real``, default).

The machine may be shared: each table reports the 1-minute load average and the process's
CPU time over wall time during the runs (about 2.0 with 2 threads on an idle machine; much
less means other processes took the cores and the figures are too slow), and each cell shows
the fastest run next to the median.

Usage::

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/lite0_speed.py
    .venv/bin/python benchmarks/lite0_speed.py --sizes 64 96 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

MALLOC_VARS = {"MALLOC_MMAP_THRESHOLD_": "4000000000", "MALLOC_TRIM_THRESHOLD_": "4000000000"}
MODES = ("fwd", "fwd+bwd all", "fwd+bwd last4")
_MINS: list[float] = []  # fastest run of each measurement, in order (a contention check)


def _median_ms_per_image(step: Callable[[], None], batch: int, repeats: int) -> float:
    step()  # warm-up (allocations, oneDNN kernels)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    _MINS.append(min(times) * 1000.0 / batch)
    return statistics.median(times) * 1000.0 / batch


def _fwd(model: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        model(x)


def _fwd_bwd(model: nn.Module, loss_fn: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    model.zero_grad(set_to_none=True)
    loss_fn(model(x), y).backward()


def measure(
    sizes: list[int], batch: int, repeats: int, inputs: str, weights: str
) -> dict[str, dict[str, float]]:
    """Time the three modes at each size in this process; ``{size: {mode: ms/image}}``."""
    from common import load_cifar10_subset, load_efficientnet_lite0
    from efficientnet_lite_pytorch import EfficientNet

    torch.manual_seed(0)
    results: dict[str, dict[str, float]] = {}
    for size in sizes:
        if inputs == "cifar":
            (x, y), _ = load_cifar10_subset(size, train_limit=batch, test_limit=10)
        else:
            x, y = torch.randn(batch, 3, size, size), torch.randint(0, 10, (batch,))
        if weights == "real":
            model = load_efficientnet_lite0(10)
        else:
            model = EfficientNet.from_name("efficientnet-lite0")
            model._fc = nn.Linear(model._fc.in_features, 10)
        loss_fn = nn.CrossEntropyLoss()
        row: dict[str, float] = {}

        model.eval()
        row["fwd"] = _median_ms_per_image(partial(_fwd, model, x), batch, repeats)

        model.train()
        for p in model.parameters():
            p.requires_grad_(True)
        fwd_bwd = partial(_fwd_bwd, model, loss_fn, x, y)
        row["fwd+bwd all"] = _median_ms_per_image(fwd_bwd, batch, repeats)

        trainable = {f"_blocks.{i}" for i in range(12, 16)} | {"_conv_head", "_bn1", "_fc"}
        for pname, p in model.named_parameters():
            p.requires_grad_(any(pname.startswith(t + ".") for t in trainable))
        model.train()
        for mname, m in model.named_modules():
            is_bn = isinstance(m, nn.modules.batchnorm._BatchNorm)
            if is_bn and not any(mname == t or mname.startswith(t + ".") for t in trainable):
                m.eval()
        row["fwd+bwd last4"] = _median_ms_per_image(fwd_bwd, batch, repeats)
        row.update({f"{m} min": v for m, v in zip(MODES, _MINS[-3:])})
        results[str(size)] = row
        print(f"  [{_label()}] {size}px: {row}", file=sys.stderr, flush=True)
    return results


def _label() -> str:
    return "malloc vars set" if all(os.environ.get(k) for k in MALLOC_VARS) else "default malloc"


def _table(title: str, results: dict[str, dict[str, float]], batch: int) -> str:
    lines = [f"{title} (batch {batch}, ms per image: median (fastest))"]
    lines.append(f"| size | {' | '.join(MODES)} |")
    lines.append("|---:|" + "---:|" * len(MODES))
    for size, row in results.items():
        cells = " | ".join(f"{row[m]:.2f} ({row[m + ' min']:.2f})" for m in MODES)
        lines.append(f"| {size} px | {cells} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 96, 128])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--malloc",
        choices=["both", "keep"],
        default="both",
        help="both: run in two child processes, without and with the malloc variables; "
        "keep: measure here with the current environment",
    )
    parser.add_argument("--input", choices=["cifar", "randn"], default="cifar")
    parser.add_argument("--weights", choices=["real", "random"], default="real")
    parser.add_argument("--json", action="store_true", help="print results as JSON (keep mode)")
    args = parser.parse_args()

    import torch

    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    print(
        f"torch {torch.__version__}, OMP_NUM_THREADS={threads}, {torch.get_num_threads()} threads"
    )

    if args.malloc == "keep":
        wall0, cpu0 = time.perf_counter(), time.process_time()
        table = measure(args.sizes, args.batch, args.repeats, args.input, args.weights)
        ratio = (time.process_time() - cpu0) / (time.perf_counter() - wall0)
        label = f"{_label()}; load {os.getloadavg()[0]:.1f}, cpu/wall {ratio:.2f}"
        res = {label: table}
        if args.json:
            print(json.dumps(res))
        else:
            for label, table in res.items():
                print(_table(label, table, args.batch) + "\n")
        return

    base = {k: v for k, v in os.environ.items() if k not in MALLOC_VARS}
    base.setdefault("OMP_NUM_THREADS", "2")
    all_results: dict[str, dict[str, dict[str, float]]] = {}
    for env in (base, {**base, **MALLOC_VARS}):
        cmd = [sys.executable, __file__, "--malloc", "keep", "--json", "--batch", str(args.batch)]
        cmd += ["--repeats", str(args.repeats), "--input", args.input, "--weights", args.weights]
        cmd += ["--sizes", *map(str, args.sizes)]
        out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
        sys.stderr.write(out.stderr)
        all_results.update(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"input {args.input}, weights {args.weights}")
    for label, table in all_results.items():
        print(_table(label, table, args.batch) + "\n", flush=True)
    slowest = next(iter(all_results.values()))
    first = next(iter(all_results))
    print(f"speed-up over [{first}]")
    print(f"| config | size | {' | '.join(MODES)} |")
    print("|---|---:|" + "---:|" * len(MODES))
    for label, table in list(all_results.items())[1:]:
        for size, row in table.items():
            cells = " | ".join(f"{slowest[size][m] / row[m]:.2f}x" for m in MODES)
            print(f"| {label} | {size} px | {cells} |")


if __name__ == "__main__":
    main()
