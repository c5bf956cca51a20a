"""The harness of "a refused call leaves everything as it was" (issue 22): one snapshot of
everything a call could change, and a check that reports exactly what did.

:meth:`Snapshot.take` captures, for what it is given:

- a model: every parameter (bit-exact, by every name, tied names included, and which object
  each name holds), its ``requires_grad`` flag and gradient, every buffer, every module (which
  object is at each path, its settings as ``extra_repr()`` shows them, its ``training`` flag
  and the mode freezeflow locked it in), its blocks (``ff.find_blocks``, which
  ``ff.set_blocks`` overrides);
- an optimizer: its defaults, each param group's hyper-parameters and members (by identity,
  reported by name) and the per-parameter state;
- an LR scheduler: its ``state_dict()``;
- an unfreezer: its ``state_dict()`` (stage, counters, history);
- a folder: every file and folder under it (names, sizes, a hash of the bytes), and whether
  the folder exists at all;
- always: the random states (torch's CPU generator, every CUDA generator when CUDA is
  available, numpy's global generator, Python's ``random``) and torch's global switches (grad
  mode, default dtype, deterministic algorithms).

Taking a snapshot changes nothing (no ``train()``, no RNG draw, no CUDA initialisation).

Example::

    snap = Snapshot.take(model, optimizer, folder=tmp_path)
    with pytest.raises(ff.ScheduleError):
        refused_call()
    snap.assert_unchanged()

or, as one ``with`` (the check runs after ``pytest.raises`` has caught the error)::

    with unchanged(model, optimizer), pytest.raises(ff.ScheduleError):
        refused_call()
"""

from __future__ import annotations

import copy
import hashlib
import random
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

import freezeflow as ff

__all__ = ["Snapshot", "TensorCopy", "unchanged"]

Part = dict[str, Any]
"""One part of a snapshot (parameters, flags, files...): a label per item, and a value
compared with ``==``."""


class HasStateDict(Protocol):
    def state_dict(self) -> Any: ...


# --------------------------------------------------------------------------- comparable values


class TensorCopy:
    """A tensor copied at snapshot time, equal to another only when bit-identical: same
    dtype, shape and bytes (so ``nan == nan`` and ``0.0 != -0.0``)."""

    __slots__ = ("data", "dtype", "shape")

    def __init__(self, tensor: torch.Tensor) -> None:
        t = tensor.detach()
        self.dtype = t.dtype
        self.shape = tuple(t.shape)
        # a tensor on the meta device has no bytes: only its dtype and shape compare
        self.data: torch.Tensor | None = None if t.is_meta else t.to("cpu", copy=True)

    def _bits(self) -> torch.Tensor | None:
        if self.data is None:
            return None
        flat = self.data.contiguous().reshape(-1)
        return flat.view(torch.uint8).reshape(flat.numel(), -1)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TensorCopy):
            return NotImplemented
        if (self.dtype, self.shape) != (other.dtype, other.shape):
            return False
        mine, theirs = self._bits(), other._bits()
        if mine is None or theirs is None:
            return mine is None and theirs is None
        return bool(torch.equal(mine, theirs))

    __hash__ = None  # type: ignore[assignment]

    def differs_from(self, other: TensorCopy) -> str:
        """How ``other`` differs: dtype or shape, else how many elements and by how much."""
        if (self.dtype, self.shape) != (other.dtype, other.shape):
            return f"{self.dtype} {list(self.shape)} -> {other.dtype} {list(other.shape)}"
        mine, theirs = self._bits(), other._bits()
        if mine is None or theirs is None:
            return "moved to or from the meta device"
        changed = (mine != theirs).any(dim=1)
        text = f"{int(changed.sum())} of {changed.numel()} element(s) differ"
        a, b = self.data, other.data
        if a is not None and b is not None and a.is_floating_point():
            gap = (a.double() - b.double()).abs().reshape(-1)[changed]
            gap = gap[gap.isfinite()]
            if gap.numel() and float(gap.max()) > 0:
                text += f", max |diff| {float(gap.max()):.3g}"
        return text

    def __repr__(self) -> str:
        return f"tensor({self.dtype}, {list(self.shape)})"


