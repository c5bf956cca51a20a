"""torch.compile across stage transitions: the recompile-limit warning, and layers unfrozen
late really train.

The fast tests use the ``aot_eager`` backend (AOTAutograd traced forward and backward, run
eagerly: the same Dynamo guards and caches as inductor, without the C++ build); the
inductor test is marked slow (about 10 s per compile on a 2-core CPU).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from models import snapshot
from torch import nn

import freezeflow as ff
import freezeflow.compile as ffc
import freezeflow.distributed as ffd


@pytest.fixture(autouse=True)
def _fresh_dynamo() -> Iterator[None]:
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _chain(n: int) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(*[nn.Sequential(nn.Linear(4, 4), nn.Tanh()) for _ in range(n)])


def _gradual(model: nn.Module, n: int, every: int = 2) -> ff.GradualUnfreezer:
    """Unfreeze one more block from the output every ``every`` steps."""
    sched = ff.Schedule(
        [ff.Stage(ff.last(k + 1), lr=0.1, start=ff.at_step(every * k)) for k in range(n)]
    )
    return ff.GradualUnfreezer(model, sched, lambda g: torch.optim.SGD(g, lr=0.1))


def _train(
    net: Callable[[torch.Tensor], torch.Tensor], uf: ff.GradualUnfreezer, steps: int
) -> None:
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(0))
    for _ in range(steps):
        uf.optimizer.zero_grad()
        net(x).pow(2).mean().backward()  # type: ignore[no-untyped-call]
        uf.optimizer.step()
        uf.step()


def test_recompile_limit_reads_dynamo_config() -> None:
    with torch._dynamo.config.patch(recompile_limit=5):
        assert ffc.recompile_limit() == 5


def test_warns_when_the_schedule_has_more_frozen_sets_than_the_recompile_limit() -> None:
    model = _chain(10)
    uf = _gradual(model, 10)
    assert ffc.distinct_trainable_sets(uf) == 10
    limit = ffc.recompile_limit()
    with pytest.warns(ff.FreezeflowWarning, match=rf"10 distinct frozen sets .*limit of {limit}"):
        assert ffc.check_recompile_limit(uf) == 20
    with pytest.warns(ff.FreezeflowWarning, match="10 distinct frozen sets"):
        ffc.compile_for_unfreezing(model, uf, reset_on_transition=False, backend="eager")
    with warnings.catch_warnings():
        warnings.simplefilter("error", ff.FreezeflowWarning)
        assert ffc.check_recompile_limit(uf, reset_on_transition=True) == 2
        assert ffc.check_recompile_limit(_gradual(_chain(3), 3)) == 6
        with torch._dynamo.config.patch(recompile_limit=64):
            ffc.check_recompile_limit(uf)


def test_layer_unfrozen_at_stage_2_trains_under_compile() -> None:
    model = _chain(3)
    uf = _gradual(model, 3, every=3)
    net = ffc.compile_for_unfreezing(model, uf, backend="aot_eager")
    _train(net, uf, 6)  # stages 0 and 1
    assert uf.stage_index == 2 and ffd.unwrap(net) is model
    before = snapshot(model)
    _train(net, uf, 3)  # stage 2: block 0 trains for the first time
    assert net.resets == 2
    after = snapshot(model)
    assert not torch.equal(before["0.0.weight"], after["0.0.weight"])
    assert all(not torch.equal(before[n], after[n]) for n in after)


def _counting_backend() -> tuple[list[int], Any]:
    graphs: list[int] = []

    def backend(gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Any:
        graphs.append(1)
        return gm.forward

    return graphs, backend


@pytest.mark.parametrize("reset", [True, False])
def test_every_stage_is_compiled_only_with_reset_on_transition(reset: bool) -> None:
    """Past the recompile limit Dynamo runs the model eagerly (correct, but uncompiled);
    resetting at each transition gives every stage its own compiled graph."""
    model = _chain(5)
    uf = _gradual(model, 5)
    graphs, backend = _counting_backend()
    start = snapshot(model)
    with torch._dynamo.config.patch(recompile_limit=2), warnings.catch_warnings():
        warnings.simplefilter("ignore", ff.FreezeflowWarning)
        net = ffc.compile_for_unfreezing(model, uf, reset_on_transition=reset, backend=backend)
        _train(net, uf, 10)
    assert len(graphs) == (5 if reset else 2)
    # either way every parameter trained (Dynamo guards on requires_grad in this torch)
    end = snapshot(model)
    assert all(not torch.equal(start[n], end[n]) for n in end)


@pytest.mark.slow
def test_layer_unfrozen_at_stage_2_trains_under_inductor() -> None:
    model = _chain(3)
    uf = _gradual(model, 3, every=2)
    net = ffc.compile_for_unfreezing(model, uf)  # default backend: inductor
    _train(net, uf, 4)
    before = snapshot(model)
    _train(net, uf, 2)
    after = snapshot(model)
    assert uf.stage_index == 2
    assert not torch.equal(before["0.0.weight"], after["0.0.weight"])


def test_a_fresh_torch_compile_per_stage_does_not_reset_the_budget() -> None:
    """Why compile_for_unfreezing resets Dynamo: the compiled variants are cached on the
    forward's code object, so wrapping the model in a new torch.compile at each transition
    still runs out of the recompile budget."""
    model = _chain(5)
    uf = _gradual(model, 5)
    graphs, backend = _counting_backend()
    holder = [torch.compile(model, backend=backend)]
    uf.add_listener(lambda t: holder.__setitem__(0, torch.compile(model, backend=backend)))
    with torch._dynamo.config.patch(recompile_limit=2):
        _train(lambda x: holder[0](x), uf, 10)
    assert len(graphs) == 2
