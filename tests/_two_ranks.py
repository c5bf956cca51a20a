"""Start a worker script on 2 gloo ranks (CPU) for the multi-process tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"


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
                "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
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