@dataclass(frozen=True, eq=False)
class Ref:
    """An object by identity (a parameter, a module): equal to another ``Ref`` only when both
    hold the same object. The snapshot keeps the object alive, so its id is not reused."""

    obj: object
    label: str

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Ref) and other.obj is self.obj

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<{self.label} @ {id(self.obj):#x}>"


@dataclass(frozen=True)
class RandomState:
    """A generator's state, compared whole (a draw or a seed changes it)."""

    state: bytes

    def __repr__(self) -> str:
        return f"<state {hashlib.sha256(self.state).hexdigest()[:12]}>"


@dataclass(frozen=True)
class Raised:
    """What a capture raised (an unfreezer whose model changed may refuse to save)."""

    error: str


def frozen(value: Any) -> Any:
    """A copy of ``value`` that later in-place changes to the original cannot reach, with
    tensors as :class:`TensorCopy` (compared bit for bit)."""
    if isinstance(value, torch.Tensor):
        return TensorCopy(value)
    if isinstance(value, (str, bytes, int, float, complex, bool, type(None), torch.dtype)):
        return value
    if isinstance(value, Mapping):
        return {k: frozen(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(frozen(v) for v in value) if type(value) in (list, tuple) else value
    if isinstance(value, np.ndarray):
        return ("ndarray", value.dtype.str, value.shape, value.tobytes())
    try:
        return copy.deepcopy(value)
    except Exception:  # an object that cannot be copied compares by identity
        return Ref(value, type(value).__name__)


def _short(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe(before: Any, after: Any) -> str:
    """``before -> after``, or how a tensor changed, or which members a group lost and
    gained."""
    if isinstance(before, TensorCopy) and isinstance(after, TensorCopy):
        return before.differs_from(after)
    if _refs(before) and _refs(after):
        lost = [r.label for r in before if r not in after]
        gained = [r.label for r in after if r not in before]
        if not lost and not gained:
            return "the same members, in another order or repeated"
        return f"lost {_short(lost)}, gained {_short(gained)}"
    if isinstance(before, Mapping) and isinstance(after, Mapping):
        keys = [*before, *(k for k in after if k not in before)]
        diffs = [
            f"{k!r}: {describe(before.get(k, '<absent>'), after.get(k, '<absent>'))}"
            for k in keys
            if k not in before or k not in after or not _same(before[k], after[k])
        ]
        return "{" + "; ".join(diffs) + "}"
    return f"{_short(before)} -> {_short(after)}"


def _refs(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, Ref) for v in value)


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:  # e.g. numpy arrays, compared elementwise
        return a is b


# --------------------------------------------------------------------------- the parts


def _param_labels(model: nn.Module | None) -> dict[int, str]:
    if model is None:
        return {}
    return {id(p): n for n, p in reversed(list(model.named_parameters(remove_duplicate=False)))}


def _model_parts(model: nn.Module) -> dict[str, Part]:
    named = list(model.named_parameters(remove_duplicate=False))
    return {
        "parameter values": {n: TensorCopy(p) for n, p in named},
        "parameter objects": {n: Ref(p, "Parameter") for n, p in named},
        "requires_grad": {n: p.requires_grad for n, p in named},
        "gradients": {n: None if p.grad is None else TensorCopy(p.grad) for n, p in named},
        "buffers": {n: TensorCopy(b) for n, b in model.named_buffers(remove_duplicate=False)},
        "modules": {
            n or "<root>": Ref(m, type(m).__name__)
            for n, m in model.named_modules(remove_duplicate=False)
        },
        "module settings": {
            n or "<root>": m.extra_repr() for n, m in model.named_modules(remove_duplicate=False)
        },
        "training modes": {
            n or "<root>": (m.training, ff.core.norm_mode(m))
            for n, m in model.named_modules(remove_duplicate=False)
        },
        "blocks": _blocks(model),
    }


def _blocks(model: nn.Module) -> Part:
    """The model's blocks (``ff.set_blocks`` keeps overrides beside the model, so a call can
    change them without touching it)."""
    try:
        found = ff.find_blocks(model)
    except Exception as exc:  # recorded: a refused call must not change it either
        return {"<find_blocks()>": Raised(f"{type(exc).__name__}: {exc}")}
    return {"names": [b.name for b in found]}


def _optimizer_parts(opt: torch.optim.Optimizer, labels: Mapping[int, str]) -> dict[str, Part]:
    def label(p: object, k: int, j: int) -> str:
        return labels.get(id(p), f"param {j} of group {k}")

    groups: Part = {"count": len(opt.param_groups)}
    state: Part = {}
    for k, g in enumerate(opt.param_groups):
        groups[f"group {k}"] = {key: frozen(v) for key, v in g.items() if key != "params"}
        members = [Ref(p, label(p, k, j)) for j, p in enumerate(g["params"])]
        groups[f"group {k} params"] = members
        for j, p in enumerate(g["params"]):
            if p in opt.state:
                state[label(p, k, j)] = frozen(opt.state[p])
    state["<parameters with state>"] = len(opt.state)
    return {
        "optimizer defaults": {k: frozen(v) for k, v in opt.defaults.items()},
        "optimizer param_groups": groups,
        "optimizer state": state,
    }


def _state_dict_part(obj: HasStateDict) -> Part:
    try:
        state = obj.state_dict()
    except Exception as exc:  # recorded: a refused call must not change it either
        return {"<state_dict()>": Raised(f"{type(exc).__name__}: {exc}")}
    return {str(k): frozen(v) for k, v in state.items()}


def _folder_part(folder: Path) -> Part:
    if not folder.exists():
        return {".": "absent"}
    if not folder.is_dir():
        return {".": ("file", folder.stat().st_size, _hash(folder))}
    part: Part = {".": "folder"}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_symlink():
            part[rel] = ("link", str(path.readlink()))
        elif path.is_dir():
            part[rel] = "folder"
        else:
            part[rel] = ("file", path.stat().st_size, _hash(path))
    return part


def _hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _global_parts() -> dict[str, Part]:
    rng: Part = {
        "torch (CPU)": RandomState(torch.get_rng_state().numpy().tobytes()),
        "numpy": RandomState(repr(frozen(np.random.get_state())).encode()),
        "random": RandomState(repr(random.getstate()).encode()),
    }
    # CUDA's generators exist once CUDA is initialised; reading them earlier would initialise
    # it (a change of its own), and a call that initialises it shows up as added generators
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        for k, state in enumerate(torch.cuda.get_rng_state_all()):
            rng[f"torch (cuda:{k})"] = RandomState(state.numpy().tobytes())
    switches: Part = {
        "grad enabled": torch.is_grad_enabled(),
        "default dtype": torch.get_default_dtype(),
        "deterministic algorithms": torch.are_deterministic_algorithms_enabled(),
    }
    return {"random states": rng, "torch switches": switches}


# --------------------------------------------------------------------------- the snapshot


@dataclass
class Snapshot:
    """Everything a call could change, as it was when :meth:`take` ran."""

    parts: dict[str, Part]
    retake: Callable[[], dict[str, Part]] = field(repr=False)

    @classmethod
    def take(
        cls,
        model: nn.Module | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        folder: str | Path | None = None,
        scheduler: HasStateDict | None = None,
        *,
        unfreezer: HasStateDict | None = None,
    ) -> Snapshot:
        """Capture the model, optimizer, folder, LR scheduler and unfreezer given, and the
        global random states and switches (always)."""
        where = None if folder is None else Path(folder)

        def capture() -> dict[str, Part]:
            parts = _global_parts()
            if model is not None:
                parts |= _model_parts(model)
            if optimizer is not None:
                parts |= _optimizer_parts(optimizer, _param_labels(model))
            if scheduler is not None:
                parts["LR scheduler state"] = _state_dict_part(scheduler)
            if unfreezer is not None:
                parts["unfreezer state"] = _state_dict_part(unfreezer)
            if where is not None:
                parts[f"files under {where}"] = _folder_part(where)
            return parts

        return cls(capture(), capture)

    def differences(self) -> list[str]:
        """One line per item that changed since :meth:`take`, ``part: item: how``."""
        now = self.retake()
        lines = []
        for part, before in self.parts.items():
            after = now[part]
            for key in [*before, *(k for k in after if k not in before)]:
                if key not in after:
                    lines.append(f"{part}: {key!s} removed (was {_short(before[key])})")
                elif key not in before:
                    lines.append(f"{part}: {key!s} added ({_short(after[key])})")
                elif not _same(before[key], after[key]):
                    lines.append(f"{part}: {key!s}: {describe(before[key], after[key])}")
        return lines

    def assert_unchanged(self) -> None:
        """Raise AssertionError listing every difference, if there is any."""
        lines = self.differences()
        if lines:
            shown = lines[:40] + ([f"... and {len(lines) - 40} more"] if len(lines) > 40 else [])
            raise AssertionError(
                f"{len(lines)} thing(s) changed:\n" + "\n".join(f"  {x}" for x in shown)
            )


@contextmanager
def unchanged(
    model: nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    folder: str | Path | None = None,
    scheduler: HasStateDict | None = None,
    *,
    unfreezer: HasStateDict | None = None,
) -> Iterator[Snapshot]:
    """``with unchanged(...), pytest.raises(...):``: a :class:`Snapshot` taken on entry and
    checked on exit (when the body raised nothing, or ``pytest.raises`` caught it)."""
    snap = Snapshot.take(model, optimizer, folder, scheduler, unfreezer=unfreezer)
    yield snap
    snap.assert_unchanged()
