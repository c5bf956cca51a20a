"""fit() under torchrun: 2 gloo ranks on CPU run fit() (tests/_fit_ddp_worker.py) once per
module; the tests compare what each rank saved and printed.

Checked: ranks end bit-identical (parameters and BatchNorm buffers), later-stage parameters
train, the history is the same on both ranks, train_loss is the sample-weighted mean over
ranks, validation metrics equal one process evaluating the whole validation set, only rank
0 prints and writes checkpoints, a resumed run on every rank equals the uninterrupted one,
plain DDP without a schedule calls set_epoch on a user DistributedSampler, cache=True is
turned off with a note, ranks with different batch counts fail on every rank (no hang).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import _fit_ddp_worker as worker
import pytest
import torch
from _two_ranks import run_two_ranks
from paths import TESTS
from torch.nn import functional as F
from torch.utils.data import DataLoader

import freezeflow as ff

WORKER = TESTS / "_fit_ddp_worker.py"


def launch(out: Path, timeout: float = 120.0) -> tuple[list[dict[str, Any]], list[str]]:
    """Run the worker on 2 ranks; return each rank's results and output."""

    def args(attempt: int) -> list[str]:
        (out / f"try{attempt}").mkdir(parents=True)
        return [str(out / f"try{attempt}")]

    attempt, outputs = run_two_ranks(WORKER, args, "fit()", timeout)
    run_dir = out / f"try{attempt}"
    return [torch.load(run_dir / f"rank{r}.pt", weights_only=False) for r in range(2)], outputs


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict[str, Any]], list[str]]:
    return launch(tmp_path_factory.mktemp("fit_ddp"))


