"""fit(): learning, stage changes, frozen parameters, its arguments, faults, Ctrl-C."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from _fit_worker import (
    make_loaders,
    make_model,
    make_schedule,
    tiny_data,
    tiny_model,
    tiny_schedule,
)
from models import snapshot
from snapshot import Snapshot
from torch import nn

import freezeflow as ff
from freezeflow.errors import (
    OptimizerError,
    TrainingArgumentError,
    TrainingError,
    TrainingTypeError,
)
from freezeflow.training.checkpoint_files import find_checkpoint, load_checkpoint
from freezeflow.training.history import History
from freezeflow.training.loop import fit
from freezeflow.training.run import Callback, Run
from freezeflow.training.setup import seed_everything

pytestmark = pytest.mark.usefixtures("single_thread")


# --------------------------------------------------------------------------- learning


class FrozenWatch(Callback):
    """Snapshots the state at the start, and checks at the end of every head-only epoch
    that the backbone (weights and BatchNorm statistics) is bit-identical."""

    def __init__(self) -> None:
        self.checked = 0

    def on_train_start(self, run: Run) -> None:
        self.start = snapshot(run.model, buffers=True)

    def on_epoch_end(self, run: Run) -> None:
        if run.progress.history.epochs[-1]["stage"] != "head":
            return
        now = snapshot(run.model, buffers=True)
        for k, v in now.items():
            if k.startswith("head."):
                assert not torch.equal(v, self.start[k]), k
            else:
                assert torch.equal(v, self.start[k]), k
        self.checked += 1


def test_learns_and_records_stage_changes_and_keeps_frozen_params_exact() -> None:
    train, val = make_loaders()
    model = make_model()
    watch = FrozenWatch()
    seed_everything(0)
    history = fit(
        model,
        train,
        schedule=make_schedule(),
        val_data=val,
        epochs=5,
        callbacks=[watch],
        progress=False,
    )
    assert watch.checked == 2  # epochs 0 and 1 train the head alone
    assert [r["stage"] for r in history.epochs] == ["head", "head", "all", "all", "all"]
    assert [(t["name"], t["epoch"], t["reason"]) for t in history.transitions] == [
        ("head", 0, "start"),
        ("all", 2, "epoch 2"),
    ]
    assert history.transitions[1]["step"] == 2 * len(train)
    assert history.epochs[-1]["metrics"]["val_accuracy"] > 0.7  # chance is 1/3
    assert history.epochs[-1]["train_loss"] < history.epochs[0]["train_loss"]
    trainable = [r["n_trainable"] for r in history.epochs]
    assert trainable[0] == sum(p.numel() for p in model.head.parameters())
    assert trainable[-1] == sum(p.numel() for p in model.parameters())
    assert [r["steps"] for r in history.epochs] == [len(train) * (k + 1) for k in range(5)]


def test_train_loss_is_the_mean_over_samples() -> None:
    data = tiny_data()
    seen: list[float] = []

    class Losses(Callback):
        def on_batch_end(self, run: Run) -> None:
            seen.append(run.progress.loss)

    seed_everything(0)
    history = fit(tiny_model(), data, epochs=1, callbacks=[Losses()], progress=False)
    assert history.epochs[0]["train_loss"] == pytest.approx(sum(seen) / len(seen))
    assert history.epochs[0]["val_loss"] is None


def test_accumulate_and_batch_scheduler() -> None:
    data = tiny_data(n=80)  # 5 batches: 2 full windows of 2, then a partial one
    lrs: list[float] = []

    class Lr(Callback):
        def on_batch_end(self, run: Run) -> None:
            lrs.append(run.optimizer.param_groups[0]["lr"])

    history = fit(
        tiny_model(),
        data,
        epochs=2,
        accumulate=2,
        optimizer=lambda ps: torch.optim.SGD(ps, lr=0.1),
        scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5),
        scheduler_interval="batch",
        callbacks=[Lr()],
        progress=False,
    )
    assert [r["steps"] for r in history.epochs] == [3, 6]
    assert lrs[:5] == pytest.approx([0.1, 0.05, 0.05, 0.025, 0.025])


def test_epoch_scheduler_is_stepped_after_recording() -> None:
    history = fit(
        tiny_model(),
        tiny_data(),
        schedule=tiny_schedule(),
        epochs=3,
        scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.1),
        progress=False,
    )
    lr = [r["lrs"]["stage0/decay"] for r in history.epochs]
    assert lr == pytest.approx([1e-2, 1e-3, 1e-4])


def test_reduce_on_plateau_gets_the_val_loss() -> None:
    got: list[float] = []

    class Spy(torch.optim.lr_scheduler.ReduceLROnPlateau):
        def step(self, metrics: Any, epoch: Any = None) -> None:  # type: ignore[override]
            got.append(float(metrics))
            super().step(metrics)

    history = fit(
        tiny_model(),
        tiny_data(),
        val_data=tiny_data(32),
        epochs=2,
        scheduler=lambda opt: Spy(opt),
        progress=False,
    )
    assert got == [r["val_loss"] for r in history.epochs]


def test_plateau_trigger_observes_the_named_metric() -> None:
    sched = ff.Schedule(
        [
            ff.Stage("2", lr=1e-2),
            ff.Stage("0", lr=1e-2, start=ff.on_plateau(1, mode="min", metric="train_loss")),
        ]
    )

    class Flat(Callback):  # make train_loss never improve after the first epoch
        def on_evaluate(self, run: Run, logs: dict[str, float]) -> None:
            logs["train_loss"] = 1.0

    history = fit(
        tiny_model(), tiny_data(), schedule=sched, epochs=4, callbacks=[Flat()], progress=False
    )
    assert [(t["name"], t["epoch"]) for t in history.transitions] == [("stage0", 0), ("stage1", 2)]
    assert history.transitions[1]["reason"] == "plateau of train_loss"


# --------------------------------------------------------------------------- faults


def test_nan_loss_names_epoch_and_batch_and_saves_nothing(tmp_path: Path) -> None:
    calls = 0

    def flaky(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        calls += 1
        loss = nn.functional.cross_entropy(out, y)
        # call 1: the check of the first batch; then epoch 1 (resumed), batches 1 and 2
        return loss * math.nan if calls == 4 else loss

    model = tiny_model()
    fit(model, tiny_data(), epochs=1, callbacks=[ff.Checkpoint(tmp_path)], progress=False)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(TrainingError, match=r"loss is nan at epoch 1, batch 2") as info:
        fit(
            model,
            tiny_data(),
            epochs=3,
            loss_fn=flaky,
            callbacks=[ff.Checkpoint(tmp_path, resume=True)],
            progress=False,
        )
    assert "lower the learning rate" in str(info.value)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


@pytest.mark.parametrize(
    ("data", "error", "match"),
    [
        ([], TrainingArgumentError, "train_data is empty"),
        (
            torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.zeros(0, 4))),
            TrainingArgumentError,
            "empty",
        ),
        ((b for b in tiny_data()), TrainingTypeError, "re-iterable.*got generator"),
    ],
    ids=["empty-list", "empty-loader", "generator"],
)
def test_bad_training_data(data: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        fit(tiny_model(), data, epochs=1, progress=False)


def test_iterable_without_len_that_yields_nothing() -> None:
    class Nothing:
        def __iter__(self) -> Iterator[Any]:
            return iter(())

    with pytest.raises(TrainingError, match=r"train_data \(Nothing\) yielded no batch; expected"):
        fit(tiny_model(), Nothing(), epochs=1, progress=False)


def test_batch_that_is_not_a_pair() -> None:
    match = r"\(inputs, targets\) pair, got a tuple of length 3"
    with pytest.raises(TrainingTypeError, match=match):
        fit(tiny_model(), [(torch.zeros(2, 4),) * 3], epochs=1, progress=False)


def test_non_scalar_loss() -> None:
    def per_sample(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(out, y, reduction="none")

    with pytest.raises(TrainingError, match=r"shape \(16,\) on the first .*scalar.*reduction"):
        fit(tiny_model(), tiny_data(), epochs=1, loss_fn=per_sample, progress=False)


def test_device_mismatch() -> None:
    class Stray(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 2)
            self.offset = torch.zeros(2, device="meta")  # not a buffer: never moved

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y: torch.Tensor = self.fc(x) + self.offset
            return y

    with pytest.raises(TrainingError, match=r"different devices.*registered buffer"):
        fit(Stray(), tiny_data(), epochs=1, device="cpu", progress=False)


def test_bad_arguments() -> None:
    model = tiny_model()
    uf = ff.GradualUnfreezer(model, tiny_schedule())
    with pytest.raises(TrainingArgumentError, match="unfreezer= and also optimizer="):
        fit(model, tiny_data(), epochs=1, unfreezer=uf, optimizer=torch.optim.SGD)
    with pytest.raises(TrainingArgumentError, match="unfreezer= and also schedule="):
        fit(model, tiny_data(), epochs=1, unfreezer=uf, schedule=tiny_schedule())
    with pytest.raises(TrainingArgumentError, match="another model"):
        fit(tiny_model(), tiny_data(), epochs=1, unfreezer=uf)
    with pytest.raises(TrainingTypeError, match=r"schedule=\) got a GradualUnfreezer.*unfreezer="):
        fit(model, tiny_data(), epochs=1, schedule=uf)  # type: ignore[arg-type]
    with pytest.raises(TrainingTypeError, match=r"fit\(unfreezer=.*expected a GradualUnfreezer"):
        fit(model, tiny_data(), epochs=1, unfreezer=tiny_schedule())  # type: ignore[arg-type]
    with pytest.raises(TrainingArgumentError, match=r"fit\(epochs=\).*got 0"):
        fit(model, tiny_data(), epochs=0)
    with pytest.raises(TrainingTypeError, match=r"fit\(accumulate=\).*got True of type bool"):
        fit(model, tiny_data(), epochs=1, accumulate=True)
    with pytest.raises(TrainingArgumentError, match="amp='fp8'"):
        fit(model, tiny_data(), epochs=1, amp="fp8")  # type: ignore[arg-type]
    step_lr = lambda opt: torch.optim.lr_scheduler.StepLR(opt, 1)  # noqa: E731
    with pytest.raises(TrainingTypeError, match=r"not a tuple.*scheduler_interval='batch'"):
        fit(model, tiny_data(), epochs=1, scheduler=(step_lr, "batch"))  # type: ignore[arg-type]
    with pytest.raises(TrainingArgumentError, match=r"scheduler_interval='step'.*'epoch' or"):
        fit(model, tiny_data(), epochs=1, scheduler=step_lr, scheduler_interval="step")  # type: ignore[arg-type]
    plateau = lambda opt: torch.optim.lr_scheduler.ReduceLROnPlateau(opt)  # noqa: E731
    with pytest.raises(OptimizerError, match="ReduceLROnPlateau steps once per epoch"):
        fit(model, tiny_data(), epochs=1, scheduler=plateau, scheduler_interval="batch")
    with pytest.raises(TrainingTypeError, match=r"fit\(progress=1\).*True or False.*ProgressBar"):
        fit(model, tiny_data(), epochs=1, progress=1)  # type: ignore[arg-type]
    with pytest.raises(TrainingTypeError, match=r"holds 3 of type int, not a Callback"):
        fit(model, tiny_data(), epochs=1, callbacks=[3])  # type: ignore[list-item]
    with pytest.raises(TrainingArgumentError, match=r"2 Checkpoint callbacks"):
        fit(model, tiny_data(), epochs=1, callbacks=[ff.Checkpoint("a"), ff.Checkpoint("b")])


def test_nothing_trainable_and_no_schedule_is_refused_before_anything_changes(
    tmp_path: Path,
) -> None:
    model = tiny_model()
    model.requires_grad_(False)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    snap = Snapshot.take(model, opt, tmp_path / "ckpt")
    for optimizer in (None, torch.optim.SGD, opt):
        with pytest.raises(TrainingError) as info:
            fit(
                model, tiny_data(), epochs=1, optimizer=optimizer, progress=False,
                callbacks=[ff.Checkpoint(tmp_path / "ckpt")],
            )  # fmt: skip
        msg = str(info.value)
        assert "Sequential whose 4 parameter tensors are all frozen" in msg, msg
        assert "schedule=None, so no stage unfreezes any" in msg
        assert "hint: pass schedule=[ff.Stage('2', lr=1e-3)]" in msg
        assert "ff.unfreeze(model, '2') before fit()" in msg
        assert "empty parameter list" not in msg
    snap.assert_unchanged()  # no checkpoint folder; weights, flags and optimizer as they were
    with pytest.raises(TrainingError, match="Identity with no parameters at all"):
        fit(nn.Identity(), tiny_data(), epochs=1, progress=False)
    # with a schedule the same frozen model trains (the schedule unfreezes its stages)
    history = fit(model, tiny_data(), epochs=1, schedule=tiny_schedule(), progress=False)
    assert len(history.epochs) == 1


def test_no_random_number_is_drawn_before_the_first_epoch(tmp_path: Path) -> None:
    """A run seeded just before fit() draws its shuffle as a hand-written loop seeded there
    would (setting up, checking the data and building the unfreezer draw nothing)."""
    seen: list[torch.Tensor] = []

    class Spy(Callback):
        def on_epoch_start(self, run: Run) -> None:
            if not seen:
                seen.append(torch.get_rng_state())

    train, val = make_loaders(n_train=64)
    model = make_model()
    seed_everything(0)
    before = torch.get_rng_state()
    fit(
        model,
        train,
        val_data=val,
        schedule=make_schedule(),
        epochs=1,
        callbacks=[Spy(), ff.Checkpoint(tmp_path), ff.callbacks.FeatureCaching()],
        progress=False,
    )
    assert torch.equal(seen[0], before)


@pytest.mark.parametrize(
    "old",
    [
        "norm",
        "eval_frozen",
        "checkpoint",
        "resume",
        "cache",
        "grad_clip",
        "checkpoint_dir",
        "checkpoint_every",
        "keep_last",
        "keep_best",
        "cache_dir",
        "cache_max_bytes",
        "quiet",
        "seed",
    ],
)
def test_a_removed_argument_is_named(old: str) -> None:
    removed: dict[str, Any] = {old: None}
    with pytest.raises(TypeError, match=f"unexpected keyword argument '{old}'"):
        fit(tiny_model(), tiny_data(), epochs=1, progress=False, **removed)


@pytest.mark.parametrize("eval_frozen", [False, True])
def test_a_gradual_unfreezer_given_is_used_as_built(eval_frozen: bool) -> None:
    model = tiny_model()
    uf = ff.GradualUnfreezer(
        model, tiny_schedule(), torch.optim.SGD, eval_frozen=eval_frozen, total_epochs=2
    )
    history = fit(model, tiny_data(), unfreezer=uf, epochs=1, progress=False)
    assert history.transitions == [{"kind": "transition", **t.to_dict()} for t in uf.history]
    assert isinstance(uf.optimizer, torch.optim.SGD)
    assert uf.optimizer.state_dict()["state"] == {}  # SGD without momentum keeps no state
    assert not model[0].weight.requires_grad
    assert model.training and model[0].training is not eval_frozen  # frozen Linear locked


def test_scheduler_steps_each_batch_or_each_epoch_as_its_interval_says() -> None:
    def lrs(scheduler: Any, interval: Any = "epoch") -> list[float]:
        seen: list[float] = []

        class Lr(Callback):
            def on_batch_end(self, run: Run) -> None:
                seen.append(run.optimizer.param_groups[0]["lr"])

        opt = lambda ps: torch.optim.SGD(ps, lr=1.0)  # noqa: E731
        fit(
            tiny_model(),
            tiny_data(),
            epochs=2,
            optimizer=opt,
            scheduler=scheduler,
            scheduler_interval=interval,
            callbacks=[Lr()],
            progress=False,
        )
        return seen

    halve = lambda opt: torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.5)  # noqa: E731
    per_batch, per_epoch = lrs(halve, "batch"), lrs(halve)
    assert per_batch == pytest.approx([0.5**k for k in range(1, 9)])
    assert per_epoch == [1.0] * 4 + [0.5] * 4


# --------------------------------------------------------------------------- Ctrl-C, output


class InterruptAt(Callback):
    def __init__(self, epoch: int, batch: int) -> None:
        self.at = (epoch, batch)

    def on_batch_end(self, run: Run) -> None:
        if (run.progress.epoch, run.progress.batch) == self.at:
            raise KeyboardInterrupt


def test_ctrl_c_saves_and_resume_is_bit_exact(tmp_path: Path) -> None:
    def run(callbacks: list[Callback], resume: bool) -> tuple[nn.Module, History]:
        train, val = make_loaders(n_train=128)
        model = make_model()
        seed_everything(0)
        h = fit(
            model,
            train,
            schedule=make_schedule(),
            val_data=val,
            epochs=3,
            callbacks=[*callbacks, ff.Checkpoint(tmp_path / "ckpt", resume=resume)],
            progress=False,
        )
        return model, h

    _, history = run([InterruptAt(epoch=2, batch=2)], resume=False)
    assert history.interrupted
    assert len(history) == 2
    latest = find_checkpoint(True, tmp_path / "ckpt")
    assert latest is not None and latest.name == "epoch-0002-batch-000002.pt"
    assert load_checkpoint(latest)["position"] == {"epoch": 2, "batch": 2, "step": 10}
    resumed, history = run([], resume=True)
    assert not history.interrupted
    (tmp_path / "ckpt").rename(tmp_path / "first")
    reference, ref_history = run([], resume=False)
    for k, v in reference.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
    assert [r["train_loss"] for r in history.epochs] == [
        r["train_loss"] for r in ref_history.epochs
    ]


def test_ctrl_c_without_checkpoint_dir_returns_history() -> None:
    history = fit(
        tiny_model(), tiny_data(), epochs=3, callbacks=[InterruptAt(1, 1)], progress=False
    )
    assert history.interrupted
    assert len(history) == 1


def test_progress_false_prints_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    fit(tiny_model(), tiny_data(), schedule=tiny_schedule(), epochs=2, progress=False)
    out, err = capsys.readouterr()
    assert (out, err) == ("", "")
