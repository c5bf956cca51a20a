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
import re
import warnings
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from torch import nn

from freezeflow.core.discovery import Block, find_blocks, is_norm_layer
from freezeflow.core.meta import on_meta_device
from freezeflow.core.units import UNIT_OWNERS, is_composite, owners

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
    is exactly timm's last two groups before its head.

    The classifier is every layer ``reset_classifier`` replaces (VOLO's ``aux_head`` with its
    ``head``), else ``get_classifier()``. The pretrained layers between the last unit and the
    classifier (:func:`_boundary`) may lie with the last unit or with the head on either side:
    timm itself puts them in either place by how each model's matcher is written."""
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
    block_of = _block_of(blocks, names)
    classifier = _classifier_names(model)
    groups = _head_apart(_norms_joined(model, groups), classifier)
    boundary, moved = _boundary(model, blocks, block_of, groups, classifier)
    if moved:
        rec["boundary"] = _label(moved)
    unnamed = _unnamed(model.group_matcher(coarse=False), names, groups) - classifier
    unnamed = {n for n in unnamed if "." in n}  # the model's own parameters come first
    if unnamed:
        rec["unnamed"] = _label(unnamed)
        boundary |= unnamed
    names = [n for n in names if n not in boundary]
    groups = [g - boundary for g in groups if g - boundary]
    group_of = {n: i for i, g in enumerate(groups) for n in g}
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
    # a block made only of boundary layers (a conv head of its own) is no unit of the backbone
    kept = [b for b in range(backbone) if any(block_of.get(n) == b for n in names)]
    rec["last2"] = _last2_ok(model, blocks, kept, block_of, units, names)
    if not rec["last2"]:
        mine = [blocks[b].name for b in kept[-2:]]
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


def _norms_joined(model: nn.Module, groups: list[set[str]]) -> list[set[str]]:
    """timm's groups, with a group made of a single norm layer joined to a group before it
    made of a single other layer, the layer it normalises: where a matcher numbers a
    ``Sequential``'s indices (VGG's ``features.(\\d+)``), a conv and its batch norm are two
    groups by position only."""
    modules = dict(model.named_modules())

    def single(g: set[str]) -> nn.Module | None:
        paths = {n.rpartition(".")[0] for n in g}
        return modules.get(paths.pop()) if len(paths) == 1 else None

    out: list[set[str]] = []
    for g in groups:
        norm, layer = single(g), single(out[-1]) if out else None
        if (
            norm is not None
            and layer is not None
            and is_norm_layer(norm)
            and not is_norm_layer(layer)
            and not is_composite(layer)
        ):
            out[-1] = out[-1] | g
        else:
            out.append(g)
    return out


def _head_apart(groups: list[set[str]], classifier: set[str]) -> list[set[str]]:
    """timm's groups, with the classifier a group of its own where the matcher folds it into
    the last unit's group (IFormer maps ``^head`` to the group before): when the rest of the
    last group lies in a container whose other members are in other groups (a unit among its
    siblings, not a layer of the model after its units)."""
    if not classifier or not classifier <= groups[-1] or not groups[-1] - classifier:
        return groups
    rest = groups[-1] - classifier
    path = _label(rest)
    if "+" in path:
        return groups
    parts = path.split(".")
    for k in range(len(parts) - 1, 0, -1):  # the innermost container shared with others
        parent = ".".join(parts[:k])
        if any(n.startswith(parent + ".") for g in groups[:-1] for n in g):
            return [*groups[:-1], rest, classifier]
    return groups


def _unnamed(matcher: Any, names: list[str], groups: list[set[str]]) -> set[str]:
    """The parameters of submodules registered before timm's first unit group that no
    pattern of its matcher names (EVA's ``rope``, a shared relative-position MLP): timm puts
    what its matcher leaves unnamed in its last group, meaning the neck and the head, which
    a module registered before the units is not; the reference says nothing about them."""
    if not isinstance(matcher, dict) or len(groups) < 2:
        return set()
    patterns = [
        re.compile(spec[0] if isinstance(spec, (tuple, list)) else spec)
        for value in matcher.values()
        if value is not None
        for spec in (value if isinstance(value, (tuple, list)) else [value])
    ]
    first = min(names.index(n) for n in groups[1])
    return {n for n in names[:first] if not any(p.match(n) for p in patterns)}


