"""FreezeflowCallback with a real lightning.Trainer on CPU (tiny model, tiny synthetic data)."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from models import Ticking, snapshot
from paths import TESTS
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

pytest.importorskip("lightning.pytorch")

import lightning.pytorch as pl

import freezeflow as ff
from freezeflow.errors import (
    OptimizerError,
    TrainingArgumentError,
    TrainingError,
    TrainingTypeError,
)
from freezeflow.integrations.lightning import FreezeflowCallback

EPOCH_BATCHES = 3


def lr_factor(step: int) -> float:
    return 1.0 / (1.0 + 0.1 * step)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Linear(6, 12),
            nn.BatchNorm1d(12),
            nn.ReLU(),
            nn.Linear(12, 12),
            nn.BatchNorm1d(12),
            nn.ReLU(),
        )
        self.head = nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.backbone(x))
        return out


class Lit(pl.LightningModule):
    def __init__(
        self, *, val_values: list[float] | None = None, scheduler: str | None = "step"
    ) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = Net()
        self.val_values = val_values
        self.scheduler = scheduler
        self.configured: torch.optim.Optimizer | None = None

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.log("val_loss", loss)
        if self.val_values is not None:
            self.log("val_metric", self.val_values[self.current_epoch])

    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)
        self.configured = opt
        if self.scheduler is None:
            return opt
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def loader(seed: int = 1) -> DataLoader[Any]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(8 * EPOCH_BATCHES, 6, generator=g)
    y = torch.randint(0, 3, (8 * EPOCH_BATCHES,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=8, shuffle=False)


def trainer(tmp_path: Path, epochs: int, callbacks: list[Any], **kw: Any) -> Any:
    defaults: dict[str, Any] = {
        "max_epochs": epochs,
        "accelerator": "cpu",
        "devices": 1,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "logger": False,
        "enable_checkpointing": False,
        "default_root_dir": tmp_path,
        "num_sanity_val_steps": 0,
        "deterministic": True,
    }
    defaults.update(kw)
    return pl.Trainer(callbacks=callbacks, **defaults)


class Recorder(pl.Callback):
    """Placed after FreezeflowCallback: sees each epoch/step after the transitions."""

    def __init__(self) -> None:
        self.at_epoch_start: dict[int, dict[str, torch.Tensor]] = {}
        self.at_epoch_end: dict[int, dict[str, torch.Tensor]] = {}
        self.trainable: dict[int, set[str]] = {}
        self.lrs: list[tuple[int, int, list[float]]] = []
        self.groups: list[list[str]] = []
        self.at_fit_start: set[str] = set()

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        self.at_fit_start = {n for n, p in pl_module.net.named_parameters() if p.requires_grad}

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        e = trainer.current_epoch
        self.at_epoch_start[e] = snapshot(pl_module.net, buffers=True)
        self.trainable[e] = {n for n, p in pl_module.net.named_parameters() if p.requires_grad}
        self.groups.append([g["name"] for g in trainer.optimizers[0].param_groups])

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, idx: int) -> None:
        opt = trainer.optimizers[0]
        self.lrs.append(
            (trainer.current_epoch, trainer.global_step, [g["lr"] for g in opt.param_groups])
        )

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self.at_epoch_end[trainer.current_epoch] = snapshot(pl_module.net, buffers=True)


def changed(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], prefix: str) -> bool:
    keys = [k for k in a if k.startswith(prefix)]
    assert keys, prefix
    return any(not torch.equal(a[k], b[k]) for k in keys)


TWO_STAGES = [
    ff.Stage("head", lr=0.05, name="head"),
    ff.Stage("backbone.3", lr=0.01, start=2, name="block2"),
]


def test_transitions_at_scheduled_epochs_frozen_bit_identical(tmp_path: Path) -> None:
    lit = Lit()
    cb = FreezeflowCallback(TWO_STAGES, module_attr="net")
    rec = Recorder()
    initial = snapshot(lit.net, buffers=True)
    trainer(tmp_path, 4, [cb, rec]).fit(lit, loader())

    uf = cb.unfreezer
    assert uf is not None
    assert [(t.name, t.epoch) for t in uf.history] == [("head", 0), ("block2", 2)]
    # the optimizer from configure_optimizers was rebuilt in place, never replaced
    assert uf.optimizer is lit.configured
    assert rec.groups[0] == rec.groups[-1] == uf.group_names
    assert rec.trainable[0] == rec.trainable[1] == {"head.weight", "head.bias"}
    assert rec.trainable[2] == {"head.weight", "head.bias", "backbone.3.weight", "backbone.3.bias"}
    # epochs 0-1: the whole backbone is bit-identical, BatchNorm statistics included
    for e in (0, 1):
        assert not changed(initial, rec.at_epoch_end[e], "backbone.")
        assert changed(rec.at_epoch_start[e], rec.at_epoch_end[e], "head.")
    # epochs 2-3: backbone.3 trains, everything still frozen stays bit-identical
    for e in (2, 3):
        assert changed(rec.at_epoch_start[e], rec.at_epoch_end[e], "backbone.3.")
        for frozen in ("backbone.0.", "backbone.1.", "backbone.4."):
            assert not changed(initial, rec.at_epoch_end[e], frozen), frozen
    # frozen BatchNorm layers stay in eval mode through Lightning's train()/eval() switching
    assert not lit.net.backbone[1].training
    assert not lit.net.backbone[4].training


def test_lr_scheduler_keeps_driving_every_group(tmp_path: Path) -> None:
    lit = Lit(scheduler="step")
    cb = FreezeflowCallback(TWO_STAGES, module_attr="net")
    rec = Recorder()
    trainer(tmp_path, 3, [cb, rec]).fit(lit, loader())
    uf = cb.unfreezer
    assert uf is not None
    names = uf.group_names
    stage_of = {g.name: g.stage_index for g in uf.layout.groups}
    assert len(rec.lrs) == 3 * EPOCH_BATCHES
    for epoch, step, lrs in rec.lrs:
        assert len(lrs) == len(names)
        stage = 1 if epoch >= 2 else 0
        for name, lr in zip(names, lrs):
            if stage_of[name] <= stage:  # the group is trainable now
                expected = TWO_STAGES[stage].lr * lr_factor(step)
                assert math.isclose(lr, expected, rel_tol=1e-9), (epoch, step, name, lr)
    sched = lit.trainer.lr_scheduler_configs[0].scheduler
    assert len(sched.base_lrs) == len(names)


def test_resume_keeps_trainable_and_groups_and_matches_uninterrupted(tmp_path: Path) -> None:
    # stage 1 starts on a plateau (after epoch 1's validation): replaying the triggers cannot
    # recover it, only the checkpointed state can
    stages = [
        ff.Stage("head", lr=0.05, name="head"),
        ff.Stage("backbone.3", lr=0.01, start=ff.on_plateau(1, metric="val_metric"), name="b2"),
        ff.Stage("backbone.0", lr=0.005, start=3, name="b1"),
    ]
    from lightning.pytorch.callbacks import ModelCheckpoint

    def run(root: Path, ckpt_path: Path | None) -> tuple[Lit, FreezeflowCallback, Recorder]:
        lit = Lit(val_values=[1.0, 1.1, 1.2, 1.3])
        cb = FreezeflowCallback(stages, module_attr="net")
        rec = Recorder()
        saver = ModelCheckpoint(dirpath=root, filename="{epoch}", save_top_k=-1)
        trainer(root, 4, [cb, rec, saver], enable_checkpointing=True).fit(
            lit, loader(), loader(2), ckpt_path=ckpt_path
        )
        return lit, cb, rec

    full_lit, full_cb, full_rec = run(tmp_path / "full", None)
    assert full_cb.unfreezer is not None
    assert [(t.name, t.epoch) for t in full_cb.unfreezer.history] == [
        ("head", 0),
        ("b2", 2),
        ("b1", 3),
    ]
    ckpt = tmp_path / "full" / "epoch=2.ckpt"
    saved = torch.load(ckpt, weights_only=False)
    (state,) = [v for k, v in saved["callbacks"].items() if "FreezeflowCallback" in k]
    assert state["unfreezer"]["stage_index"] == 1

    res_lit, res_cb, res_rec = run(tmp_path / "resumed", ckpt)
    assert res_cb.unfreezer is not None
    # right after the restore (before any epoch starts) backbone.3 is trainable again
    assert res_rec.at_fit_start == full_rec.trainable[2]
    assert "backbone.3.weight" in res_rec.at_fit_start
    assert sorted(res_rec.trainable) == [3]
    assert res_rec.trainable[3] == full_rec.trainable[3]
    assert res_rec.groups[0] == full_rec.groups[0]
    assert res_cb.unfreezer.history == full_cb.unfreezer.history
    for k, v in full_rec.at_epoch_start[3].items():
        assert torch.equal(v, res_rec.at_epoch_start[3][k]), k
    # the frozen norm layer is still locked in eval mode after the restore
    assert not res_lit.net.backbone[4].training
    # the rest of the run is bit-identical: weights, buffers, LRs, momentum buffers
    final_full, final_res = (
        snapshot(full_lit.net, buffers=True),
        snapshot(res_lit.net, buffers=True),
    )
    for k, v in final_full.items():
        assert torch.equal(v, final_res[k]), k
    assert full_rec.lrs[-EPOCH_BATCHES:] == res_rec.lrs
    opt_full, opt_res = full_cb.unfreezer.optimizer, res_cb.unfreezer.optimizer
    assert [g["name"] for g in opt_full.param_groups] == [g["name"] for g in opt_res.param_groups]
    for pa, pb in zip(
        (p for g in opt_full.param_groups for p in g["params"]),
        (p for g in opt_res.param_groups for p in g["params"]),
    ):
        sa, sb = opt_full.state.get(pa, {}), opt_res.state.get(pb, {})
        assert sa.keys() == sb.keys()
        for key in sa:
            assert torch.equal(sa[key], sb[key])


def test_plateau_trigger_uses_logged_validation_metric(tmp_path: Path) -> None:
    # improves at epoch 1, worse at epoch 2: plateau with patience 1 after epoch 2
    lit = Lit(val_values=[1.0, 0.5, 0.7, 0.9], scheduler=None)
    stages = [
        ff.Stage("head", lr=0.05, name="head"),
        ff.Stage("backbone.3", lr=0.01, start=ff.on_plateau(1, metric="val_metric"), name="ft"),
    ]
    cb = FreezeflowCallback(stages, module_attr="net")
    rec = Recorder()
    trainer(tmp_path, 4, [cb, rec]).fit(lit, loader(), loader(2))
    assert cb.unfreezer is not None
    last = cb.unfreezer.history[-1]
    assert (last.name, last.epoch, last.reason) == ("ft", 3, "plateau of val_metric")
    assert "backbone.3.weight" not in rec.trainable[2]
    assert "backbone.3.weight" in rec.trainable[3]


def test_plateau_metric_missing_is_an_error(tmp_path: Path) -> None:
    stages = [
        ff.Stage("head", lr=0.05),
        ff.Stage("backbone.3", lr=0.01, start=ff.on_plateau(1, metric="val_acc")),
    ]
    with pytest.raises(TrainingError, match="val_acc"):
        trainer(tmp_path, 1, [FreezeflowCallback(stages, module_attr="net")]).fit(
            Lit(scheduler=None), loader(), loader(2)
        )
    cb = FreezeflowCallback(stages, module_attr="net", strict=False)
    with pytest.warns(ff.FreezeflowWarning, match="val_acc"):
        trainer(tmp_path, 1, [cb]).fit(Lit(scheduler=None), loader(), loader(2))


def test_step_trigger_and_module_selection(tmp_path: Path) -> None:
    picked: list[nn.Module] = []

    def pick(m: Any) -> nn.Module:
        net: nn.Module = m.net
        picked.append(net)
        return net

    stages = [ff.Stage("head", lr=0.05), ff.Stage("backbone.3", lr=0.01, start=ff.at_step(4))]
    cb = FreezeflowCallback(stages, module_attr=pick)
    rec = Recorder()
    with warnings.catch_warnings():
        warnings.simplefilter("error", ff.FreezeflowWarning)
        trainer(tmp_path, 2, [cb, rec]).fit(Lit(), loader())
    assert cb.unfreezer is not None and picked
    (t,) = cb.unfreezer.history[1:]
    assert (t.step, t.epoch) == (4, 1)  # after the 4th optimizer step, mid-epoch 1


def test_optimizer_over_other_parameters_is_reported(tmp_path: Path) -> None:
    class Extra(Lit):
        def __init__(self) -> None:
            super().__init__(scheduler=None)
            self.loss_scale = nn.Parameter(torch.ones(()))

    cb = FreezeflowCallback(TWO_STAGES, module_attr="net")
    with pytest.raises(OptimizerError, match="module_attr='net'"):
        trainer(tmp_path, 1, [cb]).fit(Extra(), loader())
    with pytest.raises(TrainingArgumentError, match=r"no attribute 'nope'.*hint"):
        FreezeflowCallback(TWO_STAGES, module_attr="nope").module(Lit())
    with pytest.raises(TrainingTypeError, match=r"gave 3 of type int, not an nn\.Module"):
        FreezeflowCallback(TWO_STAGES, module_attr=lambda m: 3).module(Lit())  # type: ignore[arg-type, return-value]
    with pytest.raises(TrainingTypeError, match="got 3 of type int"):
        FreezeflowCallback(TWO_STAGES, module_attr=3)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- DDP, 2 ranks

WORKER = TESTS / "_lightning_ddp_worker.py"


def test_lightning_ddp_internals_freezeflow_relies_on() -> None:
    """Fails loudly when Lightning changes what _rebuild_ddp (the one function that touches
    DDPStrategy's internals) relies on."""
    import inspect

    from lightning.pytorch.strategies import DDPStrategy

    model_attr = inspect.getattr_static(DDPStrategy, "model")
    assert isinstance(model_attr, property) and model_attr.fset is not None
    assert isinstance(inspect.getattr_static(DDPStrategy, "lightning_module"), property)
    source = inspect.getsource(DDPStrategy.configure_ddp)
    assert "self.model = self._setup_model(self.model)" in source
    assert "self._register_ddp_hooks()" in source
    assert "_pl_static_graph_delay_done" in vars(DDPStrategy(process_group_backend="gloo"))


@pytest.mark.slow
def test_plain_ddp_strategy_all_reduces_only_what_trains(tmp_path: Path) -> None:
    """2 gloo ranks, different data per rank, strategy="ddp": the callback rebuilds the DDP
    wrapper at each stage change, so every step all-reduces exactly the trainable
    parameters, the ranks stay bit-identical after every step, and the run equals the
    find-unused configuration (DDP built once over everything), which all-reduces every
    parameter at every step; a run resumed on both ranks from a checkpoint mid-schedule ends
    as the uninterrupted one. About 12 s (two Lightning imports, three fits)."""
    from _two_ranks import check_stages_and_bytes, run_scenarios

    scenarios = "ddp,find_unused,resume"
    ranks = run_scenarios(WORKER, tmp_path, scenarios, "Lightning DDP", 240)
    ddp, unused = ranks[0]["ddp"], ranks[0]["find_unused"]
    assert ddp["history"] == [("head", 0, 0), ("mid", 1, 3), ("low", 2, 8)]
    assert ddp["ddp_modules"] == 3 and unused["ddp_modules"] == 1
    new = {0: ["head.bias", "head.weight"], 1: ["backbone.3.bias", "backbone.3.weight"]}
    new[2] = ["backbone.0.bias", "backbone.0.weight"]
    for stage in (0, 1, 2):
        assert ddp["trainable"][stage] == sorted(n for k in range(stage + 1) for n in new[k])
    # bit-identical ranks after every step, in both configurations, and the same run
    steps = sorted(ddp["states"])
    assert steps == list(range(12))
    for scenario in ("ddp", "find_unused"):
        a, b = ranks[0][scenario]["states"], ranks[1][scenario]["states"]
        for step in steps:
            assert [k for k in a[step] if not torch.equal(a[step][k], b[step][k])] == [], step
    for step in steps:
        for k, v in ddp["states"][step].items():
            assert torch.equal(v, unused["states"][step][k]), (step, k)
    # each stage trained exactly its parameters, and only they were all-reduced
    check_stages_and_bytes(ddp, unused, steps)
    everything = 4 * sum(ddp["numel"].values())
    assert [ddp["bytes"][s] for s in (0, 3, 8)] == [156, 780, 1116]
    assert everything == 1308
    # resumed on both ranks from the end of epoch 1: the restored stage is re-wrapped (and
    # the next one mid-epoch), the rest of the run is the uninterrupted one, bit for bit
    resumed = ranks[0]["resume"]
    assert resumed["history"] == ddp["history"] and resumed["ddp_modules"] == 2
    assert sorted(resumed["states"]) == list(range(6, 12))
    for step in range(6, 12):
        assert resumed["bytes"][step] == ddp["bytes"][step], step
        for r in ranks:
            for k, v in ddp["states"][step].items():
                assert torch.equal(v, r["resume"]["states"][step][k]), (step, k)


class LoggingLit(Lit):
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = super().training_step(batch, batch_idx)
        self.log("train_loss", loss)
        return loss


def test_auto_schedule_decides_from_the_training_step(tmp_path: Path) -> None:
    lit = LoggingLit(scheduler=None)
    # head, then one of two windows (backbone.0 or backbone.3), chosen by a trial each
    ff.set_blocks(lit.net, [["backbone.0", "backbone.1"], ["backbone.3", "backbone.4"], "head"])
    cb = FreezeflowCallback(ff.auto(3, windows=2), module_attr="net")
    trainer(tmp_path, 3, [cb]).fit(lit, loader(), loader(2))
    uf = cb.unfreezer
    assert uf is not None
    assert [d.stage_index for d in uf.decisions] == [1]
    assert "trial took the probe loss" in uf.decisions[0].text  # measured, with logging muted
    assert "log" not in lit.__dict__
    # the chosen window trains from epoch 1, the other stays frozen, and so do norm layers
    (chosen,) = uf.decisions[0].scales
    trains = {i: lit.net.backbone[i].weight.requires_grad for i in (0, 3)}
    assert trains == {i: chosen.startswith(f"backbone.{i}") for i in (0, 3)}, (chosen, trains)
    assert not lit.net.backbone[1].weight.requires_grad


@pytest.mark.parametrize("strategy", ["DeepSpeedStrategy", "FSDPStrategy"])
def test_engines_that_set_up_the_optimizer_once_are_refused_before_any_change(
    strategy: str,
) -> None:
    """Lightning's DeepSpeed strategy runs on CUDA only (not testable on CPU), and both it and
    FSDP1 set up the optimizer before any callback: the callback refuses them, naming soft
    freezing, with the model and optimizer as they were."""
    from types import SimpleNamespace

    import lightning.pytorch.strategies as strategies
    from snapshot import unchanged

    if strategy == "DeepSpeedStrategy":
        pytest.importorskip("deepspeed")
    built = getattr(strategies, strategy)()
    lit = Lit(scheduler=None)
    opt = lit.configure_optimizers()
    fake = SimpleNamespace(strategy=built, optimizers=[opt], lr_scheduler_configs=[])
    cb = FreezeflowCallback(TWO_STAGES, module_attr="net")
    with unchanged(lit, opt), pytest.raises(TrainingError, match=rf"under Lightning's {strategy}"):
        cb.on_fit_start(fake, lit)  # type: ignore[arg-type]
    assert cb.unfreezer is None


def test_a_time_budget_stops_the_trainer_after_the_last_epoch_that_fits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ff.unfreezer.clock, "time", Ticking())
    cb = FreezeflowCallback(ff.auto(3, windows=1, minutes=1e-6), module_attr="net")
    t = trainer(tmp_path, 3, [cb])
    t.fit(LoggingLit(scheduler=None), loader(), loader(2))
    uf = cb.unfreezer
    assert uf is not None and uf.epoch == 0  # one epoch of three, then the deadline
    assert t.should_stop and t.current_epoch == 1
