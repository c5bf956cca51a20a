"""freezeflow.unfreezer.plan: what a schedule will do, before training: per-stage counts,
new blocks, group LRs (the ones the unfreezer sets), overlaps, and the text, HTML and plot
views."""

from __future__ import annotations

import pytest
import torch
from models import (
    STAGE_SETS,
    flags,
    make_net,
    three_stage,
)

import freezeflow as ff

pytestmark = pytest.mark.usefixtures("single_thread")


def test_plan_changes_nothing_and_matches_the_unfreezer() -> None:
    model = make_net()
    before = flags(model)
    p = ff.plan(model, three_stage())
    assert flags(model) == before
    numel = {n: q.numel() for n, q in model.named_parameters()}
    assert [s.n_trainable for s in p.stages] == [sum(numel[n] for n in s) for s in STAGE_SETS]
    assert all(s.total == sum(numel.values()) for s in p.stages)
    assert p.stages[1].new_blocks == ("body.1",)
    assert p.stages[2].new_blocks == ("stem", "body.0")
    # group LRs of the plan are the LRs the unfreezer sets
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    uf = ff.GradualUnfreezer(model, three_stage(), opt)
    for k, stage_plan in enumerate(p.stages):
        if k:
            start = three_stage()[k].start
            assert isinstance(start, ff.schedules.AtEpoch)
            uf.on_epoch_start(start.epoch)
        assert {g[0]: g[1] for g in stage_plan.groups} == pytest.approx(uf.history[-1].lrs)


def test_plan_shows_the_overlaps_of_the_layout() -> None:
    model = make_net()
    uf = ff.GradualUnfreezer(model, three_stage(), torch.optim.SGD(model.parameters(), lr=0.1))
    p = uf.plan()
    assert p.overlaps == uf.layout.overlaps != ()
    assert "select parameters already trainable (stage 2: 5)" in str(p)
    clean = ff.Schedule([ff.Stage("head", lr=1), ff.Stage("body", lr=1, start=1)])
    assert "already trainable" not in str(ff.plan(make_net(), clean))


def test_plan_text_and_html() -> None:
    p = ff.plan(make_net(), three_stage(reset_state=True))
    text = str(p)
    assert repr(p) == text
    lines = text.splitlines()
    assert lines[0] == "Plan for Net: 3 stage(s)"
    assert "[1] stage1: starts at epoch 2, optimizer state reset" in lines
    assert "    trainable: name('body.1')" in lines
    assert "    new blocks: stem, body.0" in lines
    total = sum(q.numel() for q in make_net().parameters())
    assert f"    trainable parameters: {total:,} of {total:,} (100.0%)" in lines
    assert any(line.split()[:2] == ["stage2/stem/decay", "0.000125"] for line in lines)
    assert p.stages[2].percent == 100.0
    html = p._repr_html_()
    assert html.startswith("<p><b>Plan for Net</b></p><table>")
    assert html.count("<tr>") == 1 + sum(len(s.groups) for s in p.stages)
    assert "<td>stage2/body.0/decay</td>" in html


def test_plan_describes_every_trigger_and_estimates_starts() -> None:
    sched = ff.Schedule(
        [
            ff.Stage("head", lr=1),
            ff.Stage("body.1", lr=1, start=ff.at_step(6)),
            ff.Stage("body.0", lr=1, start=ff.at_fraction(0.5)),
            ff.Stage("stem", lr=1, start=ff.on_plateau(2, max_epoch=8)),
        ]
    )
    p = ff.plan(make_net(), sched)
    assert [s.start for s in p.stages] == [
        "epoch 0",
        "step 6",
        "50% of training",
        "val_loss plateau (2 evals, at most epoch 8)",
    ]
    assert p.starts(10, steps_per_epoch=3) == [0.0, 2.0, 5.0, 8.0]
    # a plateau without a cap starts (at the earliest) one epoch after the previous stage
    open_ended = ff.Schedule(
        [ff.Stage("head", lr=1), ff.Stage("body", lr=1, start=ff.on_plateau())]
    )
    assert ff.plan(make_net(), open_ended).starts(10) == [0.0, 1.0]


def test_plan_plot() -> None:
    import matplotlib  # in the test dependency group

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = ff.plan(make_net(), three_stage()).plot(6)
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    labels = [line.get_label() for line in ax.get_lines()]
    assert "stage2/stem/decay" in labels and "stage0/head/decay" in labels
    twin_counts = fig.axes[1].get_lines()[0].get_ydata()
    assert max(twin_counts) == sum(q.numel() for q in make_net().parameters())
    plt.close(fig)
