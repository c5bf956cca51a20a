"""fit(callbacks=[FeatureCaching()]): the same training as without the cache, and a one-line
reason when a stage cannot be cached."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from cache_models import Flaky, Net, Skip, data
from torch.utils.data import DataLoader, Dataset

import freezeflow as ff
from freezeflow.training.caching import FeatureCaching
from freezeflow.training.loop import fit
from freezeflow.training.setup import seed_everything


def schedule() -> ff.Schedule:
    return ff.Schedule(
        [
            ff.Stage(ff.last(2), lr=0.05),  # blocks.2 + head; stem, blocks.0-1 frozen
            ff.Stage(ff.last(3), lr=0.02, start=2),  # blocks.1 joins: the prefix shrinks
        ]
    )


def run(
    cached: bool,
    model_cls: type[Net] = Net,
    dataset: Dataset[Any] | None = None,
    hook: Callable[[Net], object] = lambda model: None,
    sched: ff.Schedule | None = None,
) -> tuple[ff.History, Net]:
    """Two-stage fit of ``model_cls`` on ``dataset`` (48 random samples by default);
    ``hook(model)`` runs before training."""
    torch.manual_seed(0)
    model = model_cls(block_dropout=0.3)
    hook(model)
    train = DataLoader(
        dataset if dataset is not None else data(48),
        batch_size=8,
        shuffle=True,
        generator=torch.Generator().manual_seed(3),
    )
    val = DataLoader(data(16), batch_size=8)
    seed_everything(0)
    unfreezer = ff.GradualUnfreezer(
        model,
        sched if sched is not None else schedule(),
        torch.optim.SGD,
        eval_frozen=True,  # dropout in frozen blocks off: the prefix is deterministic
    )
    history = fit(
        model,
        train,
        val_data=val,
        unfreezer=unfreezer,
        epochs=4,
        callbacks=[FeatureCaching()] if cached else [],
        progress=False,
    )
    return history, model


def test_cached_fit_matches_uncached_fit() -> None:
    plain, m1 = run(cached=False)
    cached, m2 = run(cached=True)
    for a, b in zip(plain.epochs, cached.epochs):
        assert a["stage"] == b["stage"]
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5, abs=1e-6)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5, abs=1e-6)
        assert a["metrics"] == pytest.approx(b["metrics"], rel=1e-5, abs=1e-6)
    for (name, p), q in zip(m1.named_parameters(), m2.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)
    notes = [r for r in cached.records if r["kind"] == "note"]
    # blocks 0-1 stay frozen for the whole schedule: cached once; the first stage adds
    # block 2 on top of them; the second stage (block 2 trainable) replays them
    assert [n["epoch"] for n in notes] == [0, 0, 2]
    assert "blocks 0-1, frozen for the rest of the schedule" in notes[0]["message"]
    assert "blocks 2-2 on the cached blocks" in notes[1]["message"]
    assert "replaying the cached blocks 0-1" in notes[2]["message"]
    assert not [r for r in plain.records if r["kind"] == "note"]


def test_blocks_frozen_for_the_whole_schedule_run_once_per_sample() -> None:
    """The stem sees every training and validation sample once in a cached run (plus the
    few samples of the cut checks), however many stages and epochs follow."""
    seen = [0]

    def count(module: torch.nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        if args[0].shape[1] == 3:  # raw images; a replayed batch passes cached features through
            seen[0] += len(args[0])

    run(cached=True, hook=lambda model: model.stem.register_forward_hook(count))
    checks = seen[0] - (48 + 16)
    assert 0 <= checks <= 2 * 24  # the cut checks run a few samples per stage
    # the uncached run pushes every sample through the stem in every epoch
    assert seen[0] < 4 * (48 + 16)


def test_uncacheable_model_trains_normally_with_a_reason(
    capsys: pytest.CaptureFixture[str],
) -> None:
    history, _ = run(cached=True, model_cls=Skip)
    notes = [r["message"] for r in history.records if r["kind"] == "note"]
    assert notes
    assert all("without the feature cache" in n and "cannot be cut" in n for n in notes)
    assert len(history.epochs) == 4
    assert capsys.readouterr().out == ""  # progress=False: recorded, not printed


def test_cached_fit_with_random_views_matches_uncached_fit() -> None:
    """Random flips drawn per sample: the cached run draws the same views (and every other
    random number) as the uncached one, so losses and weights agree."""

    def flips() -> ff.Views:
        return ff.Views(data(48), [lambda x: x, lambda x: x.flip(-1)])

    plain, m1 = run(cached=False, dataset=flips())
    cached, m2 = run(cached=True, dataset=flips())
    assert [r["kind"] for r in cached.records].count("note") == 3  # really cached
    for a, b in zip(plain.epochs, cached.epochs):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5, abs=1e-6)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5, abs=1e-6)
    for (name, p), q in zip(m1.named_parameters(), m2.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)
    # and the views matter: without them the run trains differently
    _, m3 = run(cached=False)
    assert not torch.allclose(head_weight(m3), head_weight(m1))


def head_weight(model: Net) -> torch.Tensor:
    linear = model.head[1]
    assert isinstance(linear, torch.nn.Linear)
    return linear.weight


class SkipMid(Net):
    """``blocks.0``'s output also reaches the head: the model can be cut after ``blocks.0``
    (the shared base of :func:`schedule`) but not after ``blocks.1`` (the first stage's cut)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.stem(x)))
        s = x = self.blocks[0](x)
        for block in self.blocks[1:]:
            x = block(x)
        y: torch.Tensor = self.head((x + s).mean((2, 3)))
        return y


def test_a_stage_whose_own_cut_is_refused_replays_the_shared_blocks() -> None:
    plain, m1 = run(cached=False, model_cls=SkipMid)
    cached, m2 = run(cached=True, model_cls=SkipMid)
    for a, b in zip(plain.epochs, cached.epochs):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5, abs=1e-6)
    for (name, p), q in zip(m1.named_parameters(), m2.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)
    notes = [(r["epoch"], r["message"]) for r in cached.records if r["kind"] == "note"]
    assert [e for e, _ in notes] == [0, 0, 2]  # once per stage, not once per epoch
    assert "caching blocks 0-1, frozen for the rest" in notes[0][1]
    assert "replaying only the cached blocks 0-1" in notes[1][1]
    assert "cannot be cut" in notes[1][1]
    assert "replaying the cached blocks 0-1" in notes[2][1]


