"""Policies as plain data (JSON/YAML values), for schedules stored in files."""

from __future__ import annotations

from importlib import import_module
from typing import Any

from torch import nn

from freezeflow.core.depth import Blocks, Layers, blocks, first, last, layers
from freezeflow.core.policy import (
    POLICY_READERS,
    Complement,
    Difference,
    FreezePolicy,
    Intersection,
    Name,
    Union,
    _All,
    _Nothing,
    everything,
    name,
    nothing,
)
from freezeflow.core.selectors import NormLayers, OfType, Regex, norm_layers, of_type, regex
from freezeflow.errors import PolicyError, nearest

__all__ = ["policy_from_data", "policy_to_data"]


def policy_to_data(policy: FreezePolicy) -> Any:
    """A policy as plain JSON/YAML values; :func:`policy_from_data` reads it back.

    ``where()`` predicates are code, not data, and raise :class:`PolicyError`.
    """
    if isinstance(policy, Name):
        pats: Any = policy.patterns[0] if len(policy.patterns) == 1 else list(policy.patterns)
        if not policy.strict:
            return {"name": pats, "strict": False}
        # a bare string that spells a keyword would read back as that keyword
        return {"name": pats} if pats in ("everything", "nothing", "norm_layers") else pats
    if isinstance(policy, Regex):
        return (
            {"regex": policy.pattern}
            if policy.strict
            else {"regex": policy.pattern, "strict": False}
        )
    if isinstance(policy, OfType):
        names = [f"{t.__module__}.{t.__qualname__}" for t in policy.types]
        return {"type": names[0] if len(names) == 1 else names}
    if isinstance(policy, NormLayers):
        return "norm_layers"
    if isinstance(policy, _All):
        return "everything"
    if isinstance(policy, _Nothing):
        return "nothing"
    if isinstance(policy, (Blocks, Layers)):
        kind = "blocks" if isinstance(policy, Blocks) else "layers"
        data: dict[str, Any] = {kind: [policy.start, policy.stop]}
        if policy.among is not None:
            data["among"] = policy_to_data(policy.among)
        return data
    if isinstance(policy, Union):
        return {"or": [policy_to_data(p) for p in policy.parts]}
    if isinstance(policy, Intersection):
        return {"and": [policy_to_data(p) for p in policy.parts]}
    if isinstance(policy, Difference):
        return {"minus": [policy_to_data(policy.left), policy_to_data(policy.right)]}
    if isinstance(policy, Complement):
        return {"not": policy_to_data(policy.inner)}
    return policy.to_data()  # a kind with a data_key of its own, or an error


def _import_type(path: str, where_: str) -> type[nn.Module]:

    module_name, _, attr = path.rpartition(".")
    try:
        obj: Any = import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError, ValueError) as exc:
        raise PolicyError(
            f"{where_}: cannot import module type {path!r}; hint: write the full dotted path, "
            "e.g. 'torch.nn.BatchNorm2d'"
        ) from exc
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        raise PolicyError(
            f"{where_}: {path!r} is not an nn.Module subclass (it is {obj!r}); expected a module "
            "type; hint: e.g. 'torch.nn.BatchNorm2d'"
        )
    return obj


_KINDS = ("name", "regex", "type", "blocks", "layers", "first", "last", "or", "and", "minus", "not")


def policy_from_data(data: Any, where_: str = "policy") -> FreezePolicy:
    """Read a policy written by :func:`policy_to_data` (see
    :meth:`freezeflow.Schedule.from_dict` for the format)."""
    if isinstance(data, str):
        if data == "everything":
            return everything()
        if data == "nothing":
            return nothing()
        if data == "norm_layers":
            return norm_layers()
        return name(data)
    if isinstance(data, list) and data and all(isinstance(d, str) for d in data):
        return name(*data)
    if isinstance(data, dict) and data:
        # the kind of policy is its first key that names one (YAML keeps any key order)
        known = (*_KINDS, *POLICY_READERS)
        key = next((k for k in data if k in known), next(iter(data)))
        rest = {k: v for k, v in data.items() if k != key}
        sub = f"{where_}.{key}"
        if key in POLICY_READERS and key not in _KINDS:
            if rest:
                raise PolicyError(
                    f"{where_}: unknown option {next(iter(rest))!r} beside {key!r}; expected "
                    f"{{{key}: value}} alone; hint: the value holds the policy's arguments"
                )
            return POLICY_READERS[key](data[key], sub)

        def strict() -> bool:
            value = rest.get("strict", True)
            if not isinstance(value, bool):
                raise PolicyError(
                    f"{where_}.strict: expected true or false, got {value!r}; hint: write "
                    "strict: false (a YAML boolean, without quotes)"
                )
            return value

        def parts(value: Any) -> list[FreezePolicy]:
            if not isinstance(value, list) or not value:
                raise PolicyError(
                    f"{sub}: expected a non-empty list of policies, got {value!r}; hint: "
                    f"{{{key}: [layer3, layer4]}}"
                )
            return [policy_from_data(v, f"{sub}[{i}]") for i, v in enumerate(value)]

        def extra(allowed: set[str]) -> None:
            bad = [k for k in rest if k not in allowed]
            if bad:
                raise PolicyError(
                    f"{where_}: unknown option {bad[0]!r} for {key!r}; expected some of "
                    f"{sorted(allowed)}; hint: options sit beside the key, e.g. "
                    "{name: head, strict: false}"
                )

        if key == "name":
            extra({"strict"})
            pats = data[key] if isinstance(data[key], list) else [data[key]]
            return name(*pats, strict=strict())
        if key == "regex":
            extra({"strict"})
            return regex(data[key], strict=strict())
        if key == "type":
            extra(set())
            paths = data[key] if isinstance(data[key], list) else [data[key]]
            return of_type(*(_import_type(p, sub) for p in paths))
        if key in ("blocks", "layers", "first", "last"):
            extra({"among"})
            among = policy_from_data(rest["among"], f"{where_}.among") if "among" in rest else None
            value = data[key]
            if key in ("first", "last"):
                return (first if key == "first" else last)(value, among=among)
            if not (isinstance(value, list) and len(value) == 2):
                raise PolicyError(
                    f"{sub}: expected [start, stop], got {value!r}; hint: {key}: [-2, null] "
                    "is the last two"
                )
            return (blocks if key == "blocks" else layers)(*value, among=among)
        if key in ("or", "and"):
            extra(set())
            ps = parts(data[key])
            out = ps[0]
            for p in ps[1:]:
                out = (out | p) if key == "or" else (out & p)
            return out
        if key == "minus":
            extra(set())
            ps = parts(data[key])
            if len(ps) != 2:
                raise PolicyError(
                    f"{sub}: expected [policy, policy_to_remove], got {data[key]!r}; hint: "
                    "{minus: [everything, norm_layers]}"
                )
            return ps[0] - ps[1]
        if key == "not":
            extra(set())
            return ~policy_from_data(data[key], sub)
    keys = [*_KINDS, *POLICY_READERS]
    near = ""
    if isinstance(data, dict) and data:
        near = f"; nearest: {nearest(str(next(iter(data))), keys, n=1)[0]!r}"
    raise PolicyError(
        f"{where_}: {data!r} is not a policy; expected a name, a list of names, "
        "'everything', 'norm_layers', or a mapping with one of the keys "
        f"{', '.join(keys)}{near}"
    )
