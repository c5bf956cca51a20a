"""Replacing the classification head of a pretrained network.

:func:`replace_head` finds the final classifier of torchvision-, timm- and
``efficientnet_lite_pytorch``-style models and swaps it for a fresh one with ``num_classes``
outputs, in place, so the rest of the network (and every parameter in it) is untouched.
"""

from __future__ import annotations

from torch import nn

from freezeflow.errors import (
    FreezeflowTypeError,
    HeadError,
    HeadNotFoundError,
    check_int,
    nearest,
    quote_list,
)

__all__ = ["HEAD_ATTRS", "replace_head"]

HEAD_ATTRS: tuple[str, ...] = ("fc", "classifier", "head", "heads", "_fc")
"""Attributes searched, in this order, for the classifier when ``attr`` is not given."""


def _check_positive_int(value: object, what: str) -> int:
    return check_int(what, value, 1, HeadError, f"pass e.g. {what}=10")


def _check_dropout(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise FreezeflowTypeError(
            f"dropout must be a float in [0, 1), got {value!r} of type {type(value).__name__}; "
            "hint: dropout=0.0 disables it"
        )
    if not 0.0 <= value < 1.0:
        raise HeadError(
            f"dropout must be a float in [0, 1), got {value!r}; hint: dropout=0.0 disables it"
        )
    return float(value)


def _final_linear(module: nn.Module, path: str) -> tuple[str, nn.Linear] | str:
    """``(dotted path, Linear)`` of the layer to replace inside ``module``, or why there is none.

    ``module`` may be a Linear, a Sequential whose last entry is one (possibly nested), or a
    timm-style head module holding its Linear as ``fc``.
    """
    if isinstance(module, nn.LazyLinear) or (
        isinstance(module, nn.Linear) and module.in_features == 0
    ):
        return f"{path} is an uninitialized {type(module).__name__}"
    if isinstance(module, nn.Linear):
        return path, module
    if isinstance(module, nn.Sequential):
        if len(module) == 0:
            return f"{path} is an empty Sequential"
        last, sub = list(module.named_children())[-1]  # ViT's heads = Sequential(head=...)
        found = _final_linear(sub, f"{path}.{last}")
        if isinstance(found, str):
            return f"{path} is a Sequential that does not end in nn.Linear ({found})"
        return found
    fc = getattr(module, "fc", None)
    if isinstance(fc, nn.Module):
        return _final_linear(fc, f"{path}.fc")
    return f"{path} is a {type(module).__name__}, not an nn.Linear"


def _new_head(
    old: nn.Linear, num_classes: int, hidden: int | None, dropout: float
) -> nn.Linear | nn.Sequential:
    dev, dt = old.weight.device, old.weight.dtype
    inp = old.in_features
    if hidden is not None:
        return nn.Sequential(
            nn.Linear(inp, hidden, device=dev, dtype=dt),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes, device=dev, dtype=dt),
        )
    linear = nn.Linear(inp, num_classes, device=dev, dtype=dt)
    return nn.Sequential(nn.Dropout(dropout), linear) if dropout > 0 else linear


