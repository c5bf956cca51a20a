"""Freezing and unfreezing parameters, and what happens to norm layers when you do.

``freeze`` sets ``requires_grad=False`` and drops ``.grad`` (so no optimizer can move the
parameter: not momentum, not Adam's moments, not decoupled weight decay). Norm layers whose
parameters all end up frozen follow a *norm mode*:

- ``"eval"`` (default, Keras semantics): the layer runs in eval mode, so its running
  statistics stop changing, and it stays in eval mode through later ``model.train()`` calls.
- ``"train"`` (fastai's ``train_bn``): norm layers are left out of the freeze; their
  parameters stay trainable and they follow ``model.train()``/``eval()`` as usual.
- ``"frozen"``: like ``"eval"``, and sticky: a later :func:`unfreeze` leaves these layers
  frozen unless it is called with ``include_frozen_norm=True`` (the detection-backbone
  convention of frozen BatchNorm).
- ``"ignore"``: freezeflow leaves norm layers alone, as a hand-written ``requires_grad``
  loop does: frozen BatchNorm layers keep updating their running statistics in
  ``model.train()`` (the statistics drift of the classic tutorial recipe; only for reproducing it).

``unfreeze`` makes parameters trainable again and returns their norm layers to normal
behaviour (following the mode of the module that holds them).

``freeze``/``unfreeze`` resolve a policy, then call :func:`freeze_params` /
:func:`unfreeze_params`: the same change for parameters already in hand (what the
:class:`~freezeflow.GradualUnfreezer` does at each stage change); :func:`restore_norm_modes`
puts back the modes :func:`norm_mode` read (checkpoints).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Literal, get_args

import torch
from torch import nn

from freezeflow.core.discovery import is_norm_layer
from freezeflow.core.policy import PolicyLike, as_policy
from freezeflow.core.selection import Selection
from freezeflow.errors import PolicyError, PolicyTypeError

__all__ = [
    "NormMode",
    "check_norm_mode",
    "freeze",
    "freeze_params",
    "frozen",
    "norm_mode",
    "restore_norm_modes",
    "unfreeze",
    "unfreeze_params",
]

NormMode = Literal["eval", "train", "frozen", "ignore"]
"""What happens to norm layers whose parameters are frozen: ``"eval"`` (default: fixed
statistics, kept through ``model.train()``), ``"train"`` (norm layers stay trainable, fastai's
``train_bn``), ``"frozen"`` (like ``"eval"`` and sticky through :func:`unfreeze`) or
``"ignore"`` (left alone, as a plain ``requires_grad`` loop does)."""
_MODES: tuple[str, ...] = get_args(NormMode)


class _NormLock:
    """Installed as a norm layer's ``train`` method: keeps it in eval mode.

    Module-level and holding only the module and the mode, so models with locked layers still
    pickle, deep-copy and ``torch.save`` as usual.
    """

    __slots__ = ("mode", "module")

    def __init__(self, module: nn.Module, mode: str) -> None:
        self.module = module
        self.mode = mode

    def __call__(self, mode: bool = True) -> nn.Module:
        return nn.Module.train(self.module, False)

    def __getstate__(self) -> tuple[nn.Module, str]:
        return self.module, self.mode

    def __setstate__(self, state: tuple[nn.Module, str]) -> None:
        self.module, self.mode = state


def norm_mode(module: nn.Module) -> str | None:
    """The norm mode freezeflow applied to ``module`` (``"eval"``/``"frozen"``), or None."""
    lock = module.__dict__.get("train")
    return lock.mode if isinstance(lock, _NormLock) else None


def _lock(module: nn.Module, mode: str) -> None:
    module.__dict__["train"] = _NormLock(module, mode)
    nn.Module.train(module, False)


def _unlock(module: nn.Module, training: bool) -> None:
    if isinstance(module.__dict__.get("train"), _NormLock):
        del module.__dict__["train"]
    nn.Module.train(module, training)


def check_norm_mode(norm: object) -> None:
    """Raise :class:`~freezeflow.errors.PolicyError` unless ``norm`` is a :data:`NormMode`."""
    if norm not in _MODES:
        raise PolicyError(
            f"norm={norm!r} is not a norm mode; expected one of {', '.join(map(repr, _MODES))}; "
            "hint: 'eval' keeps frozen BatchNorm statistics fixed (Keras), 'train' keeps norm "
            "layers trainable (fastai train_bn)"
        )


def _check_flag(call: str, name: str, value: object) -> None:
    """Refuse a switch that is not a bool (a string such as ``"no"`` is truthy), before
    anything changes."""
    if not isinstance(value, bool):
        raise PolicyTypeError(
            f"{call}({name}={value!r}): expected True or False, got a {type(value).__name__}; "
            f"hint: {name}=True"
        )


def _norm_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module, nn.Module]]:
    """(path, norm layer, nearest ancestor that owns parameters or the root)."""
    stack: list[tuple[str, nn.Module, nn.Module]] = [("", model, model)]
    while stack:
        path, module, holder = stack.pop()
        if is_norm_layer(module) and module is not model:
            yield path, module, holder
            continue
        here = module if next(module.parameters(), None) is not None else holder
        for child_name, child in reversed(list(module.named_children())):
            stack.append((f"{path}.{child_name}" if path else child_name, child, here))


def _governed(module: nn.Module, holder: nn.Module, want_frozen: bool) -> bool:
    params = list(module.parameters()) or list(holder.parameters())
    if not params:
        return False
    return all(p.requires_grad != want_frozen for p in params)


_BLOCK = "block"  # lock mode of modules frozen whole with eval_frozen=True
_LOCK_MODES = ("eval", "frozen", _BLOCK)


def _refresh_block_locks(model: nn.Module, enable: bool) -> None:
    """Eval-lock every maximal module whose parameters are all frozen (``eval_frozen``).

    Existing block locks are first released (the module goes back to its parent's mode), so
    a module that gained a trainable parameter leaves eval mode. With ``enable`` false this
    only runs when the model already has block locks.
    """
    modules = list(model.named_modules())
    locked = [m for _, m in modules if norm_mode(m) == _BLOCK]
    if not enable and not locked:
        return
    parents = {id(c): m for _, m in modules for c in m.children()}
    for m in locked:
        _unlock(m, parents.get(id(m), model).training)
    stack = list(model.children())
    while stack:
        m = stack.pop()
        params = list(m.parameters())
        if params and not any(p.requires_grad for p in params):
            if norm_mode(m) is None:
                _lock(m, _BLOCK)
        else:
            stack.extend(m.children())


def _model_params(
    model: nn.Module, params: Iterable[torch.Tensor], caller: str
) -> list[torch.Tensor]:
    """``params`` without repeats, after checking each is a parameter of ``model``."""
    known = {id(p) for p in model.parameters()}
    given: list[torch.Tensor] = [params] if isinstance(params, torch.Tensor) else list(params)
    foreign = [p for p in given if id(p) not in known]
    if foreign:
        shown = [tuple(p.shape) if isinstance(p, torch.Tensor) else p for p in foreign[:3]]
        raise PolicyError(
            f"{caller}: {len(foreign)} item(s) are not parameters of {type(model).__name__} "
            f"({shown}); hint: pass parameters of this model, or a policy to freeze()/unfreeze()"
        )
    return list({id(p): p for p in given}.values())


def _touched(module: nn.Module, holder: nn.Module, ids: set[int]) -> bool:
    """Whether a change of the parameters ``ids`` concerns norm layer ``module`` (its own
    parameters, or its holder's when it has none)."""
    return any(id(p) in ids for p in module.parameters()) or (
        next(module.parameters(), None) is None and any(id(p) in ids for p in holder.parameters())
    )


def freeze_params(
    model: nn.Module,
    params: Iterable[torch.Tensor],
    *,
    norm: NormMode = "eval",
    eval_frozen: bool = False,
) -> list[torch.Tensor]:
    """Freeze the given parameters of ``model``: what :func:`freeze` does once its policy is
    resolved, for parameters already in hand.

    Args:
        model: the model that holds ``params`` (its norm layers follow ``norm``).
        params: parameters of ``model`` (repeats are ignored).
        norm: what happens to norm layers left with only frozen parameters (module docstring).
        eval_frozen: see :func:`freeze`.

    Returns:
        The parameters frozen, in the order given (with ``norm="train"``, minus norm-layer
        ones, which stay trainable).

    Raises:
        PolicyError: bad norm mode, or something in ``params`` is not a parameter of
            ``model``; nothing has changed then.

    Example:
        >>> import torch.nn as nn, freezeflow as ff
        >>> from freezeflow.core.freezing import freeze_params
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2), nn.Linear(2, 1))
        >>> len(freeze_params(net, [*net[0].parameters(), *net[1].parameters()]))
        4
        >>> net.train()[1].training  # a norm layer with only frozen parameters stays in eval
        False
    """
    check_norm_mode(norm)
    _check_flag("freeze_params", "eval_frozen", eval_frozen)
    chosen = _model_params(model, params, "freeze_params")
    if norm == "train":
        norm_params = {
            id(p) for m in model.modules() if is_norm_layer(m) for p in m.parameters(recurse=False)
        }
        chosen = [p for p in chosen if id(p) not in norm_params]
    ids = {id(p) for p in chosen}
    for p in chosen:
        p.requires_grad_(False)
        p.grad = None
    if norm in ("eval", "frozen"):
        for _, module, holder in _norm_layers(model):
            # a "frozen" layer stays frozen (sticky) whatever mode a later freeze asks for
            if (
                _touched(module, holder, ids)
                and _governed(module, holder, want_frozen=True)
                and (norm_mode(module) != "frozen")
            ):
                _lock(module, norm)
    _refresh_block_locks(model, eval_frozen)
    return chosen


def unfreeze_params(
    model: nn.Module, params: Iterable[torch.Tensor], *, include_frozen_norm: bool = False
) -> list[torch.Tensor]:
    """Make the given parameters of ``model`` trainable again: what :func:`unfreeze` does once
    its policy is resolved, for parameters already in hand.

    Returns:
        The parameters made trainable, in the order given: all of them, except those of norm
        layers frozen with ``norm="frozen"`` unless ``include_frozen_norm`` is true.

    Raises:
        PolicyError: something in ``params`` is not a parameter of ``model``; nothing has
            changed then.

    Example:
        >>> import torch.nn as nn, freezeflow as ff
        >>> from freezeflow.core.freezing import unfreeze_params
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
        >>> _ = ff.freeze(net, ff.everything())
        >>> len(unfreeze_params(net, net[1].parameters()))
        2
        >>> [p.requires_grad for p in net.parameters()]
        [False, False, True, True]
    """
    _check_flag("unfreeze_params", "include_frozen_norm", include_frozen_norm)
    given = _model_params(model, params, "unfreeze_params")
    sticky = set()
    if not include_frozen_norm:
        for _, module, _holder in _norm_layers(model):
            if norm_mode(module) == "frozen":
                sticky |= {id(p) for p in module.parameters()}
    chosen = [p for p in given if id(p) not in sticky]
    ids = {id(p) for p in chosen}
    for p in chosen:
        p.requires_grad_(True)
    for _, module, holder in _norm_layers(model):
        mode = norm_mode(module)
        if mode is None or (mode == "frozen" and not include_frozen_norm):
            continue
        # locked exactly while all its parameters are frozen, as freeze() decides
        if _touched(module, holder, ids) and not _governed(module, holder, want_frozen=True):
            _unlock(module, holder.training)
    _refresh_block_locks(model, enable=False)
    return chosen


def _subset(model: nn.Module, selection: Selection, kept: list[torch.Tensor]) -> Selection:
    """``selection`` narrowed to the parameters ``kept``."""
    if len(kept) == len(selection):
        return selection
    ids = {id(p) for p in kept}
    pairs = [(n, p) for n, p in zip(selection.names, selection.params) if id(p) in ids]
    return Selection(
        [n for n, _ in pairs],
        [p for _, p in pairs],
        [selection.aliases(n) for n, _ in pairs],
        model_name=type(model).__name__,
        total=selection.total,
    )


def freeze(
    model: nn.Module,
    policy: PolicyLike,
    *,
    norm: NormMode = "eval",
    eval_frozen: bool = False,
    allow_empty: bool = False,
) -> Selection:
    """Freeze the parameters ``policy`` selects on ``model``.

    Args:
        model: any ``nn.Module``.
        policy: a :class:`~freezeflow.FreezePolicy`, or a name / list of names.
        norm: what happens to norm layers left with only frozen parameters (module docstring).
        eval_frozen: also run every module whose parameters are all frozen in eval mode
            (dropout, stochastic depth and norm layers inside it), through later
            ``model.train()`` calls, until one of its parameters is unfrozen. This makes a
            frozen feature extractor deterministic, which frozen-prefix caching needs.
        allow_empty: do not raise when the policy selects nothing.

    Returns:
        The parameters that were selected (with ``norm="train"``, minus norm-layer ones).

    Raises:
        PolicyError: bad policy or norm mode; nothing on the model has changed then.

    Example:
        >>> import torchvision, freezeflow as ff
        >>> model = torchvision.models.resnet18()
        >>> _ = ff.freeze(model, ~ff.name("fc"))
        >>> model.train().bn1.training  # frozen BatchNorm stays in eval mode
        False
        >>> [n for n, p in model.named_parameters() if p.requires_grad]
        ['fc.weight', 'fc.bias']
    """
    check_norm_mode(norm)
    _check_flag("freeze", "eval_frozen", eval_frozen)
    _check_flag("freeze", "allow_empty", allow_empty)
    selection = as_policy(policy).select(model, allow_empty=allow_empty)
    done = freeze_params(model, selection.params, norm=norm, eval_frozen=eval_frozen)
    return _subset(model, selection, done)


def unfreeze(
    model: nn.Module,
    policy: PolicyLike,
    *,
    include_frozen_norm: bool = False,
    allow_empty: bool = False,
) -> Selection:
    """Make the parameters ``policy`` selects trainable again.

    Norm layers that end up with trainable parameters return to normal behaviour (they follow
    ``model.train()``/``eval()`` again, starting in the mode of the module that holds them).
    Layers frozen with ``norm="frozen"`` stay frozen unless ``include_frozen_norm`` is true.

    Returns:
        The parameters made trainable.

    Example:
        >>> import torchvision, freezeflow as ff
        >>> model = torchvision.models.resnet18()
        >>> _ = ff.freeze(model, ff.everything())
        >>> ff.unfreeze(model, "layer4").numel
        8393728
    """
    _check_flag("unfreeze", "include_frozen_norm", include_frozen_norm)
    _check_flag("unfreeze", "allow_empty", allow_empty)
    selection = as_policy(policy).select(model, allow_empty=allow_empty)
    done = unfreeze_params(model, selection.params, include_frozen_norm=include_frozen_norm)
    return _subset(model, selection, done)


def restore_norm_modes(model: nn.Module, modes: Mapping[str, str]) -> None:
    """Give ``model``'s modules exactly the norm modes ``modes`` lists (module path ->
    :func:`norm_mode`, read from this model or a copy of it): listed modules are locked in
    that mode, any other locked module is released into the training mode of its parent.

    Raises:
        PolicyError: ``modes`` names a module ``model`` does not have, or an unknown mode;
            nothing has changed then.
    """
    modules = dict(model.named_modules())
    missing = [path for path in modes if path not in modules]
    bad = {path: mode for path, mode in modes.items() if mode not in _LOCK_MODES}
    if missing:
        raise PolicyError(
            f"restore_norm_modes: {type(model).__name__} has no module {missing[0]!r} "
            f"({len(missing)} unknown path(s)); hint: restore modes saved from this model"
        )
    if bad:
        raise PolicyError(
            f"restore_norm_modes: unknown norm mode(s) {bad}; expected one of "
            f"{list(_LOCK_MODES)} (what norm_mode() returns)"
        )
    for path, m in modules.items():
        mode = modes.get(path)
        if mode is not None:
            _lock(m, mode)
        elif norm_mode(m) is not None:
            parent = modules[path.rpartition(".")[0]] if path else model
            _unlock(m, parent.training)


@contextmanager
def frozen(model: nn.Module, policy: PolicyLike, *, norm: NormMode = "eval") -> Iterator[Selection]:
    """Freeze ``policy`` for the duration of a ``with`` block, then restore the previous
    ``requires_grad`` flags, norm modes and training flags exactly.

    Gradients dropped on entry are not restored.

    Example:
        >>> import torch.nn as nn, freezeflow as ff
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
        >>> with ff.frozen(net, "0"):
        ...     print([p.requires_grad for p in net.parameters()])
        [False, False, True, True]
        >>> [p.requires_grad for p in net.parameters()]
        [True, True, True, True]
    """
    check_norm_mode(norm)
    flags = [(p, p.requires_grad) for p in model.parameters()]
    norms = [(m, m.__dict__.get("train"), m.training) for m in model.modules()]
    selection = freeze(model, policy, norm=norm)
    try:
        yield selection
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        for m, lock, training in norms:
            if lock is None:
                m.__dict__.pop("train", None)
            else:
                m.__dict__["train"] = lock
            nn.Module.train(m, training)
