"""One rank of the 2-process gloo runs of tests/distributed/test_ddp.py (a subprocess; the
process-group helpers and sharding: tests/_distributed_worker.py).

Usage: python _ddp_worker.py OUT_DIR SCENARIO[,SCENARIO...]  with MASTER_ADDR, MASTER_PORT,
RANK, WORLD_SIZE set. Writes OUT_DIR/rank<r>.pt: {scenario: result}.

Scenarios:
- guarded: a 3-stage schedule under wrap_ddp; snapshots of every parameter at the end of each
  stage, and of the initial model.
- guarded_eval: guarded in eval mode (comparable with reference()).
- plain: the same run with DistributedDataParallel built once, before the late unfreezes:
  the first step after the first change is refused on every rank (its new gradients differ
  between the ranks).
- diverge: a plateau trigger fed a different local metric on each rank: the next epoch start
  finds the ranks in different stages and raises on every rank.
- mismatch: rank 1 gets another schedule; the transition's check must raise on every rank.
- compiled: guarded, with the DDP module compiled (aot_eager) after each re-wrap.
- fsdp: FSDP2 fully_shard over a model with frozen and trainable parameters, across a
  transition.
"""

from __future__ import annotations

import os
import sys
import traceback
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

import freezeflow as ff
import freezeflow.distributed as ffd

STEPS_PER_STAGE = 3


class Net(nn.Module):
    """stem (conv + BatchNorm) -> conv + BatchNorm -> linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(self.stem(x))))
        out: torch.Tensor = self.head(x.mean(dim=(2, 3)))
        return out


def make_net() -> Net:
    torch.manual_seed(0)  # the same initial weights on every rank
    return Net()


def schedule(odd: bool = False) -> ff.Schedule:
    middle = ["stem.0"] if odd else ["conv", "bn"]
    return ff.Schedule(
        [
            ff.Stage("head", lr=0.1, name="head"),
            ff.Stage(middle, lr=0.1, start=ff.at_step(STEPS_PER_STAGE), name="middle"),
            ff.Stage(ff.everything(), lr=0.1, start=ff.at_step(2 * STEPS_PER_STAGE), name="all"),
        ]
    )


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def batches(r: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Rank ``r``'s batches (different data on each rank)."""
    gen = torch.Generator().manual_seed(1000 + r)
    out = []
    for _ in range(3 * STEPS_PER_STAGE):
        x = torch.randn(8, 3, 6, 6, generator=gen)
        out.append((x, torch.randint(0, 4, (8,), generator=gen)))
    return out


def reference(world: int = 2) -> dict[int, dict[str, torch.Tensor]]:
    """One process training on every rank's batch at once, in eval mode (BatchNorm uses its
    running statistics, so the result equals data-parallel training with averaged
    gradients up to rounding)."""
    model = make_net()
    uf = ff.GradualUnfreezer(model, schedule(), lambda g: torch.optim.SGD(g, lr=0.1))
    model.eval()
    data = [batches(r) for r in range(world)]
    snaps = {}
    for step in range(3 * STEPS_PER_STAGE):
        x = torch.cat([d[step][0] for d in data])
        y = torch.cat([d[step][1] for d in data])
        uf.optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()  # type: ignore[no-untyped-call]
        uf.optimizer.step()
        if (step + 1) % STEPS_PER_STAGE == 0:
            snaps[uf.stage_index] = snapshot(model)
        uf.step()
    return snaps


def train(
    model: nn.Module, wrap: str, odd: bool = False, eval_mode: bool = False
) -> dict[str, Any]:
    """Train 3 stages x STEPS_PER_STAGE steps on rank-dependent data."""
    uf = ff.GradualUnfreezer(model, schedule(odd), lambda g: torch.optim.SGD(g, lr=0.1))
    net: Any
    if wrap == "guarded":
        net = ffd.wrap_ddp(model, uf)
    elif wrap == "compiled":
        net = ffd.wrap_ddp(model, uf, compile={"backend": "aot_eager"})
    else:
        net = nn.parallel.DistributedDataParallel(model)
    out: dict[str, Any] = {"initial": snapshot(model), "stages": {}, "trainable": {}}
    model.train(not eval_mode)
    for step, (x, y) in enumerate(batches(ffd.rank())):
        uf.optimizer.zero_grad()
        loss = nn.functional.cross_entropy(net(x), y)
        loss.backward()  # type: ignore[no-untyped-call]
        try:
            uf.optimizer.step()
        except ffd.DistributedError as exc:  # the verifier refused the step
            out.update(error=str(exc), type=type(exc).__name__, step=step)
            out["at_error"] = snapshot(model)
            break
        stage = uf.stage_index
        if (step + 1) % STEPS_PER_STAGE == 0:
            out["stages"][stage] = snapshot(model)
            out["trainable"][stage] = sorted(
                n for n, p in model.named_parameters() if p.requires_grad
            )
        uf.step()
    if isinstance(net, ffd.DDPWrapper):
        out["rebuilds"] = net.rebuilds
        out["wrap_seconds"] = net.wrap_seconds
        net.close()
    return out


