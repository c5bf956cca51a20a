"""One batch: split it, move it, count it, run the model and the loss on it, score it.

Example:
    >>> import torch
    >>> inputs, targets = split_batch((torch.zeros(4, 3), torch.tensor([0, 1, 1, 0])))
    >>> batch_size(inputs), accuracy(torch.tensor([[0.0, 1.0], [2.0, 1.0]]), torch.tensor([1, 1]))
    (4, 0.5)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor

from freezeflow.errors import TrainingError, TrainingTypeError
from freezeflow.training.run import Metric, Run

__all__ = [
    "accuracy",
    "batch_size",
    "compute_loss",
    "forward",
    "metric_fns",
    "split_batch",
    "to_device",
]


def split_batch(batch: Any) -> tuple[Any, Any]:
    """``(inputs, targets)`` of a batch, or a :class:`TrainingTypeError` saying what it is."""
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    size = f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else ""
    raise TrainingTypeError(
        f"a batch must be an (inputs, targets) pair, got a {type(batch).__name__}{size}; "
        "hint: a Dataset's __getitem__ should return (input, target)"
    )


def to_device(x: Any, device: Any) -> Any:
    """``x`` with every tensor in it (in tuples, lists, dicts) moved to ``device``."""
    if isinstance(x, Tensor):
        return x.to(device, non_blocking=device.type == "cuda")
    if isinstance(x, (tuple, list)):
        return type(x)(to_device(v, device) for v in x)
    if isinstance(x, dict):
        return {k: to_device(v, device) for k, v in x.items()}
    return x


def batch_size(x: Any) -> int:
    """The number of samples in ``x`` (the first dimension of its first tensor)."""
    if isinstance(x, Tensor):
        return int(x.shape[0]) if x.ndim else 1
    if isinstance(x, (tuple, list)) and x:
        return batch_size(x[0])
    if isinstance(x, dict) and x:
        return batch_size(next(iter(x.values())))
    return len(x) if hasattr(x, "__len__") else 1


def forward(run: Run, net: Callable[[Any], Any], inputs: Any) -> Any:
    """``net(inputs)``; a device mismatch becomes a :class:`TrainingError` with a hint."""
    try:
        return net(inputs)
    except RuntimeError as exc:
        if "device" not in str(exc):
            raise
        raise TrainingError(
            f"the model and the batch are on different devices: the model was moved to "
            f"{run.device} ({exc}); hint: fit() moves the model and each batch to device=; "
            "a tensor the model keeps as a plain attribute must be a registered buffer"
        ) from exc


def compute_loss(run: Run, outputs: Any, targets: Any) -> Tensor:
    """``run.loss_fn(outputs, targets)``, checked to be a scalar tensor."""
    loss = run.loss_fn(outputs, targets)
    if not isinstance(loss, Tensor):
        raise TrainingTypeError(
            f"loss_fn returned {loss!r} of type {type(loss).__name__}, expected a scalar tensor; "
            "hint: return the loss tensor itself, e.g. nn.CrossEntropyLoss()"
        )
    if loss.ndim != 0:
        raise TrainingError(
            f"loss_fn returned a tensor of shape {tuple(loss.shape)}, expected a scalar tensor; "
            "hint: reduce it (reduction='mean', or .mean())"
        )
    return loss


def accuracy(outputs: Tensor, targets: Tensor) -> float:
    """Fraction of rows whose arg-max logit is the target class."""
    return float((outputs.argmax(dim=-1) == targets).float().mean())


def metric_fns(
    metrics: Mapping[str, Metric] | None, outputs: Any, targets: Any
) -> Mapping[str, Metric]:
    """``metrics``, or by default ``{"accuracy": accuracy}`` when ``outputs`` look like class
    logits for integer ``targets`` (and nothing otherwise)."""
    if metrics is not None:
        return metrics
    classify = (
        isinstance(outputs, Tensor)
        and isinstance(targets, Tensor)
        and outputs.ndim == 2
        and targets.ndim == 1
        and not targets.is_floating_point()
    )
    return {"accuracy": accuracy} if classify else {}