def _boundary(
    model: nn.Module,
    blocks: list[Block],
    block_of: dict[str, int],
    groups: list[set[str]],
    classifier: set[str],
) -> tuple[set[str], set[str]]:
    """The pretrained layers between the last unit and the classifier, and those of them
    that freezeflow places otherwise than timm.

    They are the parameters, not the classifier's, that timm's head group or freezeflow's
    head block holds (DenseNet's ``norm5``, FastViT's ``final_conv``, GhostNet's
    ``conv_head``), and timm's last group before its head when it is no unit (fewer than
    ``UNIT_OWNERS`` layers: RexNet's final conv-norm). timm puts such layers with the last
    unit (EfficientNet's ``conv_head``, ViT's ``norm``), with the classifier (DenseNet,
    FastViT, MobileNetV3's ``conv_head``) or as a group of their own (RexNet) by how each
    matcher is written; freezeflow puts them with the last unit, or with the head after a
    pooling layer. Either place is accepted as long as, on both sides, they lie in the head
    or right before it (freezeflow: the head block or the block before; timm: the head group
    or the group before, or a group of their own there); else there is no boundary and the
    comparison is strict."""
    if not classifier or len(blocks) < 2 or len(groups) < 2:
        return set(), set()
    last = len(blocks) - 1
    group_of = {n: i for i, g in enumerate(groups) for n in g}
    ours = {n for n, b in block_of.items() if b == last}
    theirs = groups[-1] if classifier <= groups[-1] else set()
    found = (ours | theirs) - classifier
    tail = len(groups) - 1 if theirs else len(groups)
    modules = dict(model.named_modules())
    alone: set[str] = set()
    if tail >= 2 and not groups[tail - 1] & found:
        own = {n.rpartition(".")[0] for n in groups[tail - 1]}
        owners_ = sum(next(modules[m].parameters(recurse=False), None) is not None for m in own)
        lone = groups[tail - 1]
        held = {block_of.get(n, -1) for n in lone}
        # only where freezeflow puts it with another block (where it is a block of its own,
        # the strict comparison holds)
        joined = any(block_of.get(n) in held for n in block_of if n not in lone)
        if owners_ < UNIT_OWNERS and joined and min(held) >= last - 1:
            alone = lone
            found |= alone
    if not found:
        return set(), set()
    ok_ours = all(block_of.get(n, -1) >= last - 1 for n in found)
    ok_theirs = all(group_of[n] >= tail - 2 for n in found)
    if not (ok_ours and ok_theirs):
        return set(), set()
    moved = {n for n in found if (n in ours) != (n in theirs)} | alone
    return found, moved


def _last2_ok(
    model: nn.Module,
    blocks: list[Block],
    backbone: list[int],
    block_of: dict[str, int],
    units: list[set[str]],
    names: list[str],
) -> bool:
    """``last(2)`` of the backbone (the blocks ``backbone`` indexes) is timm's last two unit
    groups: its last block lies in timm's last group and the one before in the group before;
    where timm groups a whole stage as one group (CoAtNet, EfficientFormer), two units (not a
    downsampling layer) in that group."""
    if len(backbone) < 2 or len(units) < 2:
        return len(backbone) == len(units)
    chosen = backbone[-2:]
    params = [{n for n in names if block_of.get(n) == b} for b in chosen]
    if not all(params) or not params[1] <= units[-1]:
        return False
    if params[0] <= units[-2]:
        return True
    modules = dict(model.named_modules())
    whole = all(
        blocks[b].modules and owners(modules[blocks[b].modules[0]]) >= UNIT_OWNERS for b in chosen
    )
    return params[0] <= units[-1] and whole