def _differ(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    assert a.keys() == b.keys()
    return sorted(n for n in a if not torch.equal(a[n], b[n]))


# --------------------------------------------------------------------------- 2 ranks


def test_every_parameter_and_buffer_bit_identical_across_ranks(ranks: Any) -> None:
    (r0, r1), _ = ranks
    for scenario in ("staged", "resume", "plain"):
        assert _differ(r0[scenario]["final"], r1[scenario]["final"]) == [], scenario


def test_parameters_unfrozen_at_later_stages_trained(ranks: Any) -> None:
    (r0, _), _ = ranks
    staged = r0["staged"]
    changed = _differ(staged["initial"], staged["final"])
    params = [n for n in staged["initial"] if "running" not in n and "num_batches" not in n]
    # head from the start, body from step 4 (mid-epoch 0), the stem from epoch 2
    assert [n for n in params if n not in changed] == []
    assert {n.split(".")[0] for n in changed} == {"stem", "body", "head"}


def test_schedule_followed_and_history_identical_on_both_ranks(ranks: Any) -> None:
    (r0, r1), _ = ranks
    for scenario in ("staged", "resume", "plain"):
        assert r0[scenario]["history"] == r1[scenario]["history"], scenario
    epochs = [r for r in r0["staged"]["history"] if r["kind"] == "epoch"]
    transitions = [r for r in r0["staged"]["history"] if r["kind"] == "transition"]
    assert [(t["name"], t["epoch"], t["step"]) for t in transitions] == [
        ("head", 0, 0),
        ("body", 0, 4),
        ("all", 2, 10),
    ]
    assert [r["stage"] for r in epochs] == ["body", "body", "all"]
    # 75 samples over 2 ranks: 38 each (DistributedSampler pads one), 5 batches of 8
    assert [r["steps"] for r in epochs] == [5, 10, 15]
    assert all(r["images_per_s"] > 0 for r in epochs)


def test_train_loss_is_the_sample_weighted_mean_over_ranks(ranks: Any) -> None:
    (r0, r1), _ = ranks
    epochs = [r for r in r0["staged"]["history"] if r["kind"] == "epoch"]
    for e, record in enumerate(epochs):
        (s0, n0), (s1, n1) = r0["staged"]["local"][e], r1["staged"]["local"][e]
        assert (n0, n1) == (38, 38)
        assert record["train_loss"] == pytest.approx((s0 + s1) / (n0 + n1), rel=1e-12)
        # every rank's callbacks saw the same reduced logs
        assert r0["staged"]["logs"][e] == r1["staged"]["logs"][e]


def test_val_metrics_equal_one_process_over_the_whole_validation_set(ranks: Any) -> None:
    (r0, _), _ = ranks
    model = worker.Net()
    model.load_state_dict(r0["staged"]["final"])
    model.eval()
    x, y = worker.dataset(worker.N_VAL, 2).tensors
    with torch.no_grad():
        out = model(x)
    last = [r for r in r0["staged"]["history"] if r["kind"] == "epoch"][-1]
    assert last["val_loss"] == pytest.approx(float(F.cross_entropy(out, y)), rel=1e-6)
    correct = int((out.argmax(-1) == y).sum())
    # the count over exactly 37 samples (up to accuracy()'s float32 mean per batch); a
    # padded split would count a sample twice and be off by about 1/38
    assert last["metrics"]["val_accuracy"] * worker.N_VAL == pytest.approx(correct, abs=1e-5)


def test_only_rank_0_prints_and_writes_checkpoints(ranks: Any, tmp_path: Path) -> None:
    (r0, r1), (out0, out1) = ranks
    assert "fit: Net" in out0 and "x 2 processes (DDP)" in out0
    assert "stage 'all' begins at epoch 2" in out0 and "epoch 2 (3/3) [all]" in out0
    for word in ("fit:", "epoch", "stage", "caching"):
        assert word not in out1
    # 3 checkpoints + 3 manifests, all by rank 0; both ranks see them after the barrier
    assert (r0["staged"]["writes"], r1["staged"]["writes"]) == (6, 0)
    files = ["epoch-0001.pt", "epoch-0002.pt", "epoch-0003.pt", "latest.json"]
    assert r0["staged"]["files"] == r1["staged"]["files"] == files


def test_checkpoint_holds_the_plain_model(ranks: Any) -> None:
    (r0, _), _ = ranks
    saved = r0["staged"]["checkpoint"]
    assert list(saved) == list(worker.Net().state_dict())  # no "module." prefix
    assert _differ(saved, r0["staged"]["final"]) == []


def test_resume_on_every_rank_equals_the_uninterrupted_run(ranks: Any) -> None:
    (r0, r1), (out0, _) = ranks
    assert "resuming at epoch 2 batch 0" in out0
    for r in (r0, r1):
        assert _differ(r["resume"]["final"], r0["staged"]["final"]) == []
        # the checkpoint after 2 epochs, then only the 3rd: 1 checkpoint + 1 manifest
        assert r["resume"]["writes"] == (2 if r is r0 else 0)

    def curves(h: list[dict[str, Any]]) -> list[Any]:
        return [
            (r["stage"], r["train_loss"], r["val_loss"], r["metrics"], r["lrs"], r["steps"])
            for r in h
            if r["kind"] == "epoch"
        ]

    assert curves(r0["resume"]["history"]) == curves(r0["staged"]["history"])


def test_plain_ddp_with_a_user_distributed_sampler_and_no_cache(ranks: Any) -> None:
    (r0, r1), _ = ranks
    for r in (r0, r1):
        assert r["plain"]["set_epoch"] == [0, 1]
        epochs = [e for e in r["plain"]["history"] if e["kind"] == "epoch"]
        assert [e["steps"] for e in epochs] == [5, 10]  # 37 per rank (drop_last), batch 8
        notes = [e["message"] for e in r["plain"]["history"] if e["kind"] == "note"]
        assert len(notes) == 1 and notes[0].startswith("feature caching is off under DDP")
        assert r["plain"]["notes"] == notes  # on_note reached the callbacks of every rank
    changed = _differ(r0["staged"]["initial"], r0["plain"]["final"])
    assert "stem.0.weight" in changed and "head.weight" in changed


def test_ranks_with_different_batch_counts_fail_on_every_rank(ranks: Any) -> None:
    (r0, r1), _ = ranks
    for r in (r0, r1):
        assert r["uneven"].startswith("the ranks have different numbers of training batches")
        assert "[3, 4]" in r["uneven"]


# --------------------------------------------------------------------------- 1 process


def test_fit_without_a_process_group_is_unchanged() -> None:
    torch.manual_seed(0)
    model = worker.Net()
    train = DataLoader(worker.dataset(40, 1), batch_size=8, shuffle=True)
    ff.training.seed_everything(0)
    history = ff.fit(model, train, epochs=1, progress=False, device="cpu")
    assert [r["steps"] for r in history.epochs] == [5]  # the whole dataset, not a shard
    assert math.isfinite(history.epochs[0]["train_loss"])
