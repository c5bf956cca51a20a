"""freeze / unfreeze / frozen: frozen parameters never move under any optimizer, norm modes,
and models with locked norm layers still copy, pickle and save."""

from __future__ import annotations

import copy
import io
import pickle
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from models import (
    MLP,
    SmallCNN,
    TinyLM,
    flags,
    make_mlp,
    make_small_cnn,
    make_tiny_lm,
    norm_state,
    snapshot,
    training_flags,
)
from torch import nn

import freezeflow as ff

STEPS = 3
CNN_NAMES = [n for n, _ in make_small_cnn().named_parameters()]


def loss_of(model: nn.Module, step: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000 + step)
    if hasattr(model, "embed"):  # the language model
        tokens = torch.randint(0, 32, (4, 8), generator=g)
        logits = model(tokens)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens.roll(-1, 1).reshape(-1))
    if hasattr(model, "stem"):  # the CNN
        x = torch.randn(6, 3, 8, 8, generator=g)
        return F.cross_entropy(model(x), torch.randint(0, 5, (6,), generator=g))
    x = torch.randn(6, 6, generator=g)
    return F.mse_loss(model(x), torch.randn(6, 3, generator=g))


def train(model: nn.Module, opt: torch.optim.Optimizer, steps: int, set_to_none: bool) -> None:
    model.train()
    for step in range(steps):
        opt.zero_grad(set_to_none=set_to_none)
        loss_of(model, step).backward()  # type: ignore[no-untyped-call]
        opt.step()


OPTIMIZERS: dict[str, Callable[[list[nn.Parameter]], torch.optim.Optimizer]] = {
    "sgd_momentum": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=1e-2),
    "adam": lambda ps: torch.optim.Adam(ps, lr=1e-2),
    "adamw": lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1),
}

# (model factory, policy to freeze)
SETUPS: dict[str, tuple[Callable[[], nn.Module], ff.FreezePolicy]] = {
    "mlp": (make_mlp, ff.name("fc2")),
    "cnn": (make_small_cnn, ff.name("conv", "bn")),
    "tiny_lm_tied": (make_tiny_lm, ff.name("blocks.0", "embed")),
}


