"""fit(): learning, stage changes, frozen parameters, faults, callbacks, history, output."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from _fit_worker import make_loaders, make_model, make_schedule
from torch import nn

import freezeflow as ff
from freezeflow.errors import ScheduleError, TrainingError
from freezeflow.training.callbacks import Callback, EarlyStopping, ProgressBar
from freezeflow.training.checkpoint import find_checkpoint, load_checkpoint
from freezeflow.training.loop import History, Run, fit


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models train faster (and less noisily on a busy machine) on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_data(n: int = 64, batch: int = 16) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    y = (x[:, 0] > 0).long()
    return [(x[i : i + batch], y[i : i + batch]) for i in range(0, n, batch)]


def tiny_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


def tiny_schedule() -> ff.Schedule:
    return ff.Schedule([ff.Stage("2", lr=1e-2), ff.Stage("0", lr=1e-2, start=1)])


def params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------- learning


class FrozenWatch(Callback):
    """Snapshots the state at the start, and checks at the end of every head-only epoch
    that the backbone (weights and BatchNorm statistics) is bit-identical."""

    def __init__(self) -> None:
        self.checked = 0

    def on_train_start(self, run: Run) -> None:
        self.start = params(run.model)

    def on_epoch_end(self, run: Run) -> None:
        if run.history.epochs[-1]["stage"] != "head":
            return
        now = params(run.model)
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
    history = fit(
        model,
        train,
        schedule=make_schedule(),
        val_data=val,
        epochs=5,
        callbacks=[watch],
        quiet=True,
        seed=0,
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
    trainable = [r["trainable"] for r in history.epochs]
    assert trainable[0] == sum(p.numel() for p in model.head.parameters())
    assert trainable[-1] == sum(p.numel() for p in model.parameters())
    assert [r["steps"] for r in history.epochs] == [len(train) * (k + 1) for k in range(5)]


def test_train_loss_is_the_mean_over_samples() -> None:
    data = tiny_data()
    seen: list[float] = []

    class Losses(Callback):
        def on_batch_end(self, run: Run) -> None:
            seen.append(run.loss)

    history = fit(tiny_model(), data, epochs=1, callbacks=[Losses()], quiet=True, seed=0)
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
        quiet=True,
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
        quiet=True,
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
        quiet=True,
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
        tiny_model(), tiny_data(), schedule=sched, epochs=4, callbacks=[Flat()], quiet=True
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
        return loss * math.nan if calls == 3 else loss  # epoch 1 (resumed), batch 2

    model = tiny_model()
    fit(model, tiny_data(), epochs=1, checkpoint_dir=tmp_path, quiet=True)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(TrainingError, match=r"loss is nan at epoch 1, batch 2") as info:
        fit(
            model,
            tiny_data(),
            epochs=3,
            loss_fn=flaky,
            checkpoint_dir=tmp_path,
            resume=True,
            quiet=True,
        )
    assert "lower the learning rate" in str(info.value)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ([], "train_data is empty"),
        (torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.zeros(0, 4))), "empty"),
        ((b for b in tiny_data()), "re-iterable"),
    ],
    ids=["empty-list", "empty-loader", "generator"],
)
def test_bad_training_data(data: Any, match: str) -> None:
    with pytest.raises(TrainingError, match=match):
        fit(tiny_model(), data, epochs=1, quiet=True)


def test_iterable_without_len_that_yields_nothing() -> None:
    class Nothing:
        def __iter__(self) -> Iterator[Any]:
            return iter(())

    with pytest.raises(TrainingError, match="yielded no batches in epoch 0"):
        fit(tiny_model(), Nothing(), epochs=1, quiet=True)


def test_batch_that_is_not_a_pair() -> None:
    with pytest.raises(TrainingError, match=r"\(inputs, targets\) pair, got a tuple of length 3"):
        fit(tiny_model(), [(torch.zeros(2, 4),) * 3], epochs=1, quiet=True)


def test_non_scalar_loss() -> None:
    def per_sample(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(out, y, reduction="none")

    with pytest.raises(TrainingError, match=r"shape \(16,\), expected a scalar.*reduction"):
        fit(tiny_model(), tiny_data(), epochs=1, loss_fn=per_sample, quiet=True)


def test_device_mismatch() -> None:
    class Stray(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 2)
            self.offset = torch.zeros(2, device="meta")  # not a buffer: never moved

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x) + self.offset

    with pytest.raises(TrainingError, match=r"different devices.*registered buffer"):
        fit(Stray(), tiny_data(), epochs=1, device="cpu", quiet=True)


def test_bad_arguments() -> None:
    model = tiny_model()
    uf = ff.GradualUnfreezer(model, tiny_schedule())
    with pytest.raises(ScheduleError, match="pass it alone"):
        fit(model, tiny_data(), epochs=1, unfreezer=uf, schedule=tiny_schedule())
    with pytest.raises(TrainingError, match="epochs=0"):
        fit(model, tiny_data(), epochs=0)
    with pytest.raises(TrainingError, match="amp='fp8'"):
        fit(model, tiny_data(), epochs=1, amp="fp8")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- Ctrl-C, early stop


class InterruptAt(Callback):
    def __init__(self, epoch: int, batch: int) -> None:
        self.at = (epoch, batch)

    def on_batch_end(self, run: Run) -> None:
        if (run.epoch, run.batch) == self.at:
            raise KeyboardInterrupt


def test_ctrl_c_saves_and_resume_is_bit_exact(tmp_path: Path) -> None:
    def run(callbacks: list[Callback], resume: bool) -> tuple[nn.Module, History]:
        train, val = make_loaders(n_train=128)
        model = make_model()
        h = fit(
            model,
            train,
            schedule=make_schedule(),
            val_data=val,
            epochs=3,
            callbacks=callbacks,
            checkpoint_dir=tmp_path / "ckpt",
            resume=resume,
            quiet=True,
            seed=0,
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
    history = fit(tiny_model(), tiny_data(), epochs=3, callbacks=[InterruptAt(1, 1)], quiet=True)
    assert history.interrupted
    assert len(history) == 1


def test_early_stopping() -> None:
    stop = EarlyStopping("train_loss", patience=2, mode="max")  # loss falls: never "improves"
    history = fit(tiny_model(), tiny_data(), epochs=10, callbacks=[stop], quiet=True, seed=0)
    assert len(history) == 3
    assert history.stop_reason is not None and "early stopping: train_loss" in history.stop_reason
    assert stop.state_dict() == {"best": history.epochs[0]["train_loss"], "bad": 2}


def test_early_stopping_names_missing_metric() -> None:
    with pytest.raises(TrainingError, match=r"'val_loss', which is not logged.*val_data"):
        fit(tiny_model(), tiny_data(), epochs=2, callbacks=[EarlyStopping()], quiet=True)


# --------------------------------------------------------------------------- history


def test_history_round_trip_dataframe_and_plot() -> None:
    history = fit(
        tiny_model(),
        tiny_data(),
        schedule=tiny_schedule(),
        val_data=tiny_data(32),
        epochs=3,
        quiet=True,
        seed=0,
    )
    assert History.from_json(history.to_json()) == history
    kinds = [r["kind"] for r in history.to_dicts()]
    assert kinds == ["transition", "epoch", "transition", "epoch", "epoch"]
    df = history.to_dataframe()
    assert list(df["epoch"]) == [0, 1, 2]
    assert {"train_loss", "val_loss", "val_accuracy", "lr/stage0/decay", "images_per_s"} <= set(
        df.columns
    )
    fig = history.plot()
    loss_ax, metric_ax = fig.axes
    assert [t.get_text().strip() for t in loss_ax.texts] == ["stage1"]
    assert {line.get_label() for line in loss_ax.lines} >= {"train_loss", "val_loss"}
    assert metric_ax.lines[0].get_label() == "val_accuracy"


def test_history_to_dataframe_without_pandas(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(TrainingError, match="needs pandas"):
        History().to_dataframe()


# --------------------------------------------------------------------------- output


def test_quiet_prints_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    fit(tiny_model(), tiny_data(), schedule=tiny_schedule(), epochs=2, quiet=True)
    out, err = capsys.readouterr()
    assert (out, err) == ("", "")


def test_plain_progress_lines_without_tqdm(capsys: pytest.CaptureFixture[str]) -> None:
    bar = ProgressBar(tqdm=False, every=2)
    fit(
        tiny_model(),
        tiny_data(),
        schedule=tiny_schedule(),
        val_data=tiny_data(32),
        epochs=2,
        callbacks=[bar],
        quiet=True,
    )
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("fit: Sequential (58 parameters) on cpu, 2 epochs")
    assert "  epoch 0 batch 2/4 [stage0] loss " in out[1]
    assert "img/s" in out[1]
    summary = [line for line in out if line.startswith("epoch ")]
    assert len(summary) == 2
    assert summary[0].startswith("epoch 0 (1/2) [stage0] train_loss ")
    assert (
        "val_loss" in summary[0] and "val_accuracy" in summary[0] and "trainable 18" in summary[0]
    )
    change = [line for line in out if line.startswith("stage ")]
    assert len(change) == 1 and change[0].startswith("stage 'stage1' begins at epoch 1, step 4")
    assert out.index(change[0]) < out.index(summary[1])
