"""Result numbers come from one source: the benchmark outputs committed in
``benchmarks/results/``, which docs/sources.py turns into the ``{{ key }}`` substitutions the
result pages use. A page that types an accuracy or a time of its own fails here; so does a key
that the sources do not define, or a source table that leaves out a row of its file."""

from __future__ import annotations

import functools
import json
import re
import runpy
from typing import Any

import paths
import pytest

DOCS = paths.DOCS
RESULTS = paths.ROOT / "benchmarks" / "results"

# pages (and, for schedules.md, the section) whose results must all be substitutions
STRICT = {"results.md": None, "index.md": None, "schedules.md": "## ff.auto"}
TYPED = re.compile(r"\b\d+(?:\.\d+)?%|\b\d[\d,]*(?:\.\d+)? s\b")


@functools.cache
def sources() -> dict[str, Any]:
    return runpy.run_path(str(DOCS / "sources.py"))


@functools.cache
def substitutions() -> dict[str, str]:
    return dict(sources()["substitutions"]())


def prose(text: str) -> str:
    """The text outside fenced blocks and substitutions."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    return re.sub(r"\{\{.*?\}\}", "", text)


@pytest.mark.parametrize("page", sorted(STRICT))
def test_result_pages_type_no_number(page: str) -> None:
    text = (DOCS / page).read_text(encoding="utf-8")
    if STRICT[page]:
        text = text.split(STRICT[page], 1)[1].split("\n## ", 1)[0]
    typed = TYPED.findall(prose(text))
    assert not typed, (
        f"docs/{page} types {typed}: take each from benchmarks/results/ through a {{{{ key }}}} "
        "of docs/sources.py"
    )


def test_every_key_the_pages_use_is_defined() -> None:
    used = {
        (page.name, key.strip())
        for page in DOCS.rglob("*.md")
        for key in re.findall(r"\{\{(.*?)\}\}", prose_keep_subs(page.read_text(encoding="utf-8")))
    }
    missing = sorted((p, k) for p, k in used if k not in substitutions())
    assert not missing, f"keys docs/sources.py does not define: {missing}"


def prose_keep_subs(text: str) -> str:
    text = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    return re.sub(r"`[^`]*`", "", text)  # `{{ key }}` in code is an example, not a use


def test_the_auto_table_has_every_row_of_its_file() -> None:
    rows = json.loads((RESULTS / "bench_auto.json").read_text(encoding="utf-8"))
    table = substitutions()["table.auto"].splitlines()[2:]
    assert len(table) == len(rows)
    pct = sources()["pct"]
    for r in rows:
        line = next(t for t in table if t.startswith(f"| {r['task']} |") and r["method"] in t)
        assert pct(r["val_accuracy"]) in line and pct(r["test_accuracy"]) in line, (r, line)


def test_the_demo_numbers_are_its_output() -> None:
    demo = json.loads((RESULTS / "demo" / "offline_transfer.json").read_text(encoding="utf-8"))
    printed = (RESULTS / "demo" / "output.txt").read_text(encoding="utf-8")
    subs = substitutions()
    for recipe in demo:
        final = recipe["stages"][-1]["test_accuracy"]
        assert subs[f"demo.{recipe['name']}.final"] == f"{100 * final:.1f}%"
        # the printed final comparison says the same
        assert re.search(rf"^{recipe['name']}\s+test accuracy\s+{100 * final:.1f}%", printed, re.M)


def test_a_typed_number_is_caught() -> None:
    assert TYPED.findall(prose("ff.auto reached 85.9% in 430 s; {{ auto.lite0.auto.test }}")) == [
        "85.9%",
        "430 s",
    ]
