"""freezeflow.unfreezer.verify: the first optimizer step after a stage change is refused when
a newly trainable block got no gradient or the optimizer does not hold it (the step changes
nothing then); a partly silent block is warned about; a user's own torch.compile through a
transition trains the new block; verify=False turns the check off."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
from torch import nn

import freezeflow as ff
from freezeflow.errors import OptimizerTypeError, TrainingError

pytestmark = pytest.mark.usefixtures("single_thread")


class Net(nn.Module):
    """Three blocks; ``stale`` runs block 0 without autograd, as a graph traced while it was
    frozen would."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 8))
        self.spare = nn.Linear(8, 8)  # in block 1's module, used only when asked
        self.head = nn.Linear(8, 2)
        self.stale = False
        self.use_spare = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stale:
            with torch.no_grad():
                h = self.body[0](x)
        else:
            h = self.body[0](x)
        h = torch.relu(self.body[1](h))
        if self.use_spare:
            h = h + self.spare(h)
        out: torch.Tensor = self.head(h)
        return out


def setup(**kw: Any) -> tuple[Net, torch.optim.Optimizer, ff.GradualUnfreezer]:
    net = Net()
    ff.set_blocks(net, [["body.0"], ["body.1", "spare"], ["head"]])
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    sched = [ff.Stage("head", lr=0.1), ff.Stage(ff.everything(), lr=0.1, start=1)]
    return net, opt, ff.GradualUnfreezer(net, sched, opt, **kw)


def step(net: Net, opt: torch.optim.Optimizer, uf: ff.GradualUnfreezer) -> None:
    x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
    opt.zero_grad()
    nn.functional.cross_entropy(net(x), y).backward()  # type: ignore[no-untyped-call]
    opt.step()
    uf.step()


def test_a_block_without_gradients_after_a_change_stops_the_step() -> None:
    net, opt, uf = setup()
    uf.on_epoch_start(0)
    step(net, opt, uf)
    uf.on_epoch_start(1)  # body and spare become trainable
    net.stale = True
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    with pytest.raises(
        TrainingError,
        match=r"stage 1 .*block\(s\) 'body\.0'.*no gradient.*torch\.compile.*verify=False",
    ):
        step(net, opt, uf)
    assert all(torch.equal(p, before[n]) for n, p in net.named_parameters())  # step refused
    net.stale = False
    step(net, opt, uf)  # checked once: later steps run unchecked
    first = net.body[0]
    assert isinstance(first, nn.Linear)
    assert not torch.equal(first.weight, before["body.0.weight"])


def test_an_optimizer_that_lost_the_new_parameters_stops_the_step() -> None:
    net, opt, uf = setup()
    uf.on_epoch_start(0)
    step(net, opt, uf)
    uf.on_epoch_start(1)
    for g in opt.param_groups:  # as an optimizer rebuilt from the trainable parameters would
        g["params"] = [p for p in g["params"] if p is not net.body[0].weight]
    with pytest.raises(TrainingError, match=r"'body\.0\.weight'.*optimizer does not hold them"):
        step(net, opt, uf)


def test_part_of_a_block_without_gradients_is_warned_about_once() -> None:
    net, opt, uf = setup()
    net.use_spare = False
    uf.on_epoch_start(0)
    step(net, opt, uf)
    uf.on_epoch_start(1)
    with pytest.warns(ff.FreezeflowWarning, match=r"'spare\.weight'.*no gradient.*unused"):
        step(net, opt, uf)


def test_verify_false_turns_it_off_and_takes_only_a_bool() -> None:
    net, opt, uf = setup(verify=False)
    uf.on_epoch_start(0)
    step(net, opt, uf)
    uf.on_epoch_start(1)
    net.stale = True
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        step(net, opt, uf)
    with pytest.raises(OptimizerTypeError, match=r"verify='yes'.*True or False"):
        setup(verify="yes")


def test_a_users_own_compiled_model_trains_the_block_unfrozen_later() -> None:
    # the pytorch #139476 pattern: compile once, unfreeze later; the newly unfrozen weights
    # must move (or the verifier must stop the step)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    uf = ff.GradualUnfreezer(net, [ff.Stage("2", lr=0.1), ff.Stage("0", lr=0.1, start=1)], opt)
    compiled: Any = torch.compile(net, backend="aot_eager")
    x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
    first = net[0]
    assert isinstance(first, nn.Linear)
    for epoch in range(2):
        uf.on_epoch_start(epoch)
        before = first.weight.detach().clone()
        opt.zero_grad()
        nn.functional.cross_entropy(compiled(x), y).backward()  # type: ignore[no-untyped-call]
        opt.step()
        uf.step()
    assert not torch.equal(first.weight, before)
    torch.compiler.reset()