def replace_head(
    model: nn.Module,
    num_classes: int,
    *,
    hidden: int | None = None,
    dropout: float = 0.0,
    attr: str | None = None,
) -> nn.Module:
    """Replace the classification head of ``model`` in place and return the new head.

    The head is looked up at ``model.fc`` (ResNet, RegNet, Inception), ``model.classifier``
    (VGG, EfficientNet, MobileNet, DenseNet, ConvNeXt), ``model.head`` (timm, Swin),
    ``model.heads`` (torchvision ViT: ``heads.head``) and ``model._fc``
    (``efficientnet_lite_pytorch``), in that order, or at the dotted path ``attr``. It may be an
    ``nn.Linear``, an ``nn.Sequential`` ending in one (only that last Linear is replaced, so a
    preceding dropout or hidden layer stays), or a timm head module holding its Linear as ``fc``.

    The replaced Linear becomes ``Linear(in_features, num_classes)``; with ``hidden`` it
    becomes ``Sequential(Linear(in_features, hidden), ReLU(), Dropout(dropout),
    Linear(hidden, num_classes))``, and with ``dropout > 0`` but no ``hidden``,
    ``Sequential(Dropout(dropout), Linear(in_features, num_classes))``. The new layers are
    created on the old Linear's device and dtype, in the training mode of their parent, with
    fresh (trainable) parameters; every other parameter of the model is left as it was.

    Args:
        model: the network, e.g. a torchvision or timm classifier.
        num_classes: number of outputs of the new head (a positive int).
        hidden: width of an optional hidden layer (a positive int), or ``None``.
        dropout: dropout probability in ``[0, 1)`` before the final Linear.
        attr: dotted path of the head (``"heads.head"``, ``"classifier"``...) to skip the search.

    Returns:
        The new head module (the ``nn.Linear`` or ``nn.Sequential`` now in the model).

    Raises:
        HeadError: ``num_classes``, ``hidden`` or ``dropout`` is out of range
            (:class:`~freezeflow.errors.FreezeflowTypeError`: not a number), or ``attr``
            is empty (``FreezeflowTypeError``: not a string).
        HeadNotFoundError: no replaceable head was found (a ``HeadError``, so also a
            ``ValueError``). The model is unchanged whenever an error is raised.

    Example:
        >>> import torch, torchvision
        >>> from freezeflow.core.heads import replace_head
        >>> model = torchvision.models.resnet18(weights=None)
        >>> replace_head(model, 10)
        Linear(in_features=512, out_features=10, bias=True)
        >>> model(torch.zeros(2, 3, 64, 64)).shape
        torch.Size([2, 10])
        >>> head = replace_head(model, 5, hidden=128, dropout=0.2)
        >>> [type(m).__name__ for m in head]
        ['Linear', 'ReLU', 'Dropout', 'Linear']
        >>> model(torch.zeros(2, 3, 64, 64)).shape
        torch.Size([2, 5])
    """
    num_classes = _check_positive_int(num_classes, "num_classes")
    if hidden is not None:
        hidden = _check_positive_int(hidden, "hidden")
    dropout = _check_dropout(dropout)
    cls = type(model).__name__
    found: tuple[str, nn.Linear] | str

    if attr is not None:
        if not isinstance(attr, str):
            raise FreezeflowTypeError(
                f"attr must be a dotted module path, got {attr!r} of type {type(attr).__name__}; "
                "hint: attr='classifier' or attr='head.fc'"
            )
        if not attr:
            raise HeadError(
                "attr must be a non-empty dotted module path, got ''; hint: leave attr out to "
                "search the usual head attributes"
            )
        names = [n for n, _ in model.named_modules() if n]
        try:
            target = model.get_submodule(attr)
        except AttributeError:
            raise HeadNotFoundError(
                f"{cls} has no submodule {attr!r}; hint: did you mean one of "
                f"{quote_list(nearest(attr, names))}?"
            ) from None
        found = _final_linear(target, attr)
        if isinstance(found, str):
            raise HeadNotFoundError(
                f"cannot replace the head of {cls} at attr={attr!r}: {found}; hint: pass "
                "attr= naming an nn.Linear or an nn.Sequential ending in one"
            )
    else:
        reasons: list[str] = []
        found = "no candidate"
        for name in HEAD_ATTRS:
            sub = getattr(model, name, None)
            if not isinstance(sub, nn.Module):
                continue
            found = _final_linear(sub, name)
            if not isinstance(found, str):
                break
            reasons.append(found)
        if isinstance(found, str):
            linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n]
            why = "; ".join(reasons) if reasons else "none of them exists"
            hint = (
                f"pass attr= naming the classifier, e.g. attr={linears[-1]!r} (its last Linear)"
                if linears
                else "the model has no nn.Linear; pass attr= naming an nn.Linear to replace"
            )
            raise HeadNotFoundError(
                f"cannot find the classification head of {cls}: tried "
                f"{', '.join('model.' + a for a in HEAD_ATTRS)} ({why}); hint: {hint}"
            )

    path, old = found
    parent_path, _, child = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    new = _new_head(old, num_classes, hidden, dropout)
    new.train(parent.training)
    setattr(parent, child, new)
    return new
