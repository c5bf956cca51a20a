"""Presets: schedules for the common fine-tuning recipes, each a plain
:class:`~freezeflow.Schedule` you can print, edit and save."""

from __future__ import annotations

from collections.abc import Sequence

from freezeflow.core.depth import blocks, last
from freezeflow.core.policy import PolicyLike, everything
from freezeflow.errors import ScheduleError, ScheduleTypeError, check_int
from freezeflow.schedules.schedule import Schedule, Stage
from freezeflow.schedules.triggers import at_fraction

__all__ = [
    "chain_thaw",
    "layerwise_decay",
    "progressive_freezing",
    "two_stage",
    "ulmfit",
]


def two_stage(
    head: PolicyLike = "fc",
    body: PolicyLike | None = None,
    *,
    head_epochs: int = 1,
    head_lr: float = 1e-3,
    lr: float = 1e-4,
    lr_decay: float | None = None,
    weight_decay: float | None = None,
    reset_state: bool = False,
) -> Schedule:
    """Linear probe, then fine-tune: train the head alone for ``head_epochs`` epochs at
    ``head_lr``, then ``body`` too (default: everything) at ``lr``, with optional
    discriminative decay (``lr_decay`` per block from the output). The common recipe of
    fastai's ``fine_tune`` (``freeze_epochs=1``, then unfreeze all) and of "LP-FT" (Kumar et
    al., 2022). ``reset_state=True`` starts the second stage with empty optimizer state, as a
    loop that builds a new optimizer for it does.

    The classic tutorial recipes (a ResNet head trained 5 epochs at 1e-3, then more of the
    network at 1e-5 with a new Adam) are two calls of it:

    - PyTorch ResNet18 (``layer4`` unfrozen): ``two_stage("fc", "layer4", head_epochs=5,
      lr=1e-5, reset_state=True)``;
    - Keras ResNet50 (its last 10 Keras layers, the last 6 with parameters):
      ``two_stage("fc", layers(-6, among=~name("fc")), head_epochs=5, lr=1e-5,
      reset_state=True)``.

    Example:
        >>> import freezeflow as ff
        >>> sched = ff.presets.two_stage("fc", "layer4", head_epochs=5, lr=1e-5)
        >>> [(s.name, s.lr, s.start.epoch) for s in sched]
        [('head', 0.001, 0), ('finetune', 1e-05, 5)]
    """
    check_int("two_stage(head_epochs)", head_epochs, 1)
    return Schedule(
        [
            Stage(head, lr=head_lr, weight_decay=weight_decay, name="head"),
            Stage(
                everything() if body is None else body,
                lr=lr,
                start=head_epochs,
                lr_decay=lr_decay,
                reset_state=reset_state,
                name="finetune",
            ),
        ]
    )


def ulmfit(
    n_stages: int,
    *,
    lr: float = 1e-3,
    lr_decay: float = 1 / 2.6,
    epochs_per_stage: int = 1,
    weight_decay: float | None = None,
) -> Schedule:
    """ULMFiT's gradual unfreezing (Howard & Ruder, 2018): unfreeze one more block from the
    output each epoch, with discriminative LRs divided by 2.6 per block."""
    check_int("ulmfit(n_stages)", n_stages, 1)
    check_int("ulmfit(epochs_per_stage)", epochs_per_stage, 1)
    return Schedule(
        [
            Stage(
                last(k + 1),
                lr=lr,
                start=k * epochs_per_stage,
                lr_decay=lr_decay,
                weight_decay=weight_decay,
                name=f"last{k + 1}",
            )
            for k in range(n_stages)
        ]
    )


def chain_thaw(
    head: PolicyLike,
    parts: Sequence[PolicyLike],
    *,
    head_epochs: int = 1,
    head_lr: float = 1e-3,
    lr: float = 1e-4,
    epochs_per_stage: int = 1,
    weight_decay: float | None = None,
) -> Schedule:
    """Chain-thaw (Felbo et al., 2017, DeepMoji): train the new head alone for
    ``head_epochs`` epochs at ``head_lr``, then each part alone from the first (input side)
    on, then everything together, each for ``epochs_per_stage`` epochs at ``lr``."""
    check_int("chain_thaw(head_epochs)", head_epochs, 1)
    check_int("chain_thaw(epochs_per_stage)", epochs_per_stage, 1)
    if isinstance(parts, str) or not isinstance(parts, Sequence):
        raise ScheduleTypeError(
            f"chain_thaw(parts={parts!r}): expected a list of policies, one per stage; hint: "
            f"chain_thaw(head, [{parts!r}]) for a single part"
        )
    stages = [Stage(head, lr=head_lr, weight_decay=weight_decay, exclusive=True, name="head")]
    for k, part in enumerate(parts):
        stages.append(
            Stage(
                part,
                lr=lr,
                start=head_epochs + k * epochs_per_stage,
                exclusive=True,
                name=f"part{k}",
            )
        )
    stages.append(
        Stage(everything(), lr=lr, start=head_epochs + len(parts) * epochs_per_stage, name="all")
    )
    return Schedule(stages)


def layerwise_decay(
    lr: float = 1e-3, lr_decay: float = 0.75, *, weight_decay: float | None = 0.05
) -> Schedule:
    """One stage, everything trainable, layer-wise LR decay (BEiT, Bao et al., 2021; timm's
    ``param_groups_layer_decay``): each block from the output runs at ``lr_decay`` times the
    LR of the next."""
    return Schedule(
        [Stage(everything(), lr=lr, lr_decay=lr_decay, weight_decay=weight_decay, name="llrd")]
    )


def progressive_freezing(
    n_blocks: int,
    *,
    lr: float = 1e-3,
    start: float = 0.5,
    end: float = 0.9,
    cubic: bool = True,
    lr_decay: float | None = None,
    weight_decay: float | None = None,
) -> Schedule:
    """Freeze the first blocks progressively during training, FreezeOut-style (Brock et al.,
    2017), to save time: a frozen prefix is not back-propagated through, and once it is
    frozen and deterministic, :func:`freezeflow.fit` can cache its output.

    Everything trains at first; then block 0 freezes at fraction ``start`` of training, block
    1 later, ... block ``n_blocks - 1`` at ``end``. With ``cubic`` the freezing times follow
    FreezeOut's cubic spacing (``t_i = start + (end - start) * (i / (n - 1)) ** 3``: early
    blocks freeze sooner), else they are evenly spaced. Needs the run's length (``fit()``
    passes it).
    """
    check_int("progressive_freezing(n_blocks)", n_blocks, 1)
    numbers = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (start, end))
    if not numbers or not (0.0 < start < end < 1.0 or (n_blocks == 1 and 0.0 < start < 1.0)):
        raise ScheduleError(
            f"progressive_freezing(start={start!r}, end={end!r}): expected 0 < start < end < 1; "
            "hint: fractions of the run, e.g. start=0.1, end=0.9"
        )
    stages = [Stage(everything(), lr=lr, lr_decay=lr_decay, weight_decay=weight_decay, name="all")]
    for i in range(n_blocks):
        x = i / (n_blocks - 1) if n_blocks > 1 else 0.0
        at = start + (end - start) * (x**3 if cubic else x)
        stages.append(
            Stage(
                blocks(i + 1, None),
                lr=lr,
                start=at_fraction(at),
                lr_decay=lr_decay,
                exclusive=True,
                name=f"freeze{i}",
            )
        )
    return Schedule(stages)
