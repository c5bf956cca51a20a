"""The messages docs/faq.md quotes in "Things freezeflow refuses or warns about", produced
by the misuse itself on the toy ``Net`` of tests/models.py (``tests/test_docs.py`` checks that
the FAQ quotes each one verbatim; ``python tests/faq_messages.py`` prints them)."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from models import make_net, three_stage
from torch import nn
from torch.optim import lr_scheduler as lrs

import freezeflow as ff


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


def model_changed() -> str:
    uf = _unfreezer()
    uf.model.head = nn.Linear(4, 3)
    return _raised(lambda: uf.on_epoch_start(0))


def scheduler_not_attached() -> str:
    uf = _unfreezer()
    lrs.CosineAnnealingWarmRestarts(uf.optimizer, T_0=4)
    uf.on_epoch_start(0)
    return _warned(lambda: uf.on_epoch_start(2))


def epochs_backwards() -> str:
    uf = _unfreezer()
    uf.on_epoch_start(3)
    return _raised(lambda: uf.on_epoch_start(1))


def steps_without_epochs() -> str:
    return _warned(_unfreezer().step)


def stage_at_the_beginning() -> str:
    return _raised(
        lambda: ff.Schedule(
            [ff.Stage("head", lr=1e-3), ff.Stage("body", lr=1e-3, start=ff.at_step(0))]
        )
    )


def stages_out_of_order() -> str:
    stages = [
        ff.Stage("head", lr=1e-3),
        ff.Stage("body.1", lr=1e-3, start=ff.at_step(30)),
        ff.Stage("body.0", lr=1e-3, start=ff.at_epoch(1)),
    ]
    return _raised(lambda: ff.GradualUnfreezer(make_net(), stages, total_steps=60, total_epochs=6))


def partial_reselection() -> str:
    stages = [
        ff.Stage(["head", "body.1"], lr=1e-3),
        ff.Stage(["body.1", "body.0"], lr=1e-4, start=1, name="deeper"),
    ]
    return _warned(lambda: ff.GradualUnfreezer(make_net(), stages))


def nothing_to_train() -> str:
    model = make_net()
    ff.freeze(model, ff.everything())
    data = [(torch.randn(4, 3, 8, 8), torch.randint(0, 3, (4,)))]
    return _raised(lambda: ff.fit(model, data, epochs=1))


def auto_budget() -> str:
    data = [(torch.randn(4, 3, 8, 8), torch.randint(0, 3, (4,)))]
    return _raised(lambda: ff.fit(make_net(), data, epochs=5, schedule=ff.auto(7)))


def auto_too_shallow() -> str:
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    return _raised(lambda: ff.GradualUnfreezer(model, ff.auto(7)))


MESSAGES: dict[str, Callable[[], str]] = {
    "model changed": model_changed,
    "scheduler not attached": scheduler_not_attached,
    "epochs backwards": epochs_backwards,
    "steps without epochs": steps_without_epochs,
    "stage at the beginning": stage_at_the_beginning,
    "stages out of order": stages_out_of_order,
    "partial re-selection": partial_reselection,
    "nothing to train": nothing_to_train,
    "auto budget": auto_budget,
    "auto too shallow": auto_too_shallow,
}


if __name__ == "__main__":
    for key, make in MESSAGES.items():
        print(f"{key}:\n{make()}\n")
