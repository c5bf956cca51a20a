"""freezeflow.distributed.ddp: DDP re-wrapping at stage transitions, the rank-consistency
check, and FSDP2 across a transition (the process-group helpers and sharding:
test_process_group.py, test_sharding.py).

The multi-process tests start 2 gloo ranks on CPU as subprocesses (tests/_ddp_worker.py)
once per module, run every scenario in that process group, and compare what each rank saved.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import _ddp_worker as worker
import pytest
import torch
from _two_ranks import run_two_ranks
from paths import TESTS
from torch import nn

import freezeflow as ff
import freezeflow.distributed as ffd

WORKER = TESTS / "_ddp_worker.py"
FAST = "guarded,guarded_eval,plain,mismatch,diverge,fsdp"


def launch(scenarios: str, out: Path, timeout: float = 150.0) -> list[dict[str, Any]]:
    """Run the worker on 2 ranks and load what each rank saved."""
    out.mkdir(parents=True, exist_ok=True)
    run_two_ranks(WORKER, lambda _: [str(out), scenarios], repr(scenarios), timeout)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return launch(FAST, tmp_path_factory.mktemp("ddp"))


def _differ(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    return sorted(n for n in a if not torch.equal(a[n], b[n]))


STAGE_NEW = {
    0: ["head.bias", "head.weight"],
    1: ["bn.bias", "bn.weight", "conv.bias", "conv.weight"],
    2: ["stem.0.bias", "stem.0.weight", "stem.1.bias", "stem.1.weight"],
}


# --------------------------------------------------------------------------- 2 ranks


def test_every_parameter_bit_identical_across_ranks_after_every_stage(
    ranks: list[dict[str, Any]],
) -> None:
    r0, r1 = ranks[0]["guarded"], ranks[1]["guarded"]
    assert r0["rebuilds"] == 3  # the first wrap + one per transition
    prev = r0["initial"]
    for stage in (0, 1, 2):
        assert _differ(r0["stages"][stage], r1["stages"][stage]) == [], stage
        changed = _differ(prev, r0["stages"][stage])
        # everything trainable in this stage moved (newly unfrozen ones included) ...
        trainable = sorted(n for k in range(stage + 1) for n in STAGE_NEW[k])
        assert changed == trainable, stage
        assert r0["trainable"][stage] == trainable
        # ... and the still-frozen parameters never did
        frozen = [n for k in range(stage + 1, 3) for n in STAGE_NEW[k]]
        assert _differ({n: prev[n] for n in frozen}, r0["initial"]) == []
        prev = r0["stages"][stage]


def test_ddp_gradients_are_averaged_like_one_big_batch(ranks: list[dict[str, Any]]) -> None:
    ref = worker.reference()
    for stage in (0, 1, 2):
        got = ranks[0]["guarded_eval"]["stages"][stage]
        assert _differ(got, ranks[1]["guarded_eval"]["stages"][stage]) == []
        for n, t in got.items():
            torch.testing.assert_close(t, ref[stage][n], rtol=1e-5, atol=1e-6, msg=n)


def test_plain_ddp_built_once_is_stopped_at_the_first_step_after_a_late_unfreeze(
    ranks: list[dict[str, Any]],
) -> None:
    """The failure wrap_ddp prevents: DDP built before the unfreeze never all-reduces those
    parameters, so with different data per rank the replicas would drift apart silently.
    The transition check compares the new gradients across the ranks and refuses the first
    step after the change on every rank, with the same message, before it moves anything."""
    r0, r1 = ranks[0]["plain"], ranks[1]["plain"]
    assert _differ(r0["stages"][0], r1["stages"][0]) == []
    for r in (r0, r1):
        assert r["type"] == "DistributedError"
        assert r["step"] == worker.STEPS_PER_STAGE  # the first step of stage 1
        assert "their gradients differ between the ranks" in r["error"]
        assert "DistributedDataParallel wrapper built before the change" in r["error"]
        assert "hint: ff.distributed.wrap_ddp" in r["error"]
        assert _differ(r["at_error"], r["stages"][0]) == []  # the refused step changed nothing
    assert r0["error"] == r1["error"]


def test_ranks_in_different_stages_are_stopped_at_the_epoch_start(
    ranks: list[dict[str, Any]],
) -> None:
    """A plateau trigger fed each rank's own metric: the epoch start that would put the
    ranks in different stages raises on every rank, naming each rank's stage."""
    r0, r1 = ranks[0]["diverge"], ranks[1]["diverge"]
    assert (r0["stage"], r1["stage"]) == (1, 0)
    for r in (r0, r1):
        assert r["type"] == "DistributedError"
        assert "rank 0: stage 1 ('stage1')" in r["error"]
        assert "rank 1: stage 0 ('stage0')" in r["error"]
        assert "hint: a plateau trigger must read a metric reduced over the ranks" in r["error"]
    assert r0["error"] == r1["error"]


def test_ranks_that_disagree_on_the_trainable_set_raise_on_every_rank(
    ranks: list[dict[str, Any]],
) -> None:
    for r in (0, 1):
        res = ranks[r]["mismatch"]
        assert res["type"] == "DistributedError"
        msg = res["error"]
        assert f"rank {r} checking" in msg
        assert "ranks [1] differ from rank 0" in msg
        assert "rank 0: stage 1 ('middle'), 6 trainable tensors" in msg
        assert "rank 1: stage 1 ('middle'), 4 trainable tensors" in msg
        assert "hint:" in msg


