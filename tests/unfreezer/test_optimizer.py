"""freezeflow.unfreezer.optimizer: the user's optimizer keeps its object and hyper-parameters
with its groups rebuilt in place, or one is built by a class or factory; everything is checked
before the user's optimizer changes."""

from __future__ import annotations

import pytest
import torch
from models import group_view, make_net, three_stage
from torch import nn
from torch.optim import lr_scheduler as lrs

import freezeflow as ff
from freezeflow.unfreezer.layout import layout
from freezeflow.unfreezer.optimizer import adopt_optimizer

pytestmark = pytest.mark.usefixtures("single_thread")


def test_optimizer_defaults_kept_and_same_object() -> None:
    model = make_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.7, dampening=0.1)
    uf = ff.GradualUnfreezer(model, three_stage(), opt)
    assert uf.optimizer is opt
    assert all(g["momentum"] == 0.7 and g["dampening"] == 0.1 for g in opt.param_groups)
    # the stage's LR, not the optimizer's, is what each group runs at
    assert {g["lr"] for g in opt.param_groups[:2]} == {1e-2}


def test_default_optimizer_is_adamw_and_class_works() -> None:
    uf = ff.GradualUnfreezer(make_net(), three_stage())
    assert type(uf.optimizer) is torch.optim.AdamW
    uf = ff.GradualUnfreezer(make_net(), three_stage(), torch.optim.RMSprop)
    assert type(uf.optimizer) is torch.optim.RMSprop
    assert [g["name"] for g in uf.optimizer.param_groups] == uf.group_names


def _groups(model: nn.Module) -> list[dict[str, object]]:
    return layout(model, three_stage()).optimizer_groups(three_stage())


def test_adopt_replaces_the_groups_in_place_and_returns_the_template() -> None:
    model = make_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.7)
    groups = _groups(model)
    got, template = adopt_optimizer(opt, groups, params=list(model.parameters()), model_name="Net")
    assert got is opt
    assert [g["name"] for g in opt.param_groups] == [g["name"] for g in groups]
    assert template is not None and template["lr"] == 0.5 and template["momentum"] == 0.7
    assert "params" not in template
    # several groups: no template (nothing to extend a scheduler from)
    two = torch.optim.SGD(
        [{"params": model.head.parameters()}, {"params": model.body.parameters()}], lr=0.1
    )
    assert (
        adopt_optimizer(two, _groups(model), params=list(model.parameters()), model_name="Net")[1]
        is None
    )


def test_adopt_builds_from_a_class_or_factory_without_a_template() -> None:
    model = make_net()
    built, template = adopt_optimizer(torch.optim.Adam, _groups(model), params=[], model_name="Net")
    assert type(built) is torch.optim.Adam and template is None
    built, _ = adopt_optimizer(None, _groups(model), params=[], model_name="Net")
    assert type(built) is torch.optim.AdamW


def test_adopt_refuses_before_changing_the_optimizer() -> None:
    model = make_net()
    opt = torch.optim.SGD([*model.parameters(), nn.Parameter(torch.zeros(7, 5))], lr=0.1)
    before = group_view(opt)
    with pytest.raises(ff.OptimizerError, match=r"1 parameter\(s\) that are not in Net"):
        adopt_optimizer(opt, _groups(model), params=list(model.parameters()), model_name="Net")
    assert group_view(opt) == before
    # a scheduler over two groups cannot be mapped to the new ones
    opt = torch.optim.SGD(
        [{"params": model.head.parameters()}, {"params": model.body.parameters()}], lr=0.1
    )
    sched = lrs.StepLR(opt, 2)
    before = group_view(opt)
    with pytest.raises(ff.OptimizerError, match=r"StepLR\.base_lrs has 2 entries"):
        adopt_optimizer(
            opt,
            _groups(model),
            params=list(model.parameters()),
            model_name="Net",
            schedulers=[sched],
        )
    assert group_view(opt) == before


@pytest.mark.parametrize(
    ("optimizer", "match"),
    [(42, r"got 42 of type int"), (lambda groups: "sgd", r"returned 'sgd' of type str, not a")],
    ids=["not-callable", "factory-returns-junk"],
)
def test_adopt_refuses_what_builds_no_optimizer(optimizer: object, match: str) -> None:
    with pytest.raises(ff.errors.OptimizerTypeError, match=match):
        adopt_optimizer(
            optimizer,  # type: ignore[arg-type]
            _groups(make_net()),
            params=[],
            model_name="Net",
        )
