"""The first batch, checked before :func:`~freezeflow.fit` changes anything: one batch of the
training data through the model and the loss, so that a model whose output the loss cannot
take, or labels of the wrong dtype or range, are refused in the user's words, with a hint,
while the model's ``requires_grad`` flags, the optimizer and the random streams are still as
the user left them (without it, the first stage has frozen the body by the time torch's own
message arrives, and on CUDA an out-of-range label is a device-side assert that ends the
process).

The check leaves no trace: the batch is drawn without the loader's iterator where it can be
(the dataset's first samples, collated by the loader), the forward runs without gradients in
train mode (as training will), and the random states, every buffer (BatchNorm statistics)
and every module's train/eval mode are put back after it.

Example:
    >>> import torch, freezeflow as ff
    >>> from freezeflow.training.first_batch import check_first_batch
    >>> model = torch.nn.Linear(3, 2)
    >>> data = [(torch.randn(4, 3), torch.tensor([0.0, 1.0, 1.0, 0.0]))]
    >>> try:
    ...     check_first_batch(model, data, torch.nn.functional.cross_entropy, torch.device("cpu"))
    ... except ff.errors.TrainingTypeError as exc:
    ...     print(str(exc).split(", but")[0])
    the labels of the first training batch are a tensor of dtype torch.float32 and shape (4,)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from freezeflow.errors import TrainingError, TrainingTypeError
from freezeflow.training.batch import split_batch, to_device
from freezeflow.training.rng import data_generators, rng_state, set_rng_state
from freezeflow.unfreezer.restore import Restored

__all__ = ["check_first_batch", "describe"]

_CLASS_LOSSES = (F.cross_entropy, F.nll_loss)
"""Losses that take class logits (or log-probabilities) and integer class indices."""


def _class_loss(loss_fn: Callable[..., Any]) -> str | None:
    """The name of ``loss_fn`` when it takes class logits and class indices, else None."""
    if loss_fn in _CLASS_LOSSES:
        return f"F.{loss_fn.__name__}"
    if isinstance(loss_fn, (nn.CrossEntropyLoss, nn.NLLLoss)):
        return f"nn.{type(loss_fn).__name__}()"
    return None


def describe(x: Any) -> str:
    """A short account of a batch's inputs, outputs or labels, for messages."""
    if isinstance(x, Tensor):
        return f"a tensor of dtype {x.dtype} and shape {tuple(x.shape)}"
    if isinstance(x, dict):
        keys = ", ".join(repr(k) for k in list(x)[:6])
        return f"a {type(x).__name__} with keys {keys}"
    if isinstance(x, (tuple, list)):
        return f"a {type(x).__name__} of {len(x)} ({', '.join(type(v).__name__ for v in x[:4])})"
    return f"a {type(x).__name__}"


def _first(train_data: Iterable[Any]) -> Any:
    """One training batch: the dataset's first samples collated by the loader where the loader
    has a map-style dataset and a batch size (no iterator, no worker started), else the first
    batch the data yields."""
    if isinstance(train_data, DataLoader):
        dataset, size = train_data.dataset, train_data.batch_size
        if size and hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__"):
            n = min(size, len(dataset))
            if n > 0:
                return train_data.collate_fn([dataset[i] for i in range(n)])
    for batch in train_data:
        return batch
    raise TrainingError(
        f"train_data ({type(train_data).__name__}) yielded no batch; expected at least one; "
        "hint: check the dataset, and drop_last= with a batch size larger than the dataset"
    )


@contextmanager
def _no_trace(model: nn.Module, train_data: Iterable[Any], cuda: bool) -> Iterator[None]:
    """Put back, on the way out, the random states (and the loader's generators), every
    buffer and every module's train/eval mode."""
    generators = data_generators(train_data)
    rng = rng_state(cuda=cuda, generators=generators)
    try:
        with Restored(model, ()):  # buffers and modes (no parameter changes here)
            yield
    finally:
        set_rng_state(rng, cuda=cuda, generators=generators)


