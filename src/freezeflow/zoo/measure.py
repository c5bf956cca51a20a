"""Measuring block discovery on one architecture against its zoo's own grouping.

timm: every model name, built on the meta device, against ``model.group_matcher(coarse=False)``
(the grouping timm's layer-wise LR decay uses). transformers: every model type, built from its
default configuration, against its layer lists (the ``nn.ModuleList`` whose length is a layer
count of the configuration), and, where the model type has one, its
``*ForSequenceClassification`` / ``*ForImageClassification`` class against the head layers it
adds to the pretrained base model.

Each measurement is a plain dict (JSON), with ``status`` one of ``"agree"``, ``"disagree"``,
``"no_reference"`` (the zoo gives nothing to compare with) or ``"build_error"``, and, unless
it agrees, a ``reason`` in words.
"""

from __future__ import annotations

import itertools
import warnings
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from torch import nn

from freezeflow.core.discovery import Block, find_blocks
from freezeflow.core.meta import on_meta_device
from freezeflow.core.units import UNIT_OWNERS, owners

__all__ = ["Record", "layer_counts", "measure_timm", "measure_transformers", "reference_lists"]

Record = dict[str, Any]
"""One architecture's measurement (JSON values only)."""

_SHOWN = 4
"""Names listed in a reason, at most."""


def _label(names: Iterable[str]) -> str:
    """A short name for a set of parameter names: the modules that hold them, each at the
    depth where the names part ("blocks.23+norm", "stages.3.blocks")."""
    paths = sorted({n.rpartition(".")[0] or n for n in names})

    def common(group: list[str]) -> str:
        parts = [p.split(".") for p in group]
        out: list[str] = []
        for column in zip(*parts, strict=False):
            if len(set(column)) != 1:
                break
            out.append(column[0])
        return ".".join(out)

    prefix = common(paths)
    if prefix:
        return prefix
    heads = list(dict.fromkeys(p.split(".")[0] for p in paths))
    parts = [common([p for p in paths if p.split(".")[0] == h]) for h in heads]
    return "+".join(parts[:3]) + (f"+{len(parts) - 3} more" if len(parts) > 3 else "")


def _quiet(build: Callable[[], nn.Module]) -> nn.Module:
    with warnings.catch_warnings(), on_meta_device():
        warnings.simplefilter("ignore")
        return build()


