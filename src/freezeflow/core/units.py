"""Where a model's repeated units are: the walk behind block discovery.

:func:`walk` goes through a model in registration order and emits an :class:`Entry` per
candidate block, marking the *units* (the repeated sub-networks: a ResNet basic block, a
ConvNeXt block, a transformer layer). :mod:`freezeflow.core.discovery` turns the entries into
blocks (the stem, the head, what joins what). The rules, each with the architecture that
needs it:

- a ``Sequential``/``ModuleList``/``ModuleDict`` holds units when two or more of its
  children are composite and of one type, or are each unit-sized (three or more
  parameter-owning layers) whatever their types (a ByobNet stage of a bottleneck then a
  self-attention block; in a container of units, EdgeNeXt's transposed-attention block after
  its conv blocks is a unit too), unless the container is itself an element of a list and
  its sequence of types recurs in the model (DaVit's spatial and channel blocks, paired in
  every unit: the pair is the unit), or four or more are leaf layers of one type (VGG's
  ``features``); a ``ModuleList`` whose single child is unit-sized holds one unit applied as
  many times as the model says (ALBERT's one shared layer);
- a module that is not a container, and not an element of a list, holds units when two or
  more of its unit-sized children are numbered units of one type, its other children being
  smaller layers of its own (timm's ``RegStage``: ``b1``, ``b2``...; DLA's ``tree1``,
  ``tree2`` beside the ``root`` that aggregates them; not GhostNet's bottleneck, an element
  of a list, of ``ghost1`` and ``ghost2``); such a module is a stage;
- sibling lists of one length are taken by index: their i-th elements are one layer (XLM's
  ``attentions``, ``layer_norm1``, ``ffns``, ``layer_norm2``), or, where one of the lists
  holds stages, stage i with its own layers (GLPN's ``patch_embeddings``, ``block``,
  ``layer_norm``);
- where a module numbers its stages' parts in their names (CoaT's ``patch_embed1``,
  ``cpe1``, ``crpe1``, ``serial_blocks1``, registered as all patch embeddings first), the
  numbers give the order, and a numbered loose parameter goes with its stage's first block
  (CoaT's ``cls_token1``, Visformer's ``pos_embed1``);
- a module named ``stem`` is one block, whatever it holds (FastViT's three MobileOne blocks,
  NFNet's four convolutions), unless it holds units of a type later stages hold (VibeVoice's
  ``stem.stage`` is the first stage); so is a module whose lists hold only conv-norm pairs
  in a model with real units (EfficientViM's ``patch_embed``, its ``downsample``), and a
  child of the model named as a head holding only single layers (EfficientViM's ``heads``);
- a module that runs parallel branches is one unit: its branches work side by side, so they
  have one depth and, under ``lr_decay``, one LR. It has a container ``branches`` of two or
  more paths (HRNet's ``HighResolutionModule``, with the layers that fuse them) or, as an
  element of a list, two or more lists of one length, one of them of paths (CrossViT's
  multi-scale block: ``blocks``, ``projs``, ``fusion``, ``revert_projs``). A list with one
  element per branch of the parallel units next to it (HRNet's ``transition`` layers) is one
  entry, marked ``parallel``, that joins the block before it;
- every module that holds units somewhere inside is walked into, however deep; a stage walked
  into from a container of stages names its entries' ``stage``, so that its downsampling
  layers form a block of their own, also in the first stage (a CSPNet's ``stages.0``,
  StarNet's ``stages.0``, a ``Sequential`` of a conv then blocks); a stage's own parameters
  go with its first block (Nest's ``pos_embed``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from torch import nn

__all__ = ["HEAD_WORDS", "UNIT_OWNERS", "Entry", "branch_count", "is_composite", "owners", "walk"]

_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
UNIT_OWNERS = 3
"""A unit owns parameters in at least this many layers (a conv-norm pair has two)."""


@dataclass
class Entry:
    """A candidate block: modules (dotted paths) and loose parameters."""

    modules: list[str]
    params: list[str] = field(default_factory=list)
    unit: bool = False
    """One of the repeated units of a container (a ResNet basic block, a transformer layer),
    not a stem, a downsampling layer, a final norm or a head."""
    stage: str | None = None
    """The stage (a child of a container of stages) the entry was found in, if any."""
    parallel: bool = False
    """Parallel branches side by side: a unit that runs them (HRNet's multi-resolution
    module), or, not a unit, a list of one layer per branch (HRNet's transitions)."""


class _Facts:
    """What the walk asks of a module, computed once per module per walk (the questions
    recurse through the whole model, and large models have thousands of modules)."""

    def __init__(self, model: nn.Module) -> None:
        self._owners: dict[int, int] = {}
        self._repeated: dict[int, bool] = {}
        self._trunk: dict[int, bool] = {}
        self._holds: dict[int, bool] = {}
        self._model = model
        self._sized: bool | None = None
        self._types: Counter[type] | None = None
        # how often each sequence of unit types occurs in containers of several types: a
        # sequence that recurs is a unit made of sub-blocks (DaVit's spatial + channel pair)
        self._patterns = Counter(
            p for m in model.modules() if (p := self._mixed_pattern(m)) is not None
        )
        self._elements = {
            id(c) for m in model.modules() if type(m) in _CONTAINERS for c in m.children()
        }

    def _mixed_pattern(self, module: nn.Module) -> tuple[type, ...] | None:
        """The types of a plain container's children when they are unit-sized and each of
        another type, else None."""
        if type(module) not in _CONTAINERS:
            return None
        children = [c for _, c in param_children(module)]
        if len(children) < 2 or not all(self.unit_sized(c) for c in children):
            return None
        kinds = tuple(type(c) for c in children)
        return kinds if len(set(kinds)) == len(kinds) else None

    def owners(self, module: nn.Module) -> int:
        hit = self._owners.get(id(module))
        if hit is None:
            own = next(module.parameters(recurse=False), None) is not None
            hit = int(own) + sum(self.owners(c) for c in module.children())
            self._owners[id(module)] = hit
        return hit

    def unit_sized(self, module: nn.Module) -> bool:
        return self.owners(module) >= UNIT_OWNERS

    def repeated(self, module: nn.Module) -> bool:
        hit = self._repeated.get(id(module))
        if hit is None:
            hit = self._repeated[id(module)] = self._is_repeated(module)
        return hit

    def _is_repeated(self, module: nn.Module) -> bool:
        named = param_children(module)
        children = [c for _, c in named]
        if not children:
            return False
        if not isinstance(module, _CONTAINERS):
            # numbered units of one type (RegNet's b1, b2...), beside which the module may
            # have smaller layers of its own (DLA's tree1 and tree2, the root that
            # aggregates them, a projection)
            sized = [(n, c) for n, c in named if self.unit_sized(c)]
            return (
                len(sized) >= 2
                and len({type(c) for _, c in sized}) == 1
                and not isinstance(sized[0][1], _CONTAINERS)
                and _numbered([n for n, _ in sized])
                and next(module.parameters(recurse=False), None) is None
                # an element of a list or sequence is a unit, no stage: GhostNet's
                # bottleneck, of two numbered ghost modules (an expansion, a projection)
                and id(module) not in self._elements
            )
        exact = type(module) in _CONTAINERS
        pattern = self._mixed_pattern(module)
        if pattern is not None:  # units of several types (a ByobNet stage), unless the
            # container is an element of a list and its types recur, and none of them holds
            # units of its own: a unit of sub-blocks (DaVit), not a stage (MobileViT's)
            return (
                self._patterns[pattern] < 2
                or id(module) not in self._elements
                or any(self.holds_units(c) for c in children)
            )
        if type(module) is nn.ModuleList and len(children) == 1:
            return self.unit_sized(children[0])  # one layer, shared (ALBERT)
        composite = Counter(
            type(c) for c in children if self.owners(c) >= 2 and (exact or self.unit_sized(c))
        )
        leaves = Counter(type(c) for c in children if self.owners(c) < 2)
        return any(v >= 2 for v in composite.values()) or any(v >= 4 for v in leaves.values())

    def holds_units(self, module: nn.Module) -> bool:
        """A container of *units* lies inside ``module``: a repeated container whose
        children all are unit-sized (a ConvNeXt stage's ``blocks``), not the conv-norm pairs
        inside one unit (an MBConv's ``block``)."""
        hit = self._holds.get(id(module))
        if hit is None:
            hit = any(self._units_container(m) or self.holds_units(m) for m in module.children())
            self._holds[id(module)] = hit
        return hit

    def units_container(self, m: nn.Module) -> bool:
        """``m`` is a repeated container of unit-sized children (a stage's list of units)."""
        return self._units_container(m)

    def _units_container(self, m: nn.Module) -> bool:
        if not self.repeated(m):
            return False
        children = [c for _, c in param_children(m)]
        # repeated units of one type (a mixed container inside a unit, T5's self-attention
        # and feed-forward sub-layers, is no stage), or one shared layer
        alike = max(Counter(type(c) for c in children).values()) >= 2
        single = len(children) == 1 and type(m) is nn.ModuleList
        return (alike or single) and all(self.unit_sized(c) for c in children)

    def mixed_stage(self, module: nn.Module) -> bool:
        """A container of two or more unit-sized children of several types lies directly in
        ``module`` (EdgeNeXt's last stage: a conv block, then a transposed-attention block)."""
        return any(
            self._mixed_pattern(c) is not None or (self.repeated(c) and type(c) in _CONTAINERS)
            for c in module.children()
            if sum(self.unit_sized(x) for x in c.children()) >= 2
        )

    def shares_units(self, module: nn.Module) -> bool:
        """``module`` holds a list of units of a type that lists of units outside it hold
        too: it is the first stage, not a stem of its own (VibeVoice's ``stem.stage``, of the
        blocks the later stages are made of; not FastViT's stem of MobileOne blocks, a type
        found outside it only as its single ``final_conv``)."""
        if self._types is None:
            self._types = Counter(
                type(c)
                for m in self._model.modules()
                if self._units_container(m)
                for c in m.children()
            )
        inside = Counter(
            type(c) for m in module.modules() if self._units_container(m) for c in m.children()
        )
        return any(self._types[k] > v for k, v in inside.items())

    def pairs_only(self, module: nn.Module) -> bool:
        """In a model with unit-sized units, ``module``'s repeated containers hold only
        small composites (conv-norm pairs): it is one layer made of several convolutions
        (EfficientViM's ``patch_embed`` and ``downsample``), not a trunk to walk into."""
        if self._sized is None:
            self._sized = any(
                self.repeated(m) and any(self.unit_sized(c) for _, c in param_children(m))
                for m in self._model.modules()
                if isinstance(m, _CONTAINERS)
            )
        if not self._sized:
            return False
        inner = [m for m in module.modules() if self.repeated(m)]
        return all(
            isinstance(m, _CONTAINERS)
            and all(2 <= self.owners(c) < UNIT_OWNERS for _, c in param_children(m))
            for m in inner
        )

    def trunk(self, module: nn.Module) -> bool:
        """Any repeated container inside ``module`` (itself included)."""
        hit = self._trunk.get(id(module))
        if hit is None:
            hit = self.repeated(module) or any(self.trunk(c) for c in module.children())
            self._trunk[id(module)] = hit
        return hit


def owners(module: nn.Module) -> int:
    """How many modules under ``module`` (itself included) own parameters directly."""
    return sum(1 for m in module.modules() if next(m.parameters(recurse=False), None) is not None)


def is_composite(module: nn.Module) -> bool:
    """Two or more modules under it (itself included) own parameters."""
    return owners(module) >= 2


def param_children(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """The children of ``module`` that hold parameters, with their names."""
    return [(n, c) for n, c in module.named_children() if next(c.parameters(), None) is not None]


def _numbered(names: list[str]) -> bool:
    """``b1``, ``b2``, ...: one stem, different trailing numbers."""
    stems = {n.rstrip("0123456789") for n in names}
    return len(stems) == 1 and all(n[len(n.rstrip("0123456789")) :] for n in names)


def _is_stem(name: str) -> bool:
    """A module named ``stem`` (``stem``, ``stem_conv``) is the stem, one block, whatever it
    holds (FastViT's three MobileOne blocks, NFNet's four convolutions)."""
    return name.split("_")[0].lower() == "stem"


HEAD_WORDS = frozenset({"head", "heads", "fc", "classifier", "pre", "logits"})
"""First words of the names that make a child of the model after the last unit part of the
head (``head_dist``, EVA's ``fc_norm``, DistilBERT's ``pre_classifier``); a ``norm``, a
``conv_head`` or a ``final_conv`` there is a pretrained layer and joins the last unit."""


def _is_head_list(name: str, module: nn.Module, facts: _Facts) -> bool:
    """A child of the model named as a head (:data:`HEAD_WORDS`) that holds no unit-sized
    module is one block whatever it holds (EfficientViM's ``heads``, one classifier per
    stage, are no repeated units)."""
    return name.split("_")[0].lower() in HEAD_WORDS and not any(
        facts.unit_sized(c) for c in module.modules() if c is not module
    )


def _parallel(module: nn.Module, *, element: bool = False) -> bool:
    """A module that runs parallel branches: one unit, since its branches work side by side
    at one depth. Either it has a container ``branches`` of several paths (HRNet's
    ``HighResolutionModule``: one path per resolution, and the layers that fuse them), or,
    as an element of a container of units (``element``), two or more lists of one length,
    its branches and their per-branch layers (CrossViT's multi-scale block: ``blocks``,
    ``projs``, ``fusion`` and ``revert_projs``, each of two, one per patch size), one of
    which holds paths (sequences of layers: CrossViT's ``blocks``)."""
    branches = getattr(module, "branches", None)
    if isinstance(branches, _CONTAINERS) and len(branches) >= 2:
        return True
    if not element:
        return False
    lists = [c for c in module.children() if type(c) is nn.ModuleList and len(c) >= 2]
    lengths = Counter(len(c) for c in lists)
    # and one of them holds paths, sequences of layers (not Janus's interleaved lists of
    # res blocks and attention blocks, one pair per depth)
    paths = any(all(isinstance(x, _CONTAINERS) for x in c.children()) for c in lists)
    return paths and any(v >= 2 for v in lengths.values())


def branch_count(module: nn.Module) -> int:
    """How many branches a module that runs parallel branches has (0 for any other)."""
    branches = getattr(module, "branches", None)
    if isinstance(branches, _CONTAINERS) and len(branches) >= 2:
        return len(branches)
    lists = [len(c) for c in module.children() if type(c) is nn.ModuleList and len(c) >= 2]
    return max(lists, default=0)


def _per_branch(module: nn.Module, neighbours: list[nn.Module]) -> bool:
    """A list with one element per branch of the parallel units next to it (HRNet's
    ``transition`` layers before a stage, ``incre_modules`` after the last): its elements
    work side by side, so the list is one block, not one per element."""
    if type(module) is not nn.ModuleList or len(module) < 2:
        return False
    widths = {
        branch_count(m)
        for n in neighbours
        if n is not module
        for m in (n, *n.children())
        if _parallel(m, element=True)
    }
    return len(module) in widths


def _number(name: str) -> int | None:
    """The number a name ends in (``patch_embed2``, ``cls_token_2``: 2), if any."""
    word = name.rstrip("0123456789")
    return int(name[len(word) :]) if word != name and word else None


def _numbered_stages(
    children: list[tuple[str, nn.Module]], prefix: str
) -> tuple[list[tuple[str, nn.Module]], dict[int, str]]:
    """Children in the order of the stages their names number, where a module names the
    parts of each stage with its number (CoaT's ``patch_embed1``, ``cpe1``, ``crpe1``,
    ``serial_blocks1``, registered as all patch embeddings, then all ``cpe``...): two or more
    words each numbered with one set of two or more numbers. The children so numbered come,
    from the first of them, stage by stage; each stage gets a label, by number."""
    sets: dict[str, set[int]] = {}
    for name, _ in children:
        number = _number(name)
        if number is not None:
            sets.setdefault(name.rstrip("0123456789").rstrip("_"), set()).add(number)
    shared = Counter(frozenset(v) for v in sets.values() if len(v) >= 2)
    # not a few numbers of a longer run (NASNet's cell_stem_0, _1 and reduction_cell_0, _1
    # among cell_0 ... cell_17)
    common = [n for n, c in shared.items() if c >= 2 and not any(n < v for v in sets.values())]
    if len(common) != 1:
        return children, {}
    numbers = common[0]
    words = {w for w, v in sets.items() if v == numbers}

    def member(name: str) -> bool:
        return _number(name) is not None and name.rstrip("0123456789").rstrip("_") in words

    members = [(n, c) for n, c in children if member(n)]
    members.sort(key=lambda nc: _number(nc[0]) or 0)  # stable: registration order within
    first = next(i for i, (n, _) in enumerate(children) if member(n))
    rest = [(n, c) for n, c in children if not member(n)]
    ordered = rest[:first] + members + rest[first:]
    return ordered, {k: f"{prefix}#{k}" for k in sorted(numbers)}


def _list_length(module: nn.Module) -> int:
    """The length of a ``ModuleList``; -1 for any other module."""
    return len(module) if isinstance(module, nn.ModuleList) else -1


def _zipped_lists(
    children: list[tuple[str, nn.Module]], facts: _Facts
) -> dict[int, tuple[list[tuple[str, nn.ModuleList]], int | None]]:
    """Runs of two or more adjacent ``ModuleList`` children of one length (two or more),
    whose i-th elements belong together: the parts of layer i (one list holds unit-sized
    parts, none holds units: XLM), or stage i and its own layers (exactly one list holds
    stages, lists of units: GLPN, Twins). Maps the index of each list of a run to the run
    (given at its first list, empty at the others) and the index of its list of stages."""
    out: dict[int, tuple[list[tuple[str, nn.ModuleList]], int | None]] = {}
    i = 0
    while i < len(children):
        j = i
        length = _list_length(children[i][1])
        while j < len(children) and _list_length(children[j][1]) == length >= 2:
            j += 1
        run = [(n, c) for n, c in children[i:j] if isinstance(c, nn.ModuleList)]
        kinds = {type(e) for _, lst in run for e in lst.children()}
        # the parts of one layer are of several types (not CoaT's serial_blocks1..4, lists of
        # the same blocks: stages one after another)
        if len(run) >= 2 and len(kinds) >= 2:
            stages = [
                k
                for k, (_, lst) in enumerate(run)
                if all(facts.units_container(e) for e in lst.children())
            ]
            holds = any(facts.holds_units(e) for _, lst in run for e in lst.children())
            sized = any(facts.unit_sized(e) for _, lst in run for e in lst.children())
            if len(stages) == 1 or (not stages and not holds and sized):
                stage_list = stages[0] if stages else None
                for k in range(i, j):
                    out[k] = (run if k == i else [], stage_list)
        i = max(j, i + 1)
    return out


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def walk(model: nn.Module) -> tuple[list[Entry], list[str]]:
    """Candidate blocks in registration order, and the loose parameters seen before the
    first one."""
    facts = _Facts(model)
    entries: list[Entry] = []
    pending: list[str] = []
    numbered: dict[str, dict[int, str]] = {}

    def attach(module: nn.Module, prefix: str, start: int, stage: str | None) -> None:
        """A module's own parameters go with the block before it (torchvision ViT's
        ``encoder.pos_embedding`` with the patch embedding), but a stage's with its first
        block (Nest's ``pos_embed``, added as the stage begins)."""
        names = [_join(prefix, n) for n, _ in module.named_parameters(recurse=False)]
        labels = numbered.get(prefix, {})
        for n in [n for n in names if _number(n.rpartition(".")[2]) in labels]:
            # a numbered parameter of a module whose stages are numbered goes with its
            # stage's first block (CoaT's cls_token2, Visformer's pos_embed2)
            label = labels[_number(n.rpartition(".")[2]) or 0]
            first = next((e for e in entries[start:] if e.stage == label), None)
            if first is not None:
                first.params.append(n)
                names.remove(n)
        if stage == prefix and prefix and len(entries) > start:
            entries[start].params[:0] = names
        elif start:
            entries[start - 1].params.extend(names)
        else:
            pending.extend(names)

    def unit_types(container: nn.Module) -> set[type]:
        """The types of the units of a repeated container (its most common types)."""
        counts = Counter(type(c) for _, c in param_children(container))
        return {t for t, v in counts.items() if v == max(counts.values())}

    def expand(
        container: nn.Module, prefix: str, stage: str | None, units: set[type] | None = None
    ) -> None:
        start = len(entries)
        children = param_children(container)
        counts = Counter(type(c) for _, c in children)
        top = max(counts.values())
        mixed = sum(facts.unit_sized(c) for _, c in children) >= 2
        # a stage like its siblings that hold units, with units of two types only (EdgeNeXt's
        # last stage: a conv block, then a transposed-attention block) is walked into too
        staged = {type(c) for _, c in children if facts.holds_units(c)}
        # stages that are containers of units themselves (StarNet's ``stages.1``: a
        # downsampling conv, then blocks): each is a stage, so that its own layers form a
        # block; a sibling of their type with a single unit is walked into too, its units
        # being of their units' types
        inner = [c for _, c in children if type(c) in _CONTAINERS and facts.repeated(c)]
        kinds = set().union(*(unit_types(c) for c in inner)) if inner else set()
        for name, child in children:
            path = _join(prefix, name)
            if _is_stem(name) and not facts.shares_units(child):
                entries.append(Entry([path], stage=stage))
            elif _parallel(child, element=counts[type(child)] >= 2):
                entries.append(Entry([path], unit=True, stage=stage, parallel=True))
            elif facts.repeated(child):
                expand(child, path, path if child in inner else stage)
            elif (
                inner
                and type(child) in {type(c) for c in inner}
                and any(type(c) in kinds for _, c in param_children(child))
                and len(param_children(child)) >= 2
            ):
                expand(child, path, path, kinds)
            elif facts.holds_units(child) or (type(child) in staged and facts.mixed_stage(child)):
                walk_into(child, path, path)  # a stage: its downsampling layer, then its units
            else:
                if units is not None:
                    unit = type(child) in units
                else:
                    unit = counts[type(child)] == top or (mixed and facts.unit_sized(child))
                entries.append(Entry([path], unit=unit, stage=stage))
        attach(container, prefix, start, stage)

    def walk_into(module: nn.Module, prefix: str, stage: str | None) -> None:
        start = len(entries)
        _walk_children(module, prefix, stage)
        attach(module, prefix, start, stage)

    def _walk_children(module: nn.Module, prefix: str, stage: str | None) -> None:
        children, labels = _numbered_stages(param_children(module), prefix)
        if labels:
            numbered[prefix] = labels
        # a sibling of the same type as a repeated one is a unit too (timm RegNet's ``s1``
        # holds one block, ``s3`` several)
        stages = {
            type(c) for _, c in children if facts.repeated(c) and not isinstance(c, _CONTAINERS)
        }
        kinds = Counter(type(c) for _, c in children)
        zipped = _zipped_lists(children, facts)
        outer = stage
        for i, (name, child) in enumerate(children):
            path = _join(prefix, name)
            number = _number(name)
            stage = labels.get(number, outer) if labels and number is not None else outer
            if i in zipped:
                run, stage_list = zipped[i]
                if run:
                    zip_walk(prefix, run, stage_list, stage)
            elif (_is_stem(name) and not facts.shares_units(child)) or (
                not prefix and _is_head_list(name, child, facts)
            ):
                entries.append(Entry([path], stage=stage))
            elif _parallel(child):
                entries.append(Entry([path], unit=True, stage=stage, parallel=True))
            elif _per_branch(child, [c for _, c in children[max(0, i - 1) : i + 2]]):
                entries.append(Entry([path], stage=stage, parallel=True))
            elif facts.repeated(child):
                # a module of numbered units is a stage (RegNet's s2, DLA's level2)
                inner = path if not isinstance(child, _CONTAINERS) and stage == outer else stage
                expand(child, path, inner)
            elif facts.holds_units(child):
                walk_into(child, path, stage)
            elif (
                kinds[type(child)] >= 2
                and stage == outer  # not one numbered part of each stage (CoaT's crpe1)
                and facts.unit_sized(child)
                # a stage of one unit (ECA-ResNet-light's layer1), not a list of single
                # layers (EfficientViM's norms, one per stage)
                and (
                    not isinstance(child, _CONTAINERS)
                    or any(facts.unit_sized(c) for _, c in param_children(child))
                )
            ):
                # a unit among siblings of its type (GoogLeNet's inception3a, inception3b...)
                entries.append(Entry([path], unit=True, stage=stage))
            elif facts.trunk(child) and not facts.pairs_only(child):
                walk_into(child, path, stage)
            else:
                entries.append(Entry([path], unit=type(child) in stages, stage=stage))

    def zip_walk(
        prefix: str,
        run: list[tuple[str, nn.ModuleList]],
        stage_list: int | None,
        stage: str | None,
    ) -> None:
        """Sibling lists of one length, taken by index: the i-th elements of each are one
        layer (XLM's attentions, layer_norm1, ffns, layer_norm2), or, where one list holds
        stages, the i-th stage with its own layers (GLPN's patch_embeddings, block,
        layer_norm; Twins' patch_embeds, blocks, pos_block)."""
        for i in range(len(run[0][1])):
            parts = [
                (_join(_join(prefix, n), str(i)), lst[i])
                for n, lst in run
                if next(lst[i].parameters(), None) is not None
            ]
            if stage_list is None:
                entries.append(Entry([p for p, _ in parts], unit=True, stage=stage))
                continue
            here = _join(_join(prefix, run[stage_list][0]), str(i))
            before = [p for p, _ in parts if run_index(run, p) < stage_list]
            after = [p for p, _ in parts if run_index(run, p) > stage_list]
            if before:
                entries.append(Entry(before, stage=here))
            body = run[stage_list][1][i]
            if facts.repeated(body):
                expand(body, here, here)
            else:
                entries.append(Entry([here], unit=True, stage=here))
            if after:
                entries.append(Entry(after, stage=here))

    def run_index(run: list[tuple[str, nn.ModuleList]], path: str) -> int:
        name = path.rsplit(".", 2)[-2]
        return next(j for j, (n, _) in enumerate(run) if n == name)

    walk_into(model, "", None)
    return entries, pending