def _classifier_names(model: Any) -> set[str]:
    """Names of the parameters of a timm model's classifier: those ``reset_classifier``
    replaces (every newly initialised head layer: a distilled model's ``head`` and
    ``head_dist``, VOLO's ``aux_head``), else those of ``get_classifier()``. Resetting
    changes the model: call it last."""
    before = dict(model.named_parameters())
    try:
        with on_meta_device():
            model.reset_classifier(model.num_classes)
        after = dict(model.named_parameters())
        replaced = {n for n, p in before.items() if after.get(n) is not p}
        if replaced:
            return replaced
    except Exception:
        pass
    try:
        heads = model.get_classifier()
    except Exception:
        return set()
    heads = heads if isinstance(heads, tuple) else (heads,)
    ids = {id(p) for h in heads if isinstance(h, nn.Module) for p in h.parameters()}
    return {n for n, p in before.items() if id(p) in ids}


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


def _check_lists(
    model: nn.Module, lists: list[tuple[str, list[str]]]
) -> tuple[list[str], str | None]:
    """Each layer of each list is the whole of one block of its own (a final norm after the
    last layer may join it), the layers' blocks follow each other in order, a single shared
    layer (ALBERT) is a block apart from the embeddings: the reasons it is not so; and,
    apart, why ``last(2)`` of the backbone is not the last two layers of the last list, if
    it is not."""
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
            return reasons, f"last(2) is {shown}"
    return reasons, None


def goes_on(model: nn.Module, last_layer: str) -> str | None:
    """What the model holds after the last layer of its last layer list, when that is more
    than one such layer holds or has repeated layers of its own (a vocoder after a speech
    decoder, SAM's mask decoder after its vision encoder, a language model's vision tower):
    the list does not end the model, and its last two layers are not what ``last(2)``
    should select. None when what follows is a final norm, a pooler, a projection, a head."""
    names = [n for n, _ in model.named_parameters()]
    sizes = dict((n, p.numel()) for n, p in model.named_parameters())
    inside = [i for i, n in enumerate(names) if n.startswith(last_layer + ".")]
    if not inside:
        return None
    after = names[inside[-1] + 1 :]
    layer = sum(sizes[names[i]] for i in inside)
    if sum(sizes[n] for n in after) > layer:
        return _label(after)
    # or layers of its own: a list of two or more unit-sized modules of one type all
    # registered after it (SAM's mask decoder, its two-way attention layers)
    later = set(after)
    for path, m in model.named_modules():
        if not isinstance(m, (nn.ModuleList, nn.Sequential)):
            continue
        own = [n for n, _ in m.named_parameters(prefix=path)]
        kinds = Counter(type(c) for c in m.children() if owners(c) >= UNIT_OWNERS)
        if own and set(own) <= later and kinds and max(kinds.values()) >= 2:
            return _label(after)
    return None


def _head_layers(model: nn.Module, base: nn.Module) -> set[str]:
    """The parameters a task model adds to its pretrained base model (its new head): those
    under no module of the base model (``model.base_model_prefix``), else those whose names
    the base model lacks (with or without the prefix the task model puts before them),
    registered after its first name the base model has."""
    prefix = getattr(model, "base_model_prefix", "")
    body = getattr(model, prefix, None) if prefix else None
    if isinstance(body, nn.Module):
        inside = {id(p) for p in body.parameters()}
        new = {n for n, p in model.named_parameters() if id(p) not in inside}
        if new:
            return new
    # the head inside the body (a timm model's own classifier, Perceiver's decoder): the
    # names the base model does not have, after the first it has (a layer the task model
    # puts in front of the base model's, Perceiver's text preprocessor, is its input side:
    # embeddings, pretrained with the body, no head)
    known = {n for n, _ in base.named_parameters()}
    names = [n for n, _ in model.named_parameters()]
    has = [i for i, n in enumerate(names) if n in known or n.partition(".")[2] in known]
    start = has[0] if has else 0
    return {n for n in names[start:] if n not in known and n.partition(".")[2] not in known}


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
    reasons, last2 = _check_lists(model, lists) if lists else ([], None)
    if last2 is not None:
        # not counted where the model goes on after its last list: no reference for last(2)
        more = goes_on(model, lists[-1][1][-1])
        if more:
            rec["goes_on"] = more
        else:
            reasons.append(last2)
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
