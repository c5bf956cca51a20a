"""freezeflow.zoo.report: result files, the generated part of docs/model-zoo.md, and the
committed page against the committed results."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from paths import ROOT

from freezeflow.zoo.report import BEGIN, END, load, render, result, write_page

RESULTS = ROOT / "docs" / "zoo"
PAGE = ROOT / "docs" / "model-zoo.md"


def records() -> list[dict[str, Any]]:
    return [
        {"zoo": "timm", "name": "a", "status": "agree", "model": "A", "blocks": 5},
        {"zoo": "timm", "name": "b", "status": "disagree", "model": "B", "blocks": 9,
         "reference": 7, "reason": "block x straddles timm groups y, z"},
        {"zoo": "timm", "name": "c", "status": "build_error", "reason": "TypeError: no"},
        {"zoo": "timm", "name": "d", "status": "agree", "model": "D", "blocks": 4,
         "boundary": "norm5"},
    ]  # fmt: skip


def test_a_result_holds_the_run_and_its_sorted_records() -> None:
    data = result("timm", list(reversed(records())), sample=False)
    assert [r["name"] for r in data["records"]] == ["a", "b", "c", "d"]
    assert {"torch", "timm", "transformers"} <= set(data["versions"])
    assert data["date"] and data["sample"] is False


def test_render_gives_totals_and_every_disagreement_with_its_reason() -> None:
    text = render([result("timm", records(), sample=False)])
    assert "2 of 3 measured agree (**66.7%**, misses the 97% target)" in text
    assert "| `b` | B | 9 | 7 | block x straddles timm groups y, z |" in text
    assert "`c`: build error: TypeError: no" in text
    assert "`a`" not in text  # agreements are counted, not listed
    # but an agreement the comparison did not hold to everything is listed apart, with why
    assert "Of the agreements, 1 place a pretrained layer" in text
    assert "- `d` (D): `norm5`" in text


def test_write_page_replaces_only_what_lies_between_the_markers(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(f"# Title\n\n{BEGIN}\nold\n{END}\n\nafter\n")
    data = [result("timm", records(), sample=True)]
    write_page(page, data)
    once = page.read_text()
    write_page(page, data)
    assert page.read_text() == once  # idempotent
    assert once.startswith("# Title\n\n" + BEGIN) and once.endswith(END + "\n\nafter\n")
    assert "old" not in once and "evenly spread sample" in once


def test_the_page_shows_the_committed_results() -> None:
    files = [RESULTS / f"{z}.json" for z in ("timm", "transformers")]
    assert all(f.is_file() for f in files), "run python -m freezeflow.zoo"
    text = PAGE.read_text()
    expected = render([load(f) for f in files])
    assert text[text.index(BEGIN) + len(BEGIN) : text.index(END)] == expected, (
        "docs/model-zoo.md is stale: run python -m freezeflow.zoo --page-only"
    )
    for f in files:  # the results are what the page says they are: JSON, one record a name
        data = json.loads(f.read_text())
        assert len({r["name"] for r in data["records"]}) == len(data["records"])
