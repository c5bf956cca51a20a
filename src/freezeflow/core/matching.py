"""Matching names against a model's parameters and modules: globs (``*`` within a dotted
component, ``**`` across them) and regular expressions, for :func:`~freezeflow.core.policy.name`
and :func:`~freezeflow.core.selectors.regex`."""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache

from freezeflow.core.index import ModelIndex
from freezeflow.errors import PolicyError

__all__ = ["fullmatch", "glob_regex", "match_names"]


@lru_cache(maxsize=512)
def glob_regex(pattern: str) -> re.Pattern[str]:
    """``*`` matches within one dotted component, ``**`` across components, ``?`` one
    character, ``[...]`` a character class."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if c == "*":
            out.append("[^.]*")
        elif c == "?":
            out.append("[^.]")
        elif c == "[":
            end = pattern.find("]", i + 1)
            if end == -1:
                raise PolicyError(
                    f"glob pattern {pattern!r} has an unclosed '['; hint: escape it as [[] or "
                    "use regex()"
                )
            body = pattern[i + 1 : end]
            if body.startswith("!"):
                body = "^." + body[1:]  # like '?', a negated class never matches the dot
            out.append(f"[{body}]")
            i = end + 1
            continue
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out))


def fullmatch(rx: re.Pattern[str]) -> Callable[[str], bool]:
    """A test of whether ``rx`` matches a whole name."""
    return lambda s: rx.fullmatch(s) is not None


def match_names(idx: ModelIndex, match: Callable[[str], bool]) -> tuple[set[int], bool]:
    """Aliases whose own name, or the path of a module enclosing them, matches."""
    modules = {path for path in idx.modules if path and match(path)}
    hits = set()
    for a, alias in enumerate(idx.aliases):
        if match(alias) or any(m in modules for m in idx.ancestors(a)):
            hits.add(a)
    return hits, bool(modules)
