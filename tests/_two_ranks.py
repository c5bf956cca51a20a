"""Start a worker script on 2 gloo ranks (CPU) for the multi-process tests; what the workers
share (a byte-counting comm hook, the way they end) and the checks their tests share."""

from __future__ import annotations

import os
import site
import socket
import subprocess
import sys
import traceback
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, Protocol

import pytest
import torch
from torch._C._distributed_c10d import GradBucket
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

import freezeflow


def package_path() -> str:
    """The PYTHONPATH under which a worker imports the freezeflow this process imported: its
    folder when that is src/ of a checkout not installed (a no-op under an editable
    install), nothing more when freezeflow comes from site-packages (the installed wheel of
    `nox -s wheel_tests`, which the workers then import too)."""
    folder = Path(freezeflow.__file__).resolve().parents[1]
    installed = {Path(p).resolve() for p in (*site.getsitepackages(), site.getusersitepackages())}
    paths = [] if folder in installed else [str(folder)]
    return os.pathsep.join(p for p in [*paths, os.environ.get("PYTHONPATH", "")] if p)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_two_ranks(
    worker: Path, args: Callable[[int], list[str]], what: str, timeout: float
) -> tuple[int, list[str]]:
    """Run ``worker *args(attempt)`` as ranks 0 and 1 on a free port; retry (3 attempts) on a
    port clash, kill both ranks on a timeout. Returns the attempt number and each rank's
    output; fails the test with both logs otherwise."""
    logs = ""
    for attempt in range(3):
        port = _free_port()
        argv = [sys.executable, str(worker), *args(attempt)]
        procs = []
        for r in range(2):
            env = {
                **os.environ,
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(port),
                "RANK": str(r),
                "LOCAL_RANK": str(r),
                "WORLD_SIZE": "2",
                "OMP_NUM_THREADS": "1",
                "PYTHONPATH": package_path(),
            }
            procs.append(
                subprocess.Popen(
                    argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
                )
            )
        outputs = []
        try:
            for p in procs:
                outputs.append(p.communicate(timeout=timeout)[0])
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            for p in procs:
                p.communicate()
            pytest.fail(f"the 2-rank run of {what} timed out after {timeout} s")
        logs = "\n".join(f"--- rank {r}\n{o[-4000:]}" for r, o in enumerate(outputs))
        if all(p.returncode == 0 for p in procs):
            return attempt, outputs
        if "address already in use" not in logs.lower():
            break
    pytest.fail(f"the 2-rank run of {what} failed:\n{logs}")


# --------------------------------------------------------------------------- in the workers


class CountsBytes(Protocol):
    """What :func:`counting_hook` writes to: bytes all-reduced per optimizer step."""

    step: int
    bytes: dict[int, int]


def counting_hook(rec: CountsBytes, bucket: GradBucket) -> torch.futures.Future[torch.Tensor]:
    """DDP's default all-reduce (a comm hook, ``state`` = ``rec``), counting the bytes of each
    bucket into ``rec.bytes[rec.step]``."""
    buf = bucket.buffer()
    rec.bytes[rec.step] += buf.numel() * buf.element_size()
    return allreduce_hook(None, bucket)  # type: ignore[arg-type]  # the default group


# DDP checks the hook's annotations by identity; `from __future__ import annotations` left
# strings there
counting_hook.__annotations__ = typing.get_type_hints(counting_hook)


def serve(run: Callable[[str, str], dict[str, Any]]) -> NoReturn:
    """A worker's main: ``argv`` = OUT_DIR SCENARIO,SCENARIO...; runs ``run(out_dir, name)``
    for each scenario (a scenario that raises is recorded as ``{"crash": traceback}``), the
    ranks meeting at a barrier after each, then :func:`save_and_exit`."""
    import torch.distributed as dist

    out_dir, scenarios = sys.argv[1], sys.argv[2].split(",")
    torch.set_num_threads(1)
    results: dict[str, Any] = {}
    try:
        for name in scenarios:
            try:
                results[name] = run(out_dir, name)
            except Exception:
                results[name] = {"crash": traceback.format_exc()}
            if dist.is_initialized():
                dist.barrier()
    finally:
        save_and_exit(results, out_dir)


def save_and_exit(results: dict[str, Any], out_dir: str) -> NoReturn:
    """End a worker: save this rank's ``results`` to ``out_dir/rank{RANK}.pt``, leave the
    process group, and exit at once: gloo in this torch sometimes aborts at interpreter exit
    even after ``destroy_process_group()`` (docs/distributed.md), so the teardown is skipped."""
    import torch.distributed as dist

    try:
        torch.save(results, os.path.join(out_dir, f"rank{int(os.environ['RANK'])}.pt"))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


# --------------------------------------------------------------------------- in the tests


def run_scenarios(
    worker: Path, out_dir: Path, scenarios: str, what: str, timeout: float
) -> list[dict[str, Any]]:
    """Run a :func:`serve` worker on 2 ranks over ``scenarios`` (comma-separated); return each
    rank's results, failing the test with the traceback of any scenario that crashed."""
    run_two_ranks(worker, lambda _: [str(out_dir), scenarios], what, timeout)
    ranks = [torch.load(out_dir / f"rank{r}.pt", weights_only=False) for r in range(2)]
    for scenario in scenarios.split(","):
        for r in ranks:
            assert "crash" not in r[scenario], r[scenario].get("crash")
    return ranks


def check_stages_and_bytes(run: dict[str, Any], unused: dict[str, Any], steps: list[int]) -> None:
    """A 3-stage run under freezeflow's DDP against the find-unused configuration: each stage
    moved exactly its trainable parameters (frozen ones, BatchNorm statistics included, never
    moved), and every step all-reduced the bytes of the trainable parameters only, where
    find-unused all-reduces every parameter."""

    last = {s: max(t for t, st in run["stage"].items() if st == s) for s in (0, 1, 2)}
    before = run["initial"]
    for stage in (0, 1, 2):
        after = run["states"][last[stage]]
        moved = sorted(k for k in after if not torch.equal(after[k], before[k]))
        assert moved == run["trainable"][stage], stage
        before = after
    numel = run["numel"]
    everything = 4 * sum(numel.values())
    for step in steps:
        trainable = 4 * sum(numel[n] for n in run["trainable"][run["stage"][step]])
        assert run["bytes"][step] == trainable, step
        assert unused["bytes"][step] == everything > trainable, step
