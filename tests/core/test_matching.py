"""freezeflow.core.matching: globs match within or across dotted components as documented,
and a name matches a parameter by its own name or an enclosing module's path."""

from __future__ import annotations

import pytest
from models import make_net

from freezeflow.core.index import ModelIndex
from freezeflow.core.matching import fullmatch, glob_regex, match_names
from freezeflow.errors import PolicyError


@pytest.mark.parametrize(
    ("pattern", "hits", "misses"),
    [
        ("body.*", ["body.0", "body.1"], ["body.0.conv", "head"]),
        ("body.**", ["body.0", "body.0.conv.weight"], ["body", "stem.0"]),
        ("body.?.bn", ["body.0.bn", "body.1.bn"], ["body.10.bn", "body..bn"]),
        ("body.[!0].bn", ["body.1.bn"], ["body.0.bn", "body...bn"]),
        ("a+b", ["a+b"], ["aab"]),  # everything else is literal
    ],
)
def test_globs(pattern: str, hits: list[str], misses: list[str]) -> None:
    match = fullmatch(glob_regex(pattern))
    assert all(match(h) for h in hits)
    assert not any(match(m) for m in misses)


def test_an_unclosed_class_is_refused_with_a_hint() -> None:
    with pytest.raises(PolicyError, match=r"'body\.\[0' has an unclosed '\['; hint"):
        glob_regex("body.[0")


def test_a_module_path_selects_everything_under_it() -> None:
    net = make_net()
    idx = ModelIndex.build(net)
    hits, by_module = match_names(idx, fullmatch(glob_regex("body.0")))
    assert by_module
    names = {idx.aliases[a] for a in hits}
    assert names == {n for n, _ in net.named_parameters() if n.startswith("body.0.")}
    hits, by_module = match_names(idx, fullmatch(glob_regex("head.weight")))
    assert not by_module and {idx.aliases[a] for a in hits} == {"head.weight"}