def test_fsdp2_mixed_frozen_and_trainable_across_transitions(
    ranks: list[dict[str, Any]],
) -> None:
    r0, r1 = ranks[0]["fsdp"], ranks[1]["fsdp"]
    assert "crash" not in r0, r0.get("crash")
    ref = worker.reference()
    prev = r0["initial"]
    for stage in (0, 1, 2):
        assert _differ(r0["stages"][stage], r1["stages"][stage]) == []
        trainable = sorted(n for k in range(stage + 1) for n in STAGE_NEW[k])
        assert _differ(prev, r0["stages"][stage]) == trainable
        for n, t in r0["stages"][stage].items():
            torch.testing.assert_close(t, ref[stage][n], rtol=1e-5, atol=1e-6, msg=n)
        prev = r0["stages"][stage]


@pytest.mark.slow
def test_ddp_compiled_after_each_rewrap(tmp_path: Path) -> None:
    r0, r1 = (r["compiled"] for r in launch("compiled", tmp_path))
    prev = r0["initial"]
    for stage in (0, 1, 2):
        assert _differ(r0["stages"][stage], r1["stages"][stage]) == []
        trainable = sorted(n for k in range(stage + 1) for n in STAGE_NEW[k])
        assert _differ(prev, r0["stages"][stage]) == trainable
        prev = r0["stages"][stage]


# --------------------------------------------------------------------------- 1 process


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))


def _unfreezer(model: nn.Module) -> ff.GradualUnfreezer:
    sched = ff.Schedule(
        [
            ff.Stage("4", lr=0.1),
            ff.Stage("2", lr=0.1, start=ff.at_step(1)),
            ff.Stage("0", lr=0.1, start=ff.at_step(2)),
        ]
    )
    return ff.GradualUnfreezer(model, sched, lambda g: torch.optim.SGD(g, lr=0.1))


def test_verify_trainable_is_a_noop_without_a_process_group() -> None:
    ffd.verify_trainable(_mlp(), 3)  # (the process-group helpers: test_process_group.py)


def test_wrapper_without_a_process_group_calls_the_model_and_follows_transitions() -> None:
    model = _mlp()
    uf = _unfreezer(model)
    net = ffd.wrap_ddp(model, uf)
    assert net.ddp is None and net.module is model
    x = torch.randn(3, 4)
    torch.testing.assert_close(net(x), model(x))
    uf.step()
    uf.step()
    assert net.rebuilds == 3 and net.stage_index == 2
    assert net.state_dict().keys() == model.state_dict().keys()
    assert ffd.unwrap(net) is model
    assert "stage 2" in repr(net)
    # a change behind the unfreezer's back is picked up at the next forward
    ff.freeze(model, "0")
    net(x)
    assert net.rebuilds == 4
    net.eval()
    assert not model.training
    with net.no_sync():
        pass


def test_current_is_the_module_to_call_and_follows_manual_changes() -> None:
    model = _mlp()
    uf = _unfreezer(model)
    net = ffd.wrap_ddp(model, uf)
    assert net.current() is model and net.rebuilds == 1
    assert net.current() is model and net.rebuilds == 1  # nothing changed: no re-wrap
    ff.freeze(model, "4")
    assert net.current() is model and net.rebuilds == 2  # changed behind its back
    net.close()
    with pytest.raises(ffd.DistributedError, match="closed"):
        net.current()


def test_wrap_rejects_ddp_modules_and_foreign_unfreezers() -> None:
    model = _mlp()
    uf = _unfreezer(model)
    with pytest.raises(ff.errors.TrainingArgumentError, match="plain model, not a DDPWrapper"):
        ffd.wrap_ddp(ffd.wrap_ddp(model, uf))  # type: ignore[arg-type]
    with pytest.raises(ff.errors.TrainingArgumentError, match="another model"):
        ffd.wrap_ddp(_mlp(), uf)
    with pytest.raises(ff.errors.TrainingTypeError, match="got 'model' of type str"):
        ffd.wrap_ddp("model")  # type: ignore[arg-type]
    assert issubclass(ffd.DistributedError, ff.FreezeflowError)


def test_fingerprint_follows_the_trainable_set_and_stage() -> None:
    model = _mlp()
    uf = _unfreezer(model)
    a = ffd.trainable_fingerprint(model, uf.stage_index)
    assert a == ffd.trainable_fingerprint(_mlp_frozen_like(model), 0)
    uf.step()
    b = ffd.trainable_fingerprint(model, uf.stage_index)
    assert a[0] == 0 and b[0] == 1 and a[1] != b[1] and (a[2], b[2]) == (2, 4)
    assert ffd.trainable_fingerprint(model, 0)[1:] == b[1:]


def _mlp_frozen_like(model: nn.Module) -> nn.Module:
    other = _mlp()
    for (_, p), (_, q) in zip(model.named_parameters(), other.named_parameters()):
        q.requires_grad_(p.requires_grad)
    return other


def test_unwrap_nested_wrappers() -> None:
    model = _mlp()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compiled = torch.compile(model, backend="eager")
    assert ffd.unwrap(compiled) is model
    with pytest.raises(ff.errors.TrainingTypeError, match="got 42 of type int"):
        ffd.unwrap(42)