def _block_of(blocks: list[Block], names: Iterable[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for n in names:
        for b, block in enumerate(blocks):
            if block.covers(n):
                out[n] = b
                break
    return out


def _error(zoo: str, name: str, exc: BaseException) -> Record:
    text = " ".join(str(exc).split())[:160]
    return {
        "zoo": zoo,
        "name": name,
        "status": "build_error",
        "reason": f"{type(exc).__name__}: {text}",
    }


# --------------------------------------------------------------------------- timm


def measure_timm(name: str) -> Record:
    """Build timm's ``name`` on the meta device and compare its blocks with timm's fine
    grouping: no block straddles two of timm's groups, the head block holds the classifier
    and lies in timm's last group, and ``last(2)`` of the backbone (every block but the head)
    is exactly timm's last two groups before its head."""
    import timm
    from timm.models._manipulate import group_parameters

    try:
        model: Any = _quiet(lambda: timm.create_model(name))
    except Exception as exc:
        return _error("timm", name, exc)
    rec: Record = {"zoo": "timm", "name": name, "model": type(model).__name__}
    blocks = find_blocks(model)
    rec["blocks"] = len(blocks)
    if not hasattr(model, "group_matcher"):
        rec.update(status="no_reference", reason=f"{type(model).__name__} has no group_matcher")
        return rec
    grouped = group_parameters(model, model.group_matcher(coarse=False))
    groups = [set(g) for g in grouped.values()]
    rec["reference"] = len(groups)
    names = [n for n, _ in model.named_parameters()]
    group_of = {n: i for i, g in enumerate(groups) for n in g}
    block_of = _block_of(blocks, names)
    reasons: list[str] = []
    straddle = []
    for b, block in enumerate(blocks):
        mine = [n for n in names if block_of.get(n) == b]
        touched = sorted({group_of[n] for n in mine})
        if len(touched) > 1:
            straddle.append(block.name)
            shown = ", ".join(_label(groups[g]) for g in touched[:_SHOWN])
            reasons.append(f"block {block.name} straddles timm groups {shown}")
    rec["straddling"] = straddle
    classifier = _classifier_names(model)
    head = {n for n in names if block_of.get(n) == len(blocks) - 1}
    head_ok = (
        bool(classifier) and classifier <= head and {group_of[n] for n in head} == {len(groups) - 1}
    )
    if not classifier:
        rec["head_last"] = None
    else:
        rec["head_last"] = head_ok
        if not head_ok:
            reasons.append(
                f"head block {blocks[-1].name} is not timm's head group {_label(groups[-1])}"
            )
    headed = bool(classifier) and classifier <= groups[-1]
    units = groups[:-1] if headed else groups
    backbone = len(blocks) - 1 if classifier else len(blocks)
    rec["last2"] = _last2_ok(model, blocks[:backbone], block_of, units, names)
    if not rec["last2"]:
        mine = [b.name for b in blocks[max(0, backbone - 2) : backbone]]
        reasons.append(
            f"last(2) is {', '.join(mine)}; timm's last two groups are "
            f"{', '.join(_label(g) for g in units[-2:])}"
        )
    rec["status"] = "disagree" if reasons else "agree"
    if reasons:
        rec["reason"] = "; ".join(reasons[:_SHOWN]) + (
            f"; and {len(reasons) - _SHOWN} more" if len(reasons) > _SHOWN else ""
        )
    return rec


def _last2_ok(
    model: nn.Module,
    backbone: list[Block],
    block_of: dict[str, int],
    units: list[set[str]],
    names: list[str],
) -> bool:
    """``last(2)`` of the backbone is timm's last two unit groups: its last block lies in
    timm's last group and the one before in the group before; where timm groups a whole
    stage as one group (CoAtNet, EfficientFormer), two units (not a downsampling layer) in
    that group."""
    if len(backbone) < 2 or len(units) < 2:
        return len(backbone) == len(units)
    k = len(backbone)
    params = [{n for n in names if block_of.get(n) == b} for b in (k - 2, k - 1)]
    if not all(params) or not params[1] <= units[-1]:
        return False
    if params[0] <= units[-2]:
        return True
    modules = dict(model.named_modules())
    whole = all(b.modules and owners(modules[b.modules[0]]) >= UNIT_OWNERS for b in backbone[-2:])
    return params[0] <= units[-1] and whole


def _classifier_names(model: Any) -> set[str]:
    """Names of the parameters of a timm model's classifier (``get_classifier()``), or of
    its classifiers (a distilled model's ``head`` and ``head_dist``)."""
    try:
        heads = model.get_classifier()
    except Exception:
        return set()
    heads = heads if isinstance(heads, tuple) else (heads,)
    ids = {id(p) for h in heads if isinstance(h, nn.Module) for p in h.parameters()}
    return {n for n, p in model.named_parameters() if id(p) in ids}


# --------------------------------------------------------------------------- transformers

_COUNT_KEYS = ("layers", "depth", "depths", "num_hidden_groups", "n_layer", "num_blocks")


def layer_counts(config: Any) -> set[int]:
    """Every layer count a transformers configuration (and its sub-configurations) gives:
    ``num_hidden_layers``, ``encoder_layers``, ``decoder_layers``, ``n_layer``, ``depths``..."""
    out: set[int] = set()
    seen: set[int] = set()

    def visit(cfg: Any) -> None:
        if id(cfg) in seen:
            return
        seen.add(id(cfg))
        for key, value in vars(cfg).items():
            if hasattr(value, "to_dict") and hasattr(value, "model_type"):
                visit(value)
            elif any(k in key for k in _COUNT_KEYS):
                values = value if isinstance(value, (list, tuple)) else [value]
                out.update(v for v in values if isinstance(v, int) and not isinstance(v, bool))

    visit(config)
    return {c for c in out if c >= 1}


def reference_lists(model: nn.Module, counts: set[int]) -> list[tuple[str, list[str]]]:
    """The layer lists of a transformers model: every ``nn.ModuleList`` of same-type layers
    (three or more parameter-owning modules each: not an MLP's linear layers) whose length is
    a layer count of its configuration, the innermost where lists nest (Swin's ``layers`` of
    stages, each with its ``blocks``)."""
    found: list[tuple[str, list[str]]] = []
    for path, m in model.named_modules():
        if not isinstance(m, nn.ModuleList):
            continue
        children = [(n, c) for n, c in m.named_children() if next(c.parameters(), None) is not None]
        if (
            children
            and len(children) == len(m)
            and len(m) in counts
            and len({type(c) for _, c in children}) == 1
            and all(owners(c) >= UNIT_OWNERS for _, c in children)
            and not any(_holds_list(c) for _, c in children)
        ):
            found.append((path, [f"{path}.{n}" for n, _ in children]))
    inner = [
        (p, ls)
        for p, ls in found
        if not any(q.startswith(p + ".") and len(qs) >= 2 for q, qs in found)
    ]
    return [(p, ls) for p, ls in inner if not any(p.startswith(q + ".") for q, _ in inner)]


def _holds_list(module: nn.Module) -> bool:
    """A stage, not a layer: it holds a list or sequence of two or more layers of one type
    (a T5 layer's self-attention and feed-forward sub-layers are of two types)."""
    for m in module.modules():
        if isinstance(m, (nn.ModuleList, nn.Sequential)):
            kinds = Counter(type(c) for c in m.children() if owners(c) >= UNIT_OWNERS)
            if kinds and max(kinds.values()) >= 2:
                return True
    return False


def _check_lists(model: nn.Module, lists: list[tuple[str, list[str]]]) -> list[str]:
    """Each layer of each list is the whole of one block of its own (a final norm after the
    last layer may join it), the layers' blocks follow each other in order, a single shared
    layer (ALBERT) is a block apart from the embeddings, and ``last(2)`` of the backbone is
    the last two layers of the last list."""
    blocks = find_blocks(model)
    names = [n for n, _ in model.named_parameters()]
    block_of = _block_of(blocks, names)
    reasons: list[str] = []
    layer_blocks: list[int] = []
    for path, layers in lists:
        got: list[int] = []
        for layer in layers:
            held = {block_of.get(n, -1) for n in names if n.startswith(layer + ".")}
            if len(held) != 1 or -1 in held:
                reasons.append(f"{layer} is spread over {len(held)} blocks")
                break
            got.append(held.pop())
        else:
            if len(set(got)) != len(got) or got != sorted(got):
                reasons.append(f"{path}: its layers are not one block each, in order")
            elif len(layers) == 1 and got[0] == 0:
                reasons.append(f"{path}: its single layer is in the first block")
            elif any(b - a != 1 for a, b in itertools.pairwise(got)):
                reasons.append(f"{path}: other blocks lie between its layers")
            layer_blocks += got
    if not reasons and lists and len(lists[-1][1]) >= 2:
        head = 0 if layer_blocks and layer_blocks[-1] == len(blocks) - 1 else 1
        want = layer_blocks[-2:]
        if want != [len(blocks) - 2 - head, len(blocks) - 1 - head]:
            shown = ", ".join(b.name for b in blocks[len(blocks) - 2 - head : len(blocks) - head])
            reasons.append(f"last(2) is {shown}")
    return reasons


def _head_layers(model: nn.Module, base: nn.Module) -> set[str]:
    """The parameters a task model adds to its pretrained base model (its new head): those
    under no module of the base model (``model.base_model_prefix``, else the base model's
    names, with or without the prefix the task model puts before them)."""
    prefix = getattr(model, "base_model_prefix", "")
    body = getattr(model, prefix, None) if prefix else None
    if isinstance(body, nn.Module):
        inside = {id(p) for p in body.parameters()}
        return {n for n, p in model.named_parameters() if id(p) not in inside}
    known = {n for n, _ in base.named_parameters()}
    return {
        n
        for n, _ in model.named_parameters()
        if n not in known and n.partition(".")[2] not in known
    }


def measure_transformers(model_type: str) -> Record:
    """Build transformers' ``model_type`` from its default configuration on the meta device
    and compare its blocks with its layer lists, then check that the head block of its
    sequence or image classification model holds every layer that model adds."""
    tr: Any = __import__("transformers")
    rec: Record = {"zoo": "transformers", "name": model_type}
    try:
        config = tr.AutoConfig.for_model(model_type)
        model = _quiet(lambda: tr.AutoModel.from_config(config))
    except Exception as exc:
        return _error("transformers", model_type, exc)
    rec["model"] = type(model).__name__
    rec["blocks"] = len(find_blocks(model))
    lists = reference_lists(model, layer_counts(config))
    rec["reference"] = [p for p, _ in lists]
    reasons = _check_lists(model, lists) if lists else []
    rec["layers_ok"] = not reasons if lists else None
    head_reasons: list[str] = []
    for auto in ("AutoModelForSequenceClassification", "AutoModelForImageClassification"):
        try:
            task = _quiet(lambda a=auto: getattr(tr, a).from_config(config))  # type: ignore[misc]
        except Exception:
            continue
        new = _head_layers(task, model)
        why = None if new else f"{type(task).__name__} adds no layer to {type(model).__name__}"
        blocks = find_blocks(task)
        head = blocks[-1]
        missing = sorted(n for n in new if not head.covers(n))
        extra = [n for n, _ in task.named_parameters() if head.covers(n) and n not in new]
        rec["head_model"] = type(task).__name__
        rec["head_ok"] = not missing and not extra and why is None
        if why:
            head_reasons.append(why)
        elif missing:
            head_reasons.append(f"{type(task).__name__}: head block {head.name} misses "
                                f"{_label(missing)}")  # fmt: skip
        elif extra:
            head_reasons.append(f"{type(task).__name__}: head block {head.name} holds "
                                f"pretrained {_label(extra)}")  # fmt: skip
        break
    if not lists and "head_model" not in rec:
        rec.update(status="no_reference", reason="no layer list of a configured length")
        return rec
    reasons += head_reasons
    rec["status"] = "disagree" if reasons else "agree"
    if reasons:
        rec["reason"] = "; ".join(reasons)
    return rec


def share(records: list[Record], zoo: str) -> tuple[int, int]:
    """(agreeing, measured) architectures of ``zoo``: those with a reference."""
    measured = [r for r in records if r["zoo"] == zoo and r["status"] in ("agree", "disagree")]
    return sum(r["status"] == "agree" for r in measured), len(measured)