@pytest.mark.parametrize("interrupt", [False, True], ids=["error", "ctrl-c"])
def test_no_cache_file_outlives_a_failed_fit(interrupt: bool, tmp_path: Path) -> None:
    torch.manual_seed(0)
    error: BaseException = KeyboardInterrupt() if interrupt else OSError("read error")
    val = DataLoader(Flaky(16, 11, error), batch_size=8)  # fails while the base is built
    model = Net(block_dropout=0.3)
    unfreezer = ff.GradualUnfreezer(model, schedule(), torch.optim.SGD, eval_frozen=True)

    def call() -> ff.History:
        return fit(
            model,
            DataLoader(data(48), batch_size=8, shuffle=True),
            val_data=val,
            unfreezer=unfreezer,
            epochs=4,
            callbacks=[FeatureCaching(tmp_path, max_bytes=0)],
            progress=False,
        )

    if interrupt:
        assert call().interrupted
    else:
        with pytest.raises(OSError, match="read error"):
            call()
    assert not list(tmp_path.iterdir())


def test_a_stage_that_unfreezes_cached_blocks_mid_epoch_finishes_the_epoch_uncached() -> None:
    mid = ff.Schedule(
        [
            ff.Stage(ff.last(2), lr=0.05),
            ff.Stage(ff.last(4), lr=0.02, start=ff.at_step(9)),  # epoch 1, batch 3 of 6
        ]
    )
    plain, m1 = run(cached=False, sched=mid)
    cached, m2 = run(cached=True, sched=mid)
    for a, b in zip(plain.epochs, cached.epochs):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5, abs=1e-6)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5, abs=1e-6)
    for (name, p), q in zip(m1.named_parameters(), m2.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)
    notes = [(r["epoch"], r["message"]) for r in cached.records if r["kind"] == "note"]
    assert (
        1,
        "a stage unfroze cached blocks mid-epoch: the rest of the epoch runs uncached",
    ) in notes
    assert any(e == 2 and m.startswith(("caching", "replaying")) for e, m in notes)


def test_a_failed_cached_epoch_puts_the_model_back() -> None:
    """The replay of cached features ends with the epoch, even when training fails in it."""
    calls = 0

    def flaky(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise OSError("broken loss")
        return torch.nn.functional.cross_entropy(out, y)

    torch.manual_seed(0)
    model = Net(block_dropout=0.3)
    unfreezer = ff.GradualUnfreezer(model, schedule(), torch.optim.SGD, eval_frozen=True)
    with pytest.raises(OSError, match="broken loss") as info:
        fit(
            model,
            DataLoader(data(48), batch_size=8),
            unfreezer=unfreezer,
            epochs=1,
            loss_fn=flaky,
            callbacks=[FeatureCaching()],
            progress=False,
        )
    assert info.traceback  # the traceback (and the loop's frames) is still alive here
    assert [n for n, m in model.named_modules() if "forward" in m.__dict__] == []
    model.eval()
    assert model(data(4).tensors[0]).shape == (4, 4)