def check_first_batch(
    model: nn.Module,
    train_data: Iterable[Any],
    loss_fn: Callable[[Any, Any], Tensor],
    device: torch.device,
    autocast: torch.dtype | None = None,
) -> None:
    """Run ``model`` and ``loss_fn`` on one training batch, without gradients and without a
    trace, and refuse what training would fail on.

    Raises:
        TrainingTypeError: a model output the loss cannot take (a dict or a tuple for a class
            loss), labels of a dtype the loss cannot take, or a loss that is not a tensor.
        TrainingError: labels outside the model's classes, a non-scalar loss, or the model or
            the loss failing on the batch (torch's error chained, with what the batch holds).
    """
    with _no_trace(model, train_data, device.type == "cuda"):
        inputs, targets = split_batch(_first(train_data))
        inputs, targets = to_device(inputs, device), to_device(targets, device)
        model.train()
        mixed = nullcontext() if autocast is None else torch.autocast(device.type, autocast)
        with torch.no_grad(), mixed:
            try:
                outputs = model(inputs)
            except RuntimeError as exc:
                if "device" not in str(exc):
                    raise TrainingError(_model_failed(exc, inputs)) from exc
                raise TrainingError(
                    f"the model and the batch are on different devices: the model was moved "
                    f"to {device} ({exc}); expected every tensor the model uses on that "
                    "device; hint: fit() moves the model and each batch to device=; a tensor "
                    "the model keeps as a plain attribute must be a registered buffer; "
                    "nothing has been changed"
                ) from exc
            except (TypeError, ValueError, IndexError, KeyError) as exc:
                raise TrainingError(_model_failed(exc, inputs)) from exc
            _check_outputs_and_labels(outputs, targets, loss_fn)
            try:
                loss = loss_fn(outputs, targets)
            except (RuntimeError, TypeError, ValueError, IndexError, KeyError) as exc:
                raise TrainingError(
                    f"loss_fn failed on the first training batch ({type(exc).__name__}: "
                    f"{exc}); the model returned {describe(outputs)}, the labels are "
                    f"{describe(targets)}; expected what loss_fn(outputs, targets) takes; "
                    "hint: pass a loss_fn= that takes this output and these labels; nothing "
                    "has been changed"
                ) from exc
        if not isinstance(loss, Tensor):
            raise TrainingTypeError(
                f"loss_fn returned {loss!r} of type {type(loss).__name__} on the first "
                "training batch, expected a scalar tensor; hint: return the loss tensor "
                "itself, e.g. nn.CrossEntropyLoss()"
            )
        if loss.ndim != 0:
            raise TrainingError(
                f"loss_fn returned a tensor of shape {tuple(loss.shape)} on the first training "
                "batch, expected a scalar tensor; hint: reduce it (reduction='mean', or .mean())"
            )


def _model_failed(exc: Exception, inputs: Any) -> str:
    return (
        f"the model failed on the first training batch ({type(exc).__name__}: {exc}); its "
        f"inputs: {describe(inputs)}; expected the inputs the model takes; hint: fit() calls "
        "model(inputs) with the first element of each (inputs, targets) batch, moved to "
        "device=; nothing has been changed"
    )


def _check_outputs_and_labels(outputs: Any, targets: Any, loss_fn: Callable[..., Any]) -> None:
    """What a class loss (cross-entropy, NLL) cannot take, said before torch says it."""
    name = _class_loss(loss_fn)
    if name is None:
        return
    if not isinstance(outputs, Tensor):
        if isinstance(outputs, dict) and "logits" in outputs:  # a Hugging Face ModelOutput too
            pick = "out['logits']"
        elif hasattr(outputs, "logits"):
            pick = "out.logits"
        else:
            pick = "out[0]"
        raise TrainingTypeError(
            f"the model returned {describe(outputs)} on the first training batch, but the "
            f"loss, {name}, takes a tensor of class logits; expected a tensor, or a loss_fn "
            f"that picks one; hint: loss_fn=lambda out, y: {name.split('(')[0]}"
            f"{'()' if '(' in name else ''}({pick}, y)"
        )
    if not isinstance(targets, Tensor):
        raise TrainingTypeError(
            f"the labels of the first training batch are {describe(targets)}, but the loss, "
            f"{name}, takes a tensor of class indices; expected a tensor; hint: return "
            "(input, torch.tensor(label)) from the dataset, or let the DataLoader collate ints"
        )
    probabilities = targets.is_floating_point() and targets.shape == outputs.shape
    if probabilities and name.endswith("cross_entropy"):
        return  # class probabilities, which cross-entropy takes
    if targets.is_floating_point() or targets.dtype not in (torch.int64, torch.uint8):
        raise TrainingTypeError(
            f"the labels of the first training batch are {describe(targets)}, but the loss, "
            f"{name}, takes class indices of dtype torch.int64 (or, for cross-entropy, class "
            f"probabilities of the outputs' shape {tuple(outputs.shape)}); expected int64 "
            "labels; hint: cast them with .long() (in the dataset, or "
            "target_transform=int), or pass a loss_fn= that takes these labels"
        )
    if outputs.ndim < 1 or targets.numel() == 0:
        return
    classes = outputs.shape[1] if outputs.ndim > 1 else outputs.shape[0]
    kept = targets[targets != -100]  # the losses' default ignore_index
    if kept.numel() and (int(kept.min()) < 0 or int(kept.max()) >= classes):
        raise TrainingError(
            f"the labels of the first training batch range from {int(kept.min())} to "
            f"{int(kept.max())}, but the model outputs {classes} classes (dimension 1 of "
            f"its output of shape {tuple(outputs.shape)}); expected labels 0 to "
            f"{classes - 1}; hint: give the head as many outputs as there are classes, or "
            "map the labels to 0..classes-1"
        )
