"""The messages docs/faq.md quotes in "Things freezeflow refuses or warns about", produced
by the misuse itself on the toy ``Net`` of tests/models.py (``tests/e2e/test_docs.py`` checks
that the FAQ quotes each one verbatim; ``python tests/faq_messages.py`` prints them).

Each case is a :class:`Scene` (the objects the misuse is done with, and the one call that is
refused or warned about), so that ``tests/e2e/test_refusals.py`` can run the same call inside
the snapshot harness (tests/snapshot.py) and check that a refusal changes nothing.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from models import make_net, three_stage
from torch import nn

import freezeflow as ff


@dataclass
class Scene:
    """A misuse, ready to happen: ``call()`` is the refused (or warned-about) call; the other
    fields are what it could change."""

    call: Callable[[], object]
    model: nn.Module | None = None
    optimizer: torch.optim.Optimizer | None = None
    scheduler: Any = None
    unfreezer: ff.GradualUnfreezer | None = None


@dataclass(frozen=True)
class Case:
    """A misuse the FAQ quotes: how to set it up, and what it raises or warns."""

    setup: Callable[[], Scene]
    raises: type[ff.errors.FreezeflowError] | None = None
    warns: type[ff.errors.FreezeflowWarning] | None = None


def _raised(fn: Callable[[], object]) -> str:
    try:
        fn()
    except ff.errors.FreezeflowError as exc:
        return str(exc)
    raise AssertionError("no error")  # pragma: no cover - the scenario is broken


def _warned(fn: Callable[[], object]) -> str:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fn()
    (w,) = [w for w in caught if issubclass(w.category, ff.errors.FreezeflowWarning)]
    return str(w.message)


def _unfreezer() -> ff.GradualUnfreezer:
    model = make_net()
    return ff.GradualUnfreezer(model, three_stage(), torch.optim.AdamW(model.parameters()))


def _on(uf: ff.GradualUnfreezer, call: Callable[[], object], scheduler: Any = None) -> Scene:
    return Scene(call, uf.model, uf.optimizer, scheduler, uf)


def _data() -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(torch.randn(4, 3, 8, 8), torch.randint(0, 3, (4,)))]


def model_changed() -> Scene:
    uf = _unfreezer()
    uf.model.head = nn.Linear(4, 3)
    return _on(uf, lambda: uf.on_epoch_start(0))


def epochs_backwards() -> Scene:
    uf = _unfreezer()
    uf.on_epoch_start(3)
    return _on(uf, lambda: uf.on_epoch_start(1))


def steps_without_epochs() -> Scene:
    uf = _unfreezer()
    return _on(uf, uf.step)


def stage_at_the_beginning() -> Scene:
    return Scene(
        lambda: ff.Schedule(
            [ff.Stage("head", lr=1e-3), ff.Stage("body", lr=1e-3, start=ff.at_step(0))]
        )
    )


def stages_out_of_order() -> Scene:
    model = make_net()
    stages = [
        ff.Stage("head", lr=1e-3),
        ff.Stage("body.1", lr=1e-3, start=ff.at_step(30)),
        ff.Stage("body.0", lr=1e-3, start=ff.at_epoch(1)),
    ]
    return Scene(lambda: ff.GradualUnfreezer(model, stages, total_steps=60, total_epochs=6), model)


def partial_reselection() -> Scene:
    model = make_net()
    stages = [
        ff.Stage(["head", "body.1"], lr=1e-3),
        ff.Stage(["body.1", "body.0"], lr=1e-4, start=1, name="deeper"),
    ]
    return Scene(lambda: ff.GradualUnfreezer(model, stages), model)


def nothing_to_train() -> Scene:
    model = make_net()
    ff.freeze(model, ff.everything())
    data = _data()
    return Scene(lambda: ff.fit(model, data, epochs=1), model)


class _DictOutput(nn.Module):
    """Net returning a dict, as a Hugging Face model does."""

    def __init__(self) -> None:
        super().__init__()
        self.net = make_net()

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.net(x)}


def first_batch_dict_output() -> Scene:
    model, data = _DictOutput(), _data()
    return Scene(lambda: ff.fit(model, data, epochs=1, schedule=three_stage()), model)


def first_batch_float_labels() -> Scene:
    model = make_net()
    data = [(x, y.float()) for x, y in _data()]
    return Scene(lambda: ff.fit(model, data, epochs=1, schedule=three_stage()), model)


def auto_budget() -> Scene:
    model, data = make_net(), _data()
    return Scene(lambda: ff.fit(model, data, epochs=5, schedule=ff.auto(7)), model)


def auto_too_shallow() -> Scene:
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    return Scene(lambda: ff.GradualUnfreezer(model, ff.auto(7)), model)


def no_gradient_after_a_change() -> Scene:
    """A newly unfrozen block that the forward pass computes without autograd, as a graph
    traced while it was frozen would: the first optimizer step after the change is refused."""
    uf = _unfreezer()
    model, opt = uf.model, uf.optimizer
    x, y = _data()[0]
    uf.on_epoch_start(0)
    uf.on_epoch_start(5)  # the last stage: body.0 and the stem become trainable
    nn.functional.cross_entropy(model(x), y).backward()  # type: ignore[no-untyped-call]
    stem = [p for n, p in model.named_parameters() if n.startswith("stem.")]
    for p in stem:  # what a stale compiled graph leaves: no gradient for them
        p.grad = None
    return _on(uf, opt.step)


errors = ff.errors
CASES: dict[str, Case] = {
    "model changed": Case(model_changed, raises=errors.ModelChangedError),
    "epochs backwards": Case(epochs_backwards, raises=errors.ScheduleError),
    "steps without epochs": Case(steps_without_epochs, warns=errors.FreezeflowWarning),
    "stage at the beginning": Case(stage_at_the_beginning, raises=errors.ScheduleError),
    "stages out of order": Case(stages_out_of_order, raises=errors.ScheduleError),
    "partial re-selection": Case(partial_reselection, warns=errors.FreezeflowWarning),
    "nothing to train": Case(nothing_to_train, raises=errors.TrainingError),
    "first batch: dict output": Case(first_batch_dict_output, raises=errors.TrainingTypeError),
    "first batch: float labels": Case(first_batch_float_labels, raises=errors.TrainingTypeError),
    "auto budget": Case(auto_budget, raises=errors.ScheduleError),
    "auto too shallow": Case(auto_too_shallow, raises=errors.ScheduleError),
    "no gradient after a change": Case(no_gradient_after_a_change, raises=errors.TrainingError),
}
"""Every case, by the key the FAQ tests use."""


def message(key: str) -> str:
    """The message of case ``key``: the error's, or the one freezeflow warning's."""
    case = CASES[key]
    scene = case.setup()
    return _raised(scene.call) if case.raises is not None else _warned(scene.call)


MESSAGES: dict[str, Callable[[], str]] = {key: partial(message, key) for key in CASES}
"""The message of each case, made afresh by each call."""


if __name__ == "__main__":
    for key, make in MESSAGES.items():
        print(f"{key}:\n{make()}\n")
