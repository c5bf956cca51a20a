"""DeepSpeed on CPU (one process): ZeRO builds its flat param groups once, from what requires
gradients when it is set up, so freezeflow trains under it with soft freezing
(tests/_deepspeed_worker.py runs each scenario in a process of its own)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from _two_ranks import package_path
from paths import TESTS

pytest.importorskip("transformers")
pytest.importorskip("accelerate")
pytest.importorskip("deepspeed")

pytestmark = pytest.mark.slow

WORKER = TESTS / "_deepspeed_worker.py"
HEAD = {"classifier"}
TOP = {"layer1", "pooler"}


def run(tmp_path: Path, scenario: str, port: int) -> dict[str, Any]:
    out = tmp_path / f"{scenario}.pt"
    env = {
        **os.environ,
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
        "PYTHONPATH": os.pathsep.join(p for p in (str(TESTS), package_path()) if p),
        "OMP_NUM_THREADS": "1",
    }
    proc = subprocess.run(
        [sys.executable, str(WORKER), str(out), scenario],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    result: dict[str, Any] = torch.load(out, weights_only=False)
    return result


def block(name: str) -> str:
    m = re.match(r"bert\.encoder\.layer\.(\d+)\.", name)
    if m:
        return f"layer{m.group(1)}"
    return name.split(".")[1] if name.startswith("bert.") else name.split(".")[0]


def moved(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> set[str]:
    return {block(n) for n in a if not torch.equal(a[n], b[n])}


def check_run(result: dict[str, Any]) -> None:
    """Epoch 0 moved the classifier only; epoch 1 the classifier, the last layer and the
    pooler; the embeddings and the first layer never moved (bit for bit), though weight
    decay is on. Where ZeRO keeps one flat tensor per group, a group has optimizer state
    exactly from the stage that trains it."""
    assert result["history"] == [("stage0", 0), ("stage1", 1)]
    start, after0, after1 = result["weights"]
    assert moved(start, after0) == HEAD
    assert moved(after0, after1) == HEAD | TOP
    assert not moved(start, after1) - HEAD - TOP
    for epoch, groups in enumerate(result["state"]):
        assert groups, epoch
        trained = {"stage0"} if epoch == 0 else {"stage0", "stage1"}
        assert {name: has for name, has in groups} == {
            name: name.split("/")[0] in trained for name, _ in groups
        }, epoch


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_trainer_under_deepspeed_zero_trains_what_each_stage_unfreezes(
    tmp_path: Path, stage: int
) -> None:
    check_run(run(tmp_path, f"hf-zero{stage}", 29600 + stage))


def test_hard_freezing_under_deepspeed_is_refused_before_any_change(tmp_path: Path) -> None:
    result = run(tmp_path, "hf-hard", 29610)
    assert result["error"].startswith("OptimizerError: freezing='hard' under DeepSpeed")
    assert "hint: freezing='soft'" in result["error"]
    assert result["flags_kept"]


def test_unfreezer_built_before_deepspeed_initialize(tmp_path: Path) -> None:
    check_run(run(tmp_path, "direct", 29620))


def test_trainer_under_deepspeed_on_two_ranks(tmp_path: Path) -> None:
    """ZeRO-2 on 2 gloo ranks, different data on each: the ranks end bit-identical, and each
    stage trained what it unfreezes (FreezeflowTrainer leaves the reduction to DeepSpeed
    under soft freezing)."""
    from _two_ranks import run_two_ranks

    out = tmp_path / "zero2.pt"
    run_two_ranks(WORKER, lambda _: [str(out), "hf-zero2"], "DeepSpeed ZeRO-2", 600)
    r0, r1 = (torch.load(f"{out}.rank{r}", weights_only=False) for r in range(2))
    check_run(r0)
    for a, b in zip(r0["weights"], r1["weights"], strict=True):
        assert not moved(a, b)