def test_a_step_with_a_closure_is_checked_once_its_gradients_exist() -> None:
    # Lightning runs forward and backward inside optimizer.step(closure)
    net, opt, uf = setup()

    def closure_step(stale: bool) -> None:
        net.stale = stale
        x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))

        def closure() -> float:
            opt.zero_grad()
            loss = nn.functional.cross_entropy(net(x), y)
            loss.backward()  # type: ignore[no-untyped-call]
            return float(loss)

        opt.step(closure)
        uf.step()

    uf.on_epoch_start(0)
    closure_step(False)
    uf.on_epoch_start(1)
    closure_step(False)  # healthy: gradients exist after the closure ran
    uf2 = setup()
    net, opt, uf = uf2
    uf.on_epoch_start(0)
    closure_step(False)
    uf.on_epoch_start(1)
    with pytest.raises(TrainingError, match=r"'body\.0'.*no gradient"):
        closure_step(True)


@pytest.mark.parametrize("reentrant", [True, False], ids=["reentrant", "non-reentrant"])
def test_hf_gradient_checkpointing_over_frozen_embeddings(reentrant: bool) -> None:
    """transformers #21381: with the embeddings frozen, reentrant gradient checkpointing
    gives the checkpointed layers no gradient (their input does not require one). The layer
    unfrozen later either trains (non-reentrant) or the verifier stops the first step after
    the change, naming it, before the optimizer changes anything (reentrant)."""
    pytest.importorskip("transformers")
    from _hf_ddp_worker import bert  # a tiny random BERT

    model = bert()
    kwargs = {"use_reentrant": reentrant}
    if hasattr(model, "activation_checkpointing_enable"):  # its name from transformers 5
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    schedule = [ff.Stage(ff.last(1), lr=0.1), ff.Stage(ff.last(2), lr=0.1, start=1)]
    uf = ff.GradualUnfreezer(model, schedule, opt)
    model.train()
    x = torch.randint(0, 50, (4, 8))
    y = torch.tensor([0, 1, 0, 1])
    layer = model.bert.encoder.layer[1].output.dense.weight

    def one_step() -> None:
        opt.zero_grad()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # torch: no input requires grad
            model(input_ids=x, labels=y).loss.backward()
        opt.step()
        uf.step()

    uf.on_epoch_start(0)
    one_step()
    uf.on_epoch_start(1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    error: TrainingError | None = None
    try:
        one_step()
    except TrainingError as exc:
        error = exc
    if error is not None:  # the layer got no gradient: stopped before the step
        assert reentrant, error
        assert "bert.encoder.layer.1" in str(error) and "reentrant" in str(error)
        assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    else:  # it trains: the newly unfrozen layer moved
        assert not torch.equal(layer, before["bert.encoder.layer.1.output.dense.weight"])


class Checkpointed(nn.Module):
    """A frozen input layer, then a block run under torch's reentrant checkpointing."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Linear(4, 8)
        self.block = nn.Linear(8, 8)
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.utils.checkpoint.checkpoint(self.block, self.embed(x), use_reentrant=True)
        out: torch.Tensor = self.head(torch.relu(h))
        return out


def test_reentrant_checkpointing_over_frozen_inputs_stops_the_step() -> None:
    """The classic form of the trap, whatever transformers does about it: torch's reentrant
    checkpoint over an input that requires no gradient gives the block none."""
    net = Checkpointed()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    sched = [ff.Stage("head", lr=0.1), ff.Stage("block", lr=0.1, start=1)]
    uf = ff.GradualUnfreezer(net, sched, opt)
    x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
    uf.on_epoch_start(1)
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    opt.zero_grad()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch: no input requires grad
        nn.functional.cross_entropy(net(x), y).backward()  # type: ignore[no-untyped-call]
    with pytest.raises(TrainingError, match=r"'block'.*no gradient.*reentrant gradient"):
        opt.step()
    assert all(torch.equal(p, before[n]) for n, p in net.named_parameters())
