"""ff.auto's measurements (freezeflow.unfreezer.measure): the relative gradient norm of each
block is ``||g|| / ||w||`` of the summed probe loss, a trial leaves the model exactly as it
found it (and hands back what it reached when asked), and the choice among trials takes
the lowest finite loss, the output side on a tie, and refuses when none is finite. (How the
planner uses them: test_auto.py.)"""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
import torch
from models import flags, snapshot
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import freezeflow as ff
from freezeflow.errors import TrainingError
from freezeflow.training.probe import probe_for
from freezeflow.unfreezer.auto import AutoPlanner


def setup() -> tuple[nn.Sequential, AutoPlanner, ff.unfreezer.Probe, list[Any]]:
    torch.manual_seed(0)
    net = nn.Sequential(*[nn.Sequential(nn.Linear(8, 8), nn.Tanh()) for _ in range(4)],
                        nn.Linear(8, 3))  # fmt: skip
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=g)
    y = (x @ torch.randn(8, 3, generator=g)).argmax(1)
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    uf = ff.GradualUnfreezer(net, ff.auto(7, windows=2))
    planner = uf.planner
    assert isinstance(planner, AutoPlanner)
    probe = probe_for(loader, nn.functional.cross_entropy, torch.device("cpu"))
    return net, planner, probe, list(probe.batches(4, 0))


def test_the_relative_gradient_norm_of_a_block_is_that_of_its_parameters() -> None:
    net, planner, probe, batches = setup()
    before, before_flags = snapshot(net), flags(net)
    rgn = planner._rgn(net, probe, batches)
    after = snapshot(net)
    assert all(torch.equal(before[n], after[n]) for n in before)
    assert flags(net) == before_flags and all(p.grad is None for p in net.parameters())
    # by hand, on a copy: every block trainable, the summed loss over the batches, one backward
    twin = copy.deepcopy(net)
    twin.requires_grad_(True)
    total = torch.stack([probe.loss(twin, b) for b in batches]).sum()
    total.backward()  # type: ignore[no-untyped-call]
    for block in range(4):
        params = list(twin[block].parameters())
        g2 = sum(float(p.grad.double().pow(2).sum()) for p in params if p.grad is not None)
        w2 = sum(float(p.detach().double().pow(2).sum()) for p in params)
        assert rgn[block] == pytest.approx(math.sqrt(g2 / w2), rel=1e-5)


def test_a_trial_leaves_the_model_as_it_found_it_and_hands_back_what_it_reached() -> None:
    net, planner, probe, batches = setup()
    before, before_flags = snapshot(net), flags(net)
    window = planner.window_params(0)
    reached: list[tuple[torch.Tensor, torch.Tensor]] = []
    loss = planner._trial(net, probe, window, 1e-2, batches[:2], batches[2:], 0, reached)
    assert math.isfinite(loss)
    after = snapshot(net)
    assert all(torch.equal(before[n], after[n]) for n in before)  # bit for bit
    assert flags(net) == before_flags
    assert all(p.grad is None for p in net.parameters())
    trained = [planner.layout.params[j] for j in sorted(window)]
    moved = [value for t, value in reached if any(t is p for p in trained)]
    assert len(moved) == len(trained)
    assert any(not torch.equal(v, p) for v, p in zip(moved, trained))  # it did train


def test_the_choice_among_trials_is_the_lowest_finite_loss_the_output_side_on_a_tie() -> None:
    _, planner, _, _ = setup()
    assert planner._best(1, {0: 0.5, 1: 0.7}, 1e-3) == 0
    assert planner._best(1, {0: 0.5, 1: 0.5}, 1e-3) == 1  # nearer the output
    assert planner._best(1, {0: math.nan, 1: 0.9}, 1e-3) == 1  # a diverged trial never wins
    with pytest.raises(TrainingError, match=r"every trial of stage 1 ended with a non-finite"):
        planner._best(1, {0: math.nan, 1: math.inf}, 1e-3)
