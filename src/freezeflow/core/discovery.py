"""Block discovery: a model's blocks, from input to output, at the level of its repeated units.

Blocks are found generically (see :func:`find_blocks`) and can be overridden per model with
:func:`set_blocks`. :func:`is_norm_layer` says which modules are normalisation layers. What a
policy resolves against (every name of every parameter, the owning modules, the blocks and
layers) is :class:`~freezeflow.core.index.ModelIndex`.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from freezeflow._torch_internals import NORM_BASE
from freezeflow.core.units import HEAD_WORDS, Entry, is_composite, walk
from freezeflow.errors import PolicyError, nearest, quote_list

__all__ = [
    "NORM_TYPES",
    "Block",
    "clear_blocks",
    "find_blocks",
    "is_norm_layer",
    "set_blocks",
]

NORM_TYPES: tuple[type[nn.Module], ...] = (
    NORM_BASE,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)
"""Module types treated as norm layers (BatchNorm*, InstanceNorm*, SyncBatchNorm, GroupNorm,
LayerNorm, RMSNorm, LocalResponseNorm)."""


def is_norm_layer(module: nn.Module) -> bool:
    """Whether ``module`` is a normalisation layer.

    Besides the built-in types in :data:`NORM_TYPES`, any module whose class name ends in
    ``Norm``, ``Norm1d/2d/3d`` or contains ``BatchNorm`` (e.g. torchvision's
    ``FrozenBatchNorm2d``, timm's ``LayerNorm2d``) counts, unless a submodule of it that is
    not a norm layer holds parameters: an adaptive norm (diffusers' ``AdaLayerNorm``, a
    ``Linear`` that predicts the scale around a ``LayerNorm``) is a layer that holds a norm,
    and its ``Linear`` trains and decays like any other.
    """
    if isinstance(module, NORM_TYPES):
        return True
    cls = type(module).__name__
    if not ("BatchNorm" in cls or cls.endswith(("Norm", "Norm1d", "Norm2d", "Norm3d"))):
        return False
    return all(next(c.parameters(), None) is None or is_norm_layer(c) for c in module.children())


@dataclass(frozen=True)
class Block:
    """One block of a model: a run of modules (and loose parameters) at one depth.

    Attributes:
        name: display name, the module paths joined by ``+`` (``"conv1+bn1"``).
        modules: dotted module paths that belong to the block.
        params: dotted names of loose parameters attached to the block (e.g. a ViT's
            ``class_token`` goes with the patch embedding).
    """

    name: str
    modules: tuple[str, ...]
    params: tuple[str, ...] = ()

    def covers(self, alias: str) -> bool:
        """Whether the parameter name ``alias`` lies in this block."""
        if alias in self.params:
            return True
        return any(m == "" or alias.startswith(m + ".") for m in self.modules)


# --------------------------------------------------------------------------- block discovery

_OVERRIDES: weakref.WeakKeyDictionary[nn.Module, tuple[Block, ...]] = weakref.WeakKeyDictionary()


def _first_word(path: str) -> str:
    return path.rpartition(".")[2].split("_")[0].lower()


def _same_head(e: Entry, head: Entry, modules: dict[str, nn.Module]) -> bool:
    """``e`` is one more head beside ``head``: same type, and the same first word (LeViT's
    ``head`` and ``head_dist``; not a ``pooler`` before a ``classifier``) or, for a linear
    layer named as a head with as many outputs, one more classifier (VOLO's ``aux_head``
    beside its ``head``)."""
    a, b = modules[e.modules[0]], modules[head.modules[0]]
    if type(a) is not type(b):
        return False
    if _first_word(e.modules[0]) == _first_word(head.modules[0]):
        return True
    words = e.modules[0].rpartition(".")[2].lower().split("_")
    return (
        isinstance(a, nn.Linear)
        and isinstance(b, nn.Linear)
        and a.out_features == b.out_features
        and bool(HEAD_WORDS.intersection(words))
    )


def _body(model: nn.Module) -> str | None:
    """The path of the pretrained body a task model names (transformers'
    ``base_model_prefix``: ``bert`` in ``BertForSequenceClassification``), if it has one and
    is not the body itself."""
    prefix = getattr(model, "base_model_prefix", None)
    if isinstance(prefix, str) and prefix and isinstance(getattr(model, prefix, None), nn.Module):
        return prefix
    return None


def _pooled(model: nn.Module, last_unit: str) -> set[str]:
    """The children of the model that work on pooled features: those after a pooling layer
    that comes after the last unit (MobileNetV3's ``conv_head`` after ``global_pool``), and a
    pooling layer with parameters itself (an attention pool)."""
    out: set[str] = set()
    after = pooled = False
    for name, child in model.named_children():
        if name == last_unit.split(".")[0]:
            after = True
        elif after and "Pool" in type(child).__name__:
            pooled = True
            if next(child.parameters(), None) is not None:
                out.add(name)
        elif pooled:
            out.add(name)
    return out


def _head_start(
    tail: list[Entry], modules: dict[str, nn.Module], body: str | None, pooled: set[str]
) -> int:
    """Where the head begins among the entries after the last unit.

    The head is the last module with a sibling head of its type (LeViT's ``head`` and
    ``head_dist``); it begins earlier at the first module of the model itself (not inside
    its trunk) named as part of a head (:data:`HEAD_WORDS`) or, in a task model that names
    its pretrained body, at the first module outside the body (every layer the task adds:
    DistilBERT's ``pre_classifier`` and ``classifier``), or at the first that works on pooled
    features (after a pooling layer: MobileNetV3's ``conv_head``; an attention pool). A last
    module that is a norm layer
    and not named as a head is no head: the model is a headless backbone, and its final norm
    joins the last unit.
    """
    cut = next(i for i, e in enumerate(tail) if _same_head(e, tail[-1], modules))
    for i, e in enumerate(tail):
        outside = body is not None and not e.modules[0].startswith(body + ".")
        named = "." not in e.modules[0] and _first_word(e.modules[0]) in HEAD_WORDS
        if named or outside or e.modules[0].split(".")[0] in pooled:
            return min(i, cut)
    if all(is_norm_layer(modules[m]) for m in tail[-1].modules) and body is None:
        return len(tail)
    return cut


def _discover(model: nn.Module) -> list[Block]:
    entries, pending = walk(model)
    if not entries:  # a model that owns its parameters directly (e.g. a bare nn.Linear)
        return [Block(name="<root>", modules=("",))]
    entries[0].params[:0] = pending
    modules = dict(model.named_modules(remove_duplicate=False))

    # a norm layer right after a single leaf layer joins it (conv1 + bn1 = the stem); a
    # norm layer is a layer, not a unit whose class name ends in Norm (EvaBlockPostNorm)
    merged: list[Entry] = []
    for e in entries:
        prev = merged[-1] if merged else None
        if (
            prev is not None
            and len(e.modules) == 1
            and is_norm_layer(modules[e.modules[0]])
            and not is_composite(modules[e.modules[0]])
            and not is_composite(modules[prev.modules[-1]])
            and not is_norm_layer(modules[prev.modules[-1]])
            and _feeds(modules[prev.modules[-1]], modules[e.modules[0]])
        ):
            merged[-1] = _merge(prev, e)
        else:
            merged.append(e)

    # a model whose units run parallel branches (HRNet) ends its depth at the last of them
    # when a list of one layer per branch comes next: what merges the branches from there
    # (HRNet's incre_modules, downsamp_modules and final_layer) is a neck, no unit, and
    # joins it
    parallel = [i for i, e in enumerate(merged) if e.parallel and e.unit]
    after = merged[parallel[-1] + 1 :] if parallel else []
    if any(e.parallel and not e.unit for e in after[:1]):  # a neck: per-branch layers first
        for e in after:
            e.unit = False
    # a list of one layer per branch (HRNet's transition, made at the end of a stage for the
    # next one's branches) joins the block before it, as timm groups it
    joined: list[Entry] = []
    for e in merged:
        if joined and e.parallel and not e.unit:
            joined[-1] = _merge(joined[-1], e)
        else:
            joined.append(e)
    merged = joined
    # single layers repeated (VGG's convolutions) are units only in a model with no
    # composite ones: before composite units, they are a stem of several convolutions
    composite = [i for i, e in enumerate(merged) if e.unit and is_composite(modules[e.modules[0]])]
    for e in merged[: composite[0] if composite else 0]:
        e.unit = False
    units = [i for i, e in enumerate(merged) if e.unit]
    if units:
        merged = _arrange(model, merged, modules)
    _scalars_to_head(model, merged)
    return [
        Block(name="+".join(e.modules), modules=tuple(e.modules), params=tuple(e.params))
        for e in merged
    ]


def _width(module: nn.Module, attrs: tuple[str, ...]) -> int | None:
    """The first of ``attrs`` that ``module`` has as a width (an int, or the last int of a
    shape), if any."""
    for a in attrs:
        value = getattr(module, a, None)
        if isinstance(value, int):
            return value
        if isinstance(value, tuple) and value and isinstance(value[-1], int):
            return value[-1]
    return None


def _feeds(layer: nn.Module, norm: nn.Module) -> bool:
    """Whether ``norm`` can normalise ``layer``'s output: its width is the layer's output
    width where both are known (a conv and its batch norm; not VOLO's ``aux_head`` and the
    final norm registered after it, 1000 classes against 384 features)."""
    out = _width(layer, ("out_channels", "out_features", "embedding_dim"))
    width = _width(norm, ("num_features", "num_channels", "normalized_shape"))
    return out is None or width is None or out == width


def _merge(a: Entry, b: Entry) -> Entry:
    return Entry(
        a.modules + b.modules,
        a.params + b.params,
        a.unit or b.unit,
        a.stage,
        a.parallel or b.parallel,
    )


def _arrange(model: nn.Module, merged: list[Entry], modules: dict[str, nn.Module]) -> list[Entry]:
    """The stem, the units and what lies between them, and the head."""
    last = max(i for i, e in enumerate(merged) if e.unit)
    # a module whose parameters all belong to earlier blocks (T5's encoder.embed_tokens,
    # tied to ``shared``) is no depth of its own, except after the last unit (a tied head)
    seen: set[int] = set()
    kept: list[Entry] = []
    for i, e in enumerate(merged):
        owned = {id(p) for m in e.modules for p in modules[m].parameters()}
        if i <= last and owned and owned <= seen and not e.params:
            continue
        seen |= owned
        kept.append(e)
    last = max(i for i, e in enumerate(kept) if e.unit)
    first = min(i for i, e in enumerate(kept) if e.unit)
    # what comes before the first unit is one block (the stem, the embeddings), but for
    # the layers of the first unit's own stage (its downsampling layer, as in later stages);
    # after the last unit comes the head (see _head_start), and what lies between (a final
    # norm, a conv head, BERT's pooler) joins the last unit, as timm's own grouping does
    stage = kept[first].stage
    # a task model's own layers registered before its pretrained body (XLM-R's classifier)
    # are its head all the same
    body = _body(model)
    inside = [body is None or e.modules[0].startswith(body + ".") for e in kept]
    ahead = [e for e, i in zip(kept[:first], inside, strict=False) if not i]
    kept = [e for e in kept if e not in ahead]
    first, last = first - len(ahead), last - len(ahead)
    stem = [e for e in kept[:first] if stage is None or e.stage != stage]
    entry = [e for e in kept[:first] if stage is not None and e.stage == stage]
    tail = kept[last + 1 :]
    out: list[Entry] = []
    middle = kept[first : last + 1]
    for i, e in enumerate(middle):  # a stage's own layers before its units: one block
        prev = out[-1] if out else None
        nxt = middle[i + 1] if i + 1 < len(middle) else None
        same = prev is not None and e.stage is not None and e.stage == prev.stage
        if prev and same and not prev.unit and not e.unit:
            out[-1] = _merge(prev, e)
        elif prev and same and prev.unit and not e.unit and (nxt is None or nxt.stage != e.stage):
            # a stage's own layer after its last unit joins it (DLA's root, which
            # aggregates the stage's trees; EfficientViM's downsampling at a stage's end)
            out[-1] = _merge(prev, e)
        else:
            out.append(e)
    if entry:
        out.insert(0, functools.reduce(_merge, entry))
    if stem:
        out[:0] = _stem_blocks(stem, kept[first])
    cut = _head_start(tail, modules, body, _pooled(model, kept[last].modules[0])) if tail else 0
    # a final norm between two heads (VOLO's norm, between aux_head and head) is no head
    inner = [
        e
        for e in tail[cut:-1]
        if all(is_norm_layer(modules[m]) for m in e.modules)
        and _first_word(e.modules[0]) not in HEAD_WORDS
        and body is None
    ]
    tail = [e for e in tail if e not in inner]
    if cut or inner:
        out[-1] = functools.reduce(_merge, tail[:cut] + inner, out[-1])
    if tail[cut:] or ahead:
        out.append(functools.reduce(_merge, tail[cut:] + ahead))
    return out


def _numbered_as(path: str, other: str) -> bool:
    """The top-level names of ``path`` and ``other`` are one word numbered (``level1`` and
    ``level2``)."""
    a, b = path.split(".")[0], other.split(".")[0]
    word = a.rstrip("0123456789")
    return word != a and b.rstrip("0123456789") == word and b != word


def _stem_blocks(stem: list[Entry], first: Entry) -> list[Entry]:
    """What comes before the first unit is one block, but for the layers numbered as the
    stages that follow (DLA's ``level0`` and ``level1`` before ``level2``): the model counts
    them among its depths, each a block."""
    out: list[Entry] = []
    head = first.modules[0]
    for e in stem:
        if (
            out
            and not _numbered_as(e.modules[0], head)
            and not _numbered_as(out[-1].modules[0], head)
        ):
            out[-1] = _merge(out[-1], e)
        else:
            out.append(e)
    return out


def _scalars_to_head(model: nn.Module, merged: list[Entry]) -> None:
    """A single-number parameter of the model itself (CLIP's ``logit_scale``, SigLIP's
    ``logit_bias``: a temperature or an offset of the output) belongs to the last block, not
    to the stem where loose parameters seen first go (a ViT's ``cls_token`` stays there);
    so does a vector of one weight per head of a list of heads (EfficientViM's ``weights``)."""
    heads = {
        len(c)
        for n, c in model.named_children()
        if isinstance(c, nn.ModuleList) and _first_word(n) in HEAD_WORDS
    }
    scalars = [
        n
        for n, p in model.named_parameters(recurse=False)
        if p.numel() == 1 or (p.dim() == 1 and p.numel() in heads)
    ]
    if not scalars or len(merged) < 2:
        return
    for e in merged[:-1]:
        e.params = [n for n in e.params if n not in scalars]
    merged[-1].params.extend(n for n in scalars if n not in merged[-1].params)


def set_blocks(model: nn.Module, blocks: Sequence[str | Sequence[str]]) -> None:
    """Override the blocks freezeflow finds in ``model`` (input to output).

    Each entry is a module path (``"layer4"``), a parameter name, or a list of them that form
    one block. Depth policies (:func:`~freezeflow.first`, :func:`~freezeflow.last`,
    :func:`~freezeflow.blocks`) and layer-wise LR decay then use these blocks.

    Raises:
        PolicyError: if a name is neither a module path nor a parameter name of ``model``.

    Example:
        >>> import torch.nn as nn, freezeflow as ff
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2), nn.Linear(2, 1))
        >>> ff.set_blocks(net, ["0", ["2", "3"]])
        >>> [b.name for b in ff.find_blocks(net)]
        ['0', '2+3']
    """
    modules = dict(model.named_modules(remove_duplicate=False))
    params = {n for n, _ in model.named_parameters(remove_duplicate=False)}
    out: list[Block] = []
    if isinstance(blocks, str) or not len(blocks):
        raise PolicyError(
            f"set_blocks() needs a non-empty list of blocks, got {blocks!r}; "
            "hint: pass e.g. ['conv1', 'layer1', 'layer2', 'fc']"
        )
    for entry in blocks:
        names = [entry] if isinstance(entry, str) else list(entry)
        mods: list[str] = []
        loose: list[str] = []
        for n in names:
            if n in modules:
                mods.append(n)
            elif n in params:
                loose.append(n)
            else:
                near = quote_list(nearest(n, [*modules, *params]))
                raise PolicyError(
                    f"set_blocks(): {n!r} is not a module or parameter of "
                    f"{type(model).__name__}; nearest: {near}; hint: blocks are named by the "
                    "dotted paths of model.named_modules() or model.named_parameters()"
                )
        out.append(Block(name="+".join(names), modules=tuple(mods), params=tuple(loose)))
    _OVERRIDES[model] = tuple(out)


def clear_blocks(model: nn.Module) -> None:
    """Forget a :func:`set_blocks` override: blocks are found automatically again."""
    _OVERRIDES.pop(model, None)


def find_blocks(model: nn.Module) -> list[Block]:
    """The blocks of ``model`` from input to output, at the level of its repeated units.

    A *unit* is one of the repeated sub-networks a model is made of: a ResNet basic block, a
    ConvNeXt or Swin block, an MBConv, a transformer layer; units of several types in one
    stage (EdgeNeXt) are each a unit, one shared layer (ALBERT) is one, the i-th elements of
    sibling lists of one length are one (XLM's attentions, ffns and their norms), and a
    module running parallel branches (HRNet, CrossViT) is one, its branches side by side at
    one depth (``freezeflow.core.units`` says how they are found). Discovery walks into every
    module that holds units, however deep (a ConvNeXt stage is walked into: its downsampling
    layer is a block, then each of its units). Then:

    - what comes before the first unit is one block (the stem, the embeddings, loose
      parameters such as a ViT's ``cls_token``), but for the first stage's own layers, a
      block as in later stages, and layers numbered as the stages (DLA's ``level0``), a
      block each; a module named ``stem`` is one block whatever it holds;
    - a stage's own layer after its last unit joins that unit (DLA's ``root``);
    - the head is the last module with a sibling head of its type (LeViT's ``head`` and
      ``head_dist``) or a second classifier (VOLO's ``aux_head``), from the first child of
      the model named as part of a head (``HEAD_WORDS``: EVA's ``fc_norm``, DistilBERT's
      ``pre_classifier``), the first working on pooled features or, in a transformers task
      model, from the first module outside its pretrained body (every layer the task adds);
      a headless backbone's final norm is no head;
    - what lies between the last unit and the head (a final norm, a conv head, BERT's
      pooler, a norm between two heads) joins the last unit, as timm's own grouping mostly
      does, and so does the neck after the last parallel unit (HRNet's);
    - a single-number parameter of the model itself (CLIP's ``logit_scale``), or a vector
      of one weight per head of a list of heads, joins the head;
    - a module whose parameters all belong to earlier blocks (T5's ``encoder.embed_tokens``)
      adds no depth, except a tied output head;
    - a norm layer right after a single layer of its width joins it (``conv1+bn1``);
      modules without parameters are skipped.

    Order is registration order. Depth is counted in units, not in parameters: the last two
    blocks of a ConvNeXt backbone are its last two blocks, about half of its parameters
    because the last stage is the widest. Override the blocks with :func:`set_blocks`.

    Example:
        >>> import torchvision, freezeflow as ff
        >>> [b.name for b in ff.find_blocks(torchvision.models.resnet18())][:3]
        ['conv1+bn1', 'layer1.0', 'layer1.1']
    """
    override = _OVERRIDES.get(model)
    if override is not None:
        return list(override)
    return _discover(model)
