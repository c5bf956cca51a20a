"""freezeflow.core.freezing, the parameter-level primitives: freeze_params / unfreeze_params do
what freeze / unfreeze do once the policy is resolved, for parameters already in hand (the
GradualUnfreezer's way); restore_norm_modes puts saved norm modes back; check_norm_mode.

(The policy-level functions are tested in tests/test_freezing.py; this module could be merged
into it.)"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from models import flags, make_net, make_small_cnn, norm_state, training_flags
from snapshot import unchanged
from torch import nn

import freezeflow as ff
from freezeflow.core.freezing import (
    check_norm_mode,
    freeze_params,
    norm_mode,
    restore_norm_modes,
    unfreeze_params,
)


def _state(model: nn.Module) -> tuple[Any, ...]:
    """What two models that went through the same freezing are compared on (a refused call is
    checked with the snapshot harness instead: this puts the model in training mode)."""
    model.train()
    return flags(model), norm_state(model), training_flags(model)


@pytest.mark.parametrize("norm", ["eval", "train", "frozen", "ignore"])
@pytest.mark.parametrize("eval_frozen", [False, True], ids=["", "eval_frozen"])
@pytest.mark.parametrize("policy", ["stem", ["stem", "conv", "bn"], "bn"])
def test_freeze_params_is_freeze_without_the_policy(
    norm: Any, eval_frozen: bool, policy: Any
) -> None:
    by_policy, by_params = make_small_cnn(), make_small_cnn()
    sel = ff.freeze(by_policy, policy, norm=norm, eval_frozen=eval_frozen)
    chosen = list(ff.core.as_policy(policy).select(by_params).params)
    done = freeze_params(by_params, chosen, norm=norm, eval_frozen=eval_frozen)
    assert _state(by_params) == _state(by_policy)
    names = {id(p): n for n, p in by_params.named_parameters()}
    assert [names[id(p)] for p in done] == list(sel)  # with norm="train", minus norm params


@pytest.mark.parametrize("include_frozen_norm", [False, True])
def test_unfreeze_params_is_unfreeze_without_the_policy(include_frozen_norm: bool) -> None:
    by_policy, by_params = make_small_cnn(), make_small_cnn()
    for m in (by_policy, by_params):
        ff.freeze(m, ["stem", "conv"], norm="eval")
        ff.freeze(m, "bn", norm="frozen")  # sticky
    sel = ff.unfreeze(by_policy, ff.everything(), include_frozen_norm=include_frozen_norm)
    done = unfreeze_params(
        by_params, list(by_params.parameters()), include_frozen_norm=include_frozen_norm
    )
    assert _state(by_params) == _state(by_policy)
    names = {id(p): n for n, p in by_params.named_parameters()}
    assert [names[id(p)] for p in done] == list(sel)
    assert ("bn.weight" in list(sel)) is include_frozen_norm


def test_repeats_are_ignored_and_the_order_kept() -> None:
    model = make_net()
    w, b = model.head.weight, model.head.bias
    assert freeze_params(model, [b, w, b]) == [b, w]
    assert unfreeze_params(model, [w, b, w]) == [w, b]
    assert w.requires_grad and b.requires_grad


@pytest.mark.parametrize(
    "foreign",
    [nn.Parameter(torch.zeros(7, 5)), "head.weight"],
    ids=["another-models-parameter", "a-name"],
)
def test_what_is_not_a_parameter_of_the_model_is_refused(foreign: Any) -> None:
    model = make_net()
    for call in (freeze_params, unfreeze_params):
        with unchanged(model), pytest.raises(ff.PolicyError, match=r"1 item\(s\) are not param"):
            call(model, [model.head.weight, foreign])


def test_bad_norm_mode_is_refused_before_anything_changes() -> None:
    model = make_net()
    with unchanged(model), pytest.raises(ff.PolicyError, match=r"norm='bn' is not a norm mode"):
        freeze_params(model, [model.head.weight], norm="bn")  # type: ignore[arg-type]
    check_norm_mode("frozen")
    with pytest.raises(ff.PolicyError, match=r"expected one of 'eval', 'train'"):
        check_norm_mode(None)


def test_restore_norm_modes_puts_saved_modes_back() -> None:
    model = make_small_cnn()
    ff.freeze(model, ["stem", "conv"], norm="eval", eval_frozen=True)
    ff.freeze(model, "bn", norm="frozen")
    model.train()
    saved = {p: mode for p, m in model.named_modules() if (mode := norm_mode(m)) is not None}
    assert saved == {"stem": "block", "stem.1": "eval", "conv": "block", "bn": "frozen"}
    other = make_small_cnn()
    ff.freeze(other, "head", norm="eval")  # locks that must go
    restore_norm_modes(other, saved)
    other.train()
    assert norm_state(other) == norm_state(model)
    assert training_flags(other) == training_flags(model)
    restore_norm_modes(other, {})  # nothing locked: every module follows its parent
    assert all(norm_mode(m) is None for m in other.modules())
    assert all(training_flags(other).values())
    # a deep copy keeps its modes, so restoring them onto it changes nothing
    twin = copy.deepcopy(model)
    restore_norm_modes(twin, saved)
    assert norm_state(twin) == norm_state(model)


@pytest.mark.parametrize(
    ("modes", "match"),
    [({"neck": "eval"}, r"has no module 'neck'"), ({"bn": "sleepy"}, r"unknown norm mode")],
    ids=["unknown-module", "unknown-mode"],
)
def test_restore_norm_modes_refuses_before_changing(modes: dict[str, str], match: str) -> None:
    model = make_small_cnn()
    ff.freeze(model, "stem")
    with unchanged(model), pytest.raises(ff.PolicyError, match=match):
        restore_norm_modes(model, {"conv": "eval", **modes})