def scenario_mismatch() -> dict[str, Any]:
    model = make_net()
    odd = ffd.rank() == 1
    try:
        train(model, "guarded", odd=odd)
    except ffd.DistributedError as exc:
        return {"error": str(exc), "type": type(exc).__name__}
    return {"error": None}


def scenario_diverge() -> dict[str, Any]:
    """Ranks whose plateau trigger reads a local metric: rank 0 sees a plateau, rank 1 an
    improving loss; at the next epoch start only rank 0 enters the next stage."""
    model = make_net()
    sched = [
        ff.Stage("head", lr=0.1),
        ff.Stage(["conv", "bn"], lr=0.1, start=ff.on_plateau(patience=1)),
    ]
    uf = ff.GradualUnfreezer(model, sched, lambda g: torch.optim.SGD(g, lr=0.1))
    losses = [[1.0, 1.0, 1.0], [1.0, 0.5, 0.25]][ffd.rank()]
    try:
        for epoch, loss in enumerate(losses):
            uf.on_epoch_start(epoch)
            uf.observe(loss)
        uf.on_epoch_start(len(losses))
    except ffd.DistributedError as exc:
        return {"error": str(exc), "type": type(exc).__name__, "stage": uf.stage_index}
    return {"error": None, "stage": uf.stage_index}


def scenario_fsdp() -> dict[str, Any]:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    model = make_net()
    mesh = init_device_mesh("cpu", (ffd.world_size(),))
    for m in (model.stem, model.conv, model.bn, model.head):
        fully_shard(m, mesh=mesh)
    fully_shard(model, mesh=mesh)
    # fully_shard replaces the parameters (DTensors): build the unfreezer afterwards
    uf = ff.GradualUnfreezer(model, schedule(), lambda g: torch.optim.SGD(g, lr=0.1))
    model.eval()
    before = {n: p.full_tensor().clone() for n, p in model.named_parameters()}  # type: ignore[attr-defined]
    snaps: dict[int, dict[str, torch.Tensor]] = {}
    for _step, (x, y) in enumerate(batches(ffd.rank())):
        uf.optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()  # type: ignore[no-untyped-call]
        uf.optimizer.step()
        if (_step + 1) % STEPS_PER_STAGE == 0:
            snaps[uf.stage_index] = {
                n: p.full_tensor().clone()  # type: ignore[attr-defined]
                for n, p in model.named_parameters()
            }
        uf.step()
    return {"initial": before, "stages": snaps, "stage": uf.stage_index}


def main() -> None:
    out_dir, scenarios = sys.argv[1], sys.argv[2].split(",")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    results: dict[str, Any] = {}
    try:
        for name in scenarios:
            try:
                if name in ("guarded", "plain", "compiled"):
                    results[name] = train(make_net(), name)
                elif name == "guarded_eval":
                    results[name] = train(make_net(), "guarded", eval_mode=True)
                elif name == "mismatch":
                    results[name] = scenario_mismatch()
                elif name == "diverge":
                    results[name] = scenario_diverge()
                elif name == "fsdp":
                    results[name] = scenario_fsdp()
                else:
                    raise ValueError(f"unknown scenario {name!r}")
            except Exception:
                results[name] = {"crash": traceback.format_exc()}
                if name != "fsdp":
                    raise
            dist.barrier()
    finally:
        torch.save(results, os.path.join(out_dir, f"rank{dist.get_rank()}.pt"))
        dist.destroy_process_group()
    # gloo in this torch sometimes aborts at interpreter exit ("terminate called without an
    # active exception") even after destroy_process_group(); skip the teardown
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