@pytest.mark.parametrize("set_to_none", [True, False], ids=["set_to_none", "zero_fill"])
@pytest.mark.parametrize("when", ["before_steps", "after_steps"])
@pytest.mark.parametrize("opt_name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("setup", sorted(SETUPS))
def test_frozen_parameters_are_bit_identical_and_trainable_ones_move(
    setup: str, opt_name: str, when: str, set_to_none: bool
) -> None:
    make, policy = SETUPS[setup]
    model = make()
    opt = OPTIMIZERS[opt_name](list(model.parameters()))
    if when == "after_steps":
        # momentum buffers / Adam moments exist and .grad is populated when we freeze
        train(model, opt, STEPS, set_to_none)
        assert all(p.grad is not None for p in model.parameters())
        assert len(opt.state) == len(list(model.parameters()))
    sel = ff.freeze(model, policy)
    assert all(p.grad is None for p in sel.params)
    before = snapshot(model)
    train(model, opt, STEPS, set_to_none)
    frozen_names = set(sel.names)
    assert frozen_names
    assert len(frozen_names) < len(before)
    for n, p in model.named_parameters():
        if n in frozen_names:
            assert not p.requires_grad, n
            assert p.grad is None, n
            assert torch.equal(p, before[n]), f"frozen {n} moved"
        else:
            assert p.requires_grad, n
            assert not torch.equal(p, before[n]), f"trainable {n} did not move"


def test_freeze_drops_gradients_of_frozen_parameters_only(cnn: SmallCNN) -> None:
    loss_of(cnn, 0).backward()  # type: ignore[no-untyped-call]
    sel = ff.freeze(cnn, "head")
    assert cnn.head.weight.grad is None
    assert cnn.head.bias.grad is None
    assert all(p.grad is not None for p in cnn.parameters() if p not in sel)


def test_freeze_returns_the_selection_and_sets_requires_grad(tiny_lm: TinyLM) -> None:
    sel = ff.freeze(tiny_lm, "lm_head")
    assert sel.names == ("embed.weight",)
    assert tiny_lm.embed.weight.requires_grad is False
    assert tiny_lm.lm_head.weight.requires_grad is False
    trainable = [n for n, p in tiny_lm.named_parameters() if p.requires_grad]
    assert len(trainable) == 27
    assert "embed.weight" not in trainable
    # freezing twice changes nothing
    again = ff.freeze(tiny_lm, "lm_head")
    assert again.names == sel.names
    assert [n for n, p in tiny_lm.named_parameters() if p.requires_grad] == trainable


def test_unfreeze_makes_parameters_trainable_again(mlp: MLP) -> None:
    ff.freeze(mlp, ff.everything())
    assert not any(p.requires_grad for p in mlp.parameters())
    sel = ff.unfreeze(mlp, ff.last(1))
    assert sel.names == ("fc3.weight", "fc3.bias")
    assert [n for n, p in mlp.named_parameters() if p.requires_grad] == ["fc3.weight", "fc3.bias"]


# --------------------------------------------------------------------------- norm modes


BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def training(module: nn.Module) -> bool:
    """``module.training``, read through a call so that mypy does not carry an earlier
    assertion about it over a ``train()``/``eval()`` call."""
    return module.training


def bn_state(bn: nn.Module) -> dict[str, torch.Tensor]:
    return {b: getattr(bn, b).clone() for b in BN_BUFFERS}


def assert_bn_state_equal(bn: nn.Module, state: dict[str, torch.Tensor], equal: bool) -> None:
    same = [torch.equal(getattr(bn, b), state[b]) for b in BN_BUFFERS]
    assert all(same) if equal else not any(same), same


def test_eval_mode_keeps_frozen_batchnorm_statistics_fixed(cnn: SmallCNN) -> None:
    ff.freeze(cnn, "stem")
    assert ff.core.norm_mode(cnn.stem[1]) == "eval"
    assert ff.core.norm_mode(cnn.bn) is None
    cnn.train()
    assert cnn.stem[1].training is False
    assert cnn.training and cnn.stem.training and cnn.bn.training and cnn.drop.training
    stem_bn, other_bn = bn_state(cnn.stem[1]), bn_state(cnn.bn)
    opt = torch.optim.SGD([p for p in cnn.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    train(cnn, opt, STEPS, set_to_none=True)
    assert_bn_state_equal(cnn.stem[1], stem_bn, equal=True)
    assert_bn_state_equal(cnn.bn, other_bn, equal=False)
    tracked = cnn.bn.num_batches_tracked
    assert tracked is not None
    assert int(tracked) == STEPS
    # it stays in eval mode through any number of train()/eval() calls
    cnn.eval()
    assert cnn.stem[1].training is False
    cnn.train()
    cnn.train(True)
    assert cnn.stem[1].training is False
    assert cnn.bn.training is True


def test_eval_mode_locks_only_norm_layers_whose_parameters_are_all_frozen(cnn: SmallCNN) -> None:
    ff.freeze(cnn, "stem.1.weight")
    assert ff.core.norm_mode(cnn.stem[1]) is None
    assert cnn.train().stem[1].training is True
    ff.freeze(cnn, "stem.1.bias")
    assert ff.core.norm_mode(cnn.stem[1]) == "eval"
    assert cnn.train().stem[1].training is False


def test_train_mode_keeps_norm_layers_trainable(cnn: SmallCNN) -> None:
    sel = ff.freeze(cnn, ff.first(2), norm="train")
    assert sel.names == ("stem.0.weight", "stem.0.bias", "conv.weight", "conv.bias")
    assert all(p.requires_grad for p in (*cnn.stem[1].parameters(), *cnn.bn.parameters()))
    assert ff.core.norm_mode(cnn.stem[1]) is None
    assert ff.core.norm_mode(cnn.bn) is None
    cnn.train()
    assert cnn.stem[1].training and cnn.bn.training
    stats = bn_state(cnn.stem[1])
    norm_params = {n: t for n, t in snapshot(cnn).items() if ".1." in n}
    opt = torch.optim.Adam([p for p in cnn.parameters() if p.requires_grad], lr=1e-2)
    train(cnn, opt, STEPS, set_to_none=True)
    assert_bn_state_equal(cnn.stem[1], stats, equal=False)
    for n, before in norm_params.items():
        assert not torch.equal(dict(cnn.named_parameters())[n], before), n
    cnn.eval()
    assert not cnn.stem[1].training


def test_frozen_mode_is_sticky_through_unfreeze(cnn: SmallCNN) -> None:
    ff.freeze(cnn, ff.everything(), norm="frozen")
    assert ff.core.norm_mode(cnn.stem[1]) == ff.core.norm_mode(cnn.bn) == "frozen"
    sel = ff.unfreeze(cnn, ff.everything())
    norm_names = {"stem.1.weight", "stem.1.bias", "bn.weight", "bn.bias"}
    assert set(sel.names) == {n for n, _ in cnn.named_parameters()} - norm_names
    for n, p in cnn.named_parameters():
        assert p.requires_grad is (n not in norm_names), n
    assert ff.core.norm_mode(cnn.stem[1]) == ff.core.norm_mode(cnn.bn) == "frozen"
    assert cnn.train().stem[1].training is False
    assert cnn.bn.training is False
    # naming the norm layer directly does not unfreeze it either
    assert ff.unfreeze(cnn, "bn", allow_empty=True).names == ()
    assert not cnn.bn.weight.requires_grad
    # until asked explicitly
    sel = ff.unfreeze(cnn, ff.everything(), include_frozen_norm=True)
    assert set(sel.names) == {n for n, _ in cnn.named_parameters()}
    assert all(p.requires_grad for p in cnn.parameters())
    assert ff.core.norm_mode(cnn.stem[1]) is None
    assert ff.core.norm_mode(cnn.bn) is None
    assert cnn.train().stem[1].training is True
    assert cnn.eval().stem[1].training is False


def test_frozen_mode_is_sticky_for_norm_layers_without_parameters() -> None:
    # BatchNorm(affine=False) has no parameters: it is governed by the module that holds it
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4, affine=False), nn.Linear(4, 2))
    ff.freeze(net, ff.everything(), norm="frozen")
    assert ff.core.norm_mode(net[1]) == "frozen"
    ff.unfreeze(net, ff.everything())
    assert ff.core.norm_mode(net[1]) == "frozen"
    assert net.train()[1].training is False
    stats = bn_state(net[1])
    net(torch.randn(8, 4))
    assert_bn_state_equal(net[1], stats, equal=True)
    ff.unfreeze(net, ff.everything(), include_frozen_norm=True)
    assert ff.core.norm_mode(net[1]) is None
    assert net.train()[1].training is True


def test_an_adaptive_norm_is_not_a_norm_layer_its_linear_unfreezes_and_its_dropout_runs() -> None:
    # named like a norm (diffusers' AdaLayerNorm), but a Linear in it predicts the scale: only
    # the LayerNorm inside is a norm layer, sticky under norm="frozen"; the Linear unfreezes
    # and the Dropout beside it follows train()
    class AdaLayerNorm(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear, self.norm, self.drop = nn.Linear(4, 4), nn.LayerNorm(4), nn.Dropout(0.5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = self.drop(self.norm(x) * (1 + self.linear(x)))
            return out

    torch.manual_seed(0)
    ada = AdaLayerNorm()
    net = nn.Sequential(nn.Linear(4, 4), ada, nn.Linear(4, 2))
    ff.freeze(net, ff.everything(), norm="frozen")
    ff.unfreeze(net, ff.everything())
    flags = {n: p.requires_grad for n, p in net.named_parameters()}
    assert flags == {n: not n.startswith("1.norm.") for n in flags}
    assert ff.core.norm_mode(ada) is None and ff.core.norm_mode(ada.norm) == "frozen"
    net.train()
    assert ada.training and ada.drop.training and not ada.norm.training
    ff.freeze(net, "1.linear")
    assert ff.core.norm_mode(ada) is None and ada.drop.training


def test_eval_mode_locks_norm_layers_without_parameters_with_their_holder() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4, affine=False), nn.Linear(4, 2))
    ff.freeze(net, "0")
    assert ff.core.norm_mode(net[1]) is None  # the holder (net) still has trainable parameters
    ff.freeze(net, "2")
    assert ff.core.norm_mode(net[1]) == "eval"
    stats = bn_state(net[1])
    net.train()(torch.randn(8, 4))
    assert_bn_state_equal(net[1], stats, equal=True)
    ff.unfreeze(net, "2")
    assert ff.core.norm_mode(net[1]) is None
    assert net.train()[1].training is True


@pytest.mark.parametrize("model_training", [True, False], ids=["model_train", "model_eval"])
def test_unfreeze_restores_normal_train_eval_behaviour(cnn: SmallCNN, model_training: bool) -> None:
    cnn.train(model_training)
    ff.freeze(cnn, ff.everything())
    assert ff.core.norm_mode(cnn.stem[1]) == ff.core.norm_mode(cnn.bn) == "eval"
    ff.unfreeze(cnn, ff.everything())
    assert ff.core.norm_mode(cnn.stem[1]) is None
    assert ff.core.norm_mode(cnn.bn) is None
    assert "train" not in cnn.stem[1].__dict__
    # they start in the mode of the module that holds them, then follow train()/eval()
    assert cnn.stem[1].training is model_training
    assert cnn.bn.training is model_training
    cnn.train()
    assert training(cnn.stem[1]) and training(cnn.bn)
    cnn.eval()
    assert not training(cnn.stem[1]) and not training(cnn.bn)
    stats = bn_state(cnn.bn)
    opt = torch.optim.SGD(cnn.parameters(), lr=0.1)
    train(cnn, opt, 1, set_to_none=True)
    assert_bn_state_equal(cnn.bn, stats, equal=False)


def test_a_norm_layer_is_locked_exactly_while_all_its_parameters_are_frozen(
    cnn: SmallCNN,
) -> None:
    # partially frozen from scratch: not locked
    ff.freeze(cnn, "bn.bias")
    assert ff.core.norm_mode(cnn.bn) is None
    # fully frozen: locked
    ff.freeze(cnn, ff.everything())
    assert ff.core.norm_mode(cnn.bn) == "eval"
    # partially unfrozen: a trainable norm layer is not held in eval mode, whatever the history
    ff.unfreeze(cnn, "bn.weight")
    assert ff.core.norm_mode(cnn.bn) is None
    assert cnn.train().bn.training is True
    assert ff.core.norm_mode(cnn.stem[1]) == "eval"


@settings(max_examples=60, deadline=None)
@given(
    ops=st.lists(
        st.tuples(
            st.sampled_from(["freeze", "unfreeze"]),
            st.sets(st.sampled_from(CNN_NAMES), min_size=1),
        ),
        min_size=1,
        max_size=8,
    )
)
def test_norm_lock_follows_frozen_state_through_any_freeze_unfreeze_sequence(
    ops: list[tuple[str, set[str]]],
) -> None:
    cnn = make_small_cnn()
    for op, names in ops:
        (ff.freeze if op == "freeze" else ff.unfreeze)(cnn, sorted(names))
        for bn in (cnn.stem[1], cnn.bn):
            all_frozen = not any(p.requires_grad for p in bn.parameters())
            assert ff.core.norm_mode(bn) == ("eval" if all_frozen else None)
            assert cnn.train().training is True
            assert bn.training is not all_frozen
            assert cnn.eval().training is False
            assert bn.training is False


# --------------------------------------------------------------------------- frozen()


def prepare_mixed_state(cnn: SmallCNN) -> None:
    """Some parameters frozen, one norm layer locked 'frozen', the model in train mode."""
    ff.freeze(cnn, "head")
    ff.freeze(cnn, "bn", norm="frozen")
    ff.freeze(cnn, "stem.0.bias")
    cnn.train()


@pytest.mark.parametrize("norm", ["eval", "train", "frozen"])
@pytest.mark.parametrize("model_training", [True, False], ids=["model_train", "model_eval"])
def test_frozen_context_restores_flags_and_norm_modes_exactly(
    cnn: SmallCNN, norm: ff.core.NormMode, model_training: bool
) -> None:
    prepare_mixed_state(cnn)
    cnn.train(model_training)
    before = (flags(cnn), training_flags(cnn), norm_state(cnn))
    with ff.frozen(cnn, ff.everything(), norm=norm) as sel:
        assert len(sel) > 0
        if norm == "train":
            assert all(p.requires_grad is False for p in sel.params)
            assert cnn.stem[1].weight.requires_grad
        else:
            assert not any(p.requires_grad for p in cnn.parameters())
            assert ff.core.norm_mode(cnn.stem[1]) == norm
            assert cnn.stem[1].train().training is False
    assert (flags(cnn), training_flags(cnn), norm_state(cnn)) == before
    # the norm layer that was free follows train()/eval() again, the locked one stays locked
    cnn.train()
    assert cnn.stem[1].training is True
    assert cnn.bn.training is False
    assert ff.core.norm_mode(cnn.bn) == "frozen"


def test_frozen_context_restores_on_error(cnn: SmallCNN) -> None:
    prepare_mixed_state(cnn)
    before = (flags(cnn), training_flags(cnn), norm_state(cnn))
    with pytest.raises(RuntimeError, match="boom"), ff.frozen(cnn, ff.everything()):
        raise RuntimeError("boom")
    assert (flags(cnn), training_flags(cnn), norm_state(cnn)) == before


def test_frozen_context_with_bad_policy_changes_nothing(cnn: SmallCNN) -> None:
    prepare_mixed_state(cnn)
    before = (flags(cnn), training_flags(cnn), norm_state(cnn))
    with pytest.raises(ff.PolicyError), ff.frozen(cnn, "no_such_layer"):
        pass  # pragma: no cover
    assert (flags(cnn), training_flags(cnn), norm_state(cnn)) == before


def test_training_inside_frozen_moves_only_the_rest(cnn: SmallCNN) -> None:
    before = snapshot(cnn, buffers=True)
    opt = torch.optim.AdamW(cnn.parameters(), lr=1e-2, weight_decay=0.1)
    with ff.frozen(cnn, ~ff.name("head")):
        train(cnn, opt, STEPS, set_to_none=False)
    after = snapshot(cnn, buffers=True)
    for n in after:
        if n.startswith("head."):
            assert not torch.equal(after[n], before[n]), n
        else:  # frozen parameters and the locked BatchNorm statistics
            assert torch.equal(after[n], before[n]), n
    assert all(p.requires_grad for p in cnn.parameters())


# --------------------------------------------------------------------------- copy, pickle, save


def _deepcopy(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model)


def _pickle(model: nn.Module) -> nn.Module:
    twin: nn.Module = pickle.loads(pickle.dumps(model))
    return twin


def _torch_save(model: nn.Module) -> nn.Module:
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    twin: nn.Module = torch.load(buf, weights_only=False)
    return twin


@pytest.mark.parametrize(
    "clone", [_deepcopy, _pickle, _torch_save], ids=["deepcopy", "pickle", "torch_save"]
)
def test_models_with_locked_norm_layers_copy_pickle_and_save(
    clone: Callable[[nn.Module], nn.Module],
) -> None:
    model = make_small_cnn()
    keys = list(model.state_dict())
    ff.freeze(model, "stem")
    ff.freeze(model, ff.name("conv", "bn"), norm="frozen")
    assert list(model.state_dict()) == keys
    model.train()
    twin = clone(model)
    assert isinstance(twin, SmallCNN)
    assert twin is not model
    assert list(twin.state_dict()) == keys
    for (n, a), (_, b) in zip(model.state_dict().items(), twin.state_dict().items()):
        assert torch.equal(a, b), n
    assert flags(twin) == flags(model)
    assert training_flags(twin) == training_flags(model)
    assert (
        norm_state(twin)
        == norm_state(model)
        == {
            "stem.1": ("eval", False),
            "bn": ("frozen", False),
        }
    )
    # the copy's locks act on the copy: force its BatchNorm into train mode, train() fixes it
    nn.Module.train(twin.stem[1], True)
    twin.train()
    assert twin.stem[1].training is False
    # and leave the original alone
    nn.Module.train(model.stem[1], True)
    twin.train()
    assert training(model.stem[1]) is True
    model.train()
    assert training(model.stem[1]) is False
    # unfreezing the copy does not touch the original
    ff.unfreeze(twin, ff.everything(), include_frozen_norm=True)
    assert ff.core.norm_mode(twin.bn) is None
    assert twin.train().bn.training is True
    assert ff.core.norm_mode(model.bn) == "frozen"
    assert not model.bn.weight.requires_grad
    # same outputs
    model.eval()
    twin.eval()
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(model(x), twin(x))


def test_tied_model_with_frozen_norms_survives_deepcopy(tiny_lm: TinyLM) -> None:
    ff.freeze(tiny_lm, ff.everything() - ff.name("ln_f"), norm="frozen")
    twin = copy.deepcopy(tiny_lm)
    assert twin.lm_head.weight is twin.embed.weight
    assert twin.embed.weight is not tiny_lm.embed.weight
    assert flags(twin) == flags(tiny_lm)
    assert norm_state(twin) == norm_state(tiny_lm)
    assert ff.core.norm_mode(twin.get_submodule("blocks.0.ln1")) == "frozen"
    assert ff.core.norm_mode(twin.ln_f) is None
