"""fit() checks the first batch against the model and the loss before anything changes: the
user's words, a hint, and the model, optimizer, run folder and random streams as they were."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from _fit_worker import tiny_data, tiny_model, tiny_schedule
from snapshot import Snapshot, unchanged
from torch import nn
from torch.utils.data import DataLoader, Dataset

import freezeflow as ff
from freezeflow.errors import TrainingError, TrainingTypeError
from freezeflow.training.first_batch import check_first_batch
from freezeflow.training.loop import fit


class DictOut(nn.Module):
    """A model returning a dict, as Hugging Face models do."""

    def __init__(self) -> None:
        super().__init__()
        self.net = tiny_model()

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.net(x), "hidden": x}


class TupleOut(DictOut):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        return self.net(x), x


def relabel(dtype: torch.dtype, shift: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x, (y + shift).to(dtype)) for x, y in tiny_data()]


CASES: dict[str, tuple[Any, Any, type[Exception], str]] = {
    "dict output": (
        DictOut,
        tiny_data,
        TrainingTypeError,
        r"returned a dict with keys 'logits', 'hidden' on the first training batch, but the "
        r"loss, F\.cross_entropy, takes a tensor .*hint: loss_fn=lambda out, y: "
        r"F\.cross_entropy\(out\['logits'\], y\)",
    ),
    "tuple output": (
        TupleOut,
        tiny_data,
        TrainingTypeError,
        r"returned a tuple of 2 \(Tensor, Tensor\).*F\.cross_entropy\(out\[0\], y\)",
    ),
    "float labels": (
        tiny_model,
        lambda: relabel(torch.float32),
        TrainingTypeError,
        r"labels of the first training batch are a tensor of dtype torch\.float32 and shape "
        r"\(16,\).*expected int64 labels; hint: cast them with \.long\(\)",
    ),
    "int32 labels (numpy's default on some platforms)": (
        tiny_model,
        lambda: relabel(torch.int32),
        TrainingTypeError,
        r"dtype torch\.int32.*expected int64 labels; hint",
    ),
    "labels out of range": (
        tiny_model,
        lambda: relabel(torch.int64, shift=1),
        TrainingError,
        r"labels of the first training batch range from 1 to 2, but the model outputs 2 "
        r"classes .*expected labels 0 to 1; hint",
    ),
    "model fails": (
        tiny_model,
        lambda: [(torch.zeros(16, 5), torch.zeros(16, dtype=torch.long))],
        TrainingError,
        r"the model failed on the first training batch \(RuntimeError: .*\); its inputs: a "
        r"tensor of dtype torch\.float32 and shape \(16, 5\).*nothing has been changed",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_first_batch_refused_before_any_change(case: str, tmp_path: Path) -> None:
    make_model, make_data, error, match = CASES[case]
    model = make_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    folder = tmp_path / "run"
    with unchanged(model, opt, folder), pytest.raises(error, match=match):
        fit(
            model,
            make_data(),
            epochs=2,
            schedule=tiny_schedule() if make_model is tiny_model else None,
            optimizer=opt,
            callbacks=[ff.Checkpoint(folder)],
            progress=False,
        )


def test_what_the_losses_take_is_not_refused() -> None:
    """Class probabilities of the outputs' shape (cross-entropy takes them), uint8 labels,
    the ignore index, and a loss_fn that picks the logits from a dict all train."""
    x, y = tiny_data()[0]
    probs = [(x, nn.functional.one_hot(y, 2).float())]
    fit(tiny_model(), probs, epochs=1, progress=False)
    fit(tiny_model(), [(x, y.to(torch.uint8))], epochs=1, progress=False)
    ignored = y.clone()
    ignored[0] = -100
    fit(tiny_model(), [(x, ignored)], epochs=1, progress=False)

    def picks(out: dict[str, torch.Tensor], y: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(out["logits"], y)

    fit(DictOut(), [(x, y)], epochs=1, loss_fn=picks, progress=False)


class Augmented(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Random augmentation from every generator a dataset may draw from."""

    def __len__(self) -> int:
        return 32

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        noise = torch.randn(4) + float(np.random.rand())
        return torch.full((4,), float(i)) + noise, torch.tensor(i % 2)


def test_the_check_leaves_no_trace() -> None:
    """The check draws no random number, moves no BatchNorm statistic and leaves every
    module in its mode: what the user seeded and set up is what training starts from."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, 2))
    model[1].eval()  # the user's own choice of mode is kept
    loader = DataLoader(
        Augmented(), batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(3)
    )
    snap = Snapshot.take(model)
    gen = loader.generator.get_state()
    check_first_batch(model, loader, nn.functional.cross_entropy, torch.device("cpu"))
    snap.assert_unchanged()
    assert torch.equal(loader.generator.get_state(), gen)
