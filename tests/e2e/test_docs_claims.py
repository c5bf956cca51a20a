"""Claims of the docs that drift when the code or the packaging changes, checked against
their source: the extras table of docs/install.md against pyproject.toml, every "(N names)"
against ``freezeflow.__all__``, and the "What it supports" tables of the integration pages
against the integration tests that show each feature."""

from __future__ import annotations

import re
import sys

import paths
import pytest

import freezeflow

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, from PyPI
    tomllib = pytest.importorskip("tomli")

DOCS = paths.DOCS
ROOT = paths.ROOT


def table(text: str, header: str) -> list[list[str]]:
    """The rows of the Markdown table whose header line starts with ``header``, as cells."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return rows


def requirement_name(req: str) -> str:
    return re.split(r"[<>=!~;\[ ]", req, maxsplit=1)[0].lower()


def test_the_extras_table_lists_what_pyproject_declares() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"][
        "optional-dependencies"
    ]
    rows = {r[0].strip("`"): r for r in table((DOCS / "install.md").read_text(), "| extra |")}
    assert set(rows) == set(extras), (
        f"docs/install.md's extras table: missing {sorted(set(extras) - set(rows))}, not in "
        f"pyproject.toml {sorted(set(rows) - set(extras))}"
    )
    for name, reqs in extras.items():
        if name == "all":
            (self_ref,) = reqs  # freezeflow[a,b,...]
            bundled = set(re.search(r"\[(.*)\]", self_ref)[1].split(","))  # type: ignore[index]
            said_left_out = set(
                re.findall(r"`(\w+)`", rows[name][1].split("but", 1)[1].split("(")[0])
            )
            assert bundled | said_left_out == set(extras) - {"all"}, rows[name]
            assert not bundled & said_left_out, rows[name]
            continue
        listed = [p.strip() for p in rows[name][1].split(",")]
        assert listed == [requirement_name(r) for r in reqs], (
            f"docs/install.md, extra {name!r}: lists {listed}, pyproject.toml declares {reqs}"
        )


def test_the_pages_count_the_top_level_names_right() -> None:
    n = len(freezeflow.__all__)
    found = []
    for page in sorted(DOCS.rglob("*.md")):
        text = page.read_text(encoding="utf-8")
        assert not re.search(r"about \d+ names", text), f"{page.name}: give the count exactly"
        found += [(page.name, int(k)) for k in re.findall(r"\((\d+) names\)", text)]
    assert found, "docs/design.md no longer counts the top-level names; update this test"
    wrong = [(page, k) for page, k in found if k != n]
    assert not wrong, f"freezeflow.__all__ has {n} names; the pages say {wrong}"


FEATURES = [
    "epoch and step triggers",
    "plateau triggers",
    "`ff.auto`",
    "your LR scheduler",
    "resume",
    "DDP",
    "DeepSpeed, FSDP",
]


@pytest.mark.parametrize("framework", ["lightning", "transformers"])
def test_integration_pages_say_what_each_callback_supports(framework: str) -> None:
    page = DOCS / "integrations" / f"{framework}.md"
    rows = table(page.read_text(encoding="utf-8"), "| feature |")
    assert [r[0] for r in rows] == FEATURES, f"{page.name}: the rows of 'What it supports'"
    tests = (ROOT / "tests" / "integrations" / f"test_{framework}.py").read_text()
    defined = set(re.findall(r"^def (test_\w+)", tests, re.M))
    for feature, supported, how in rows:
        assert supported in ("yes", "no"), (feature, supported)
        named = re.findall(r"`(test_\w+)`", how)
        if supported == "yes":
            assert named, f"{page.name}: '{feature}' is supported; name the test that shows it"
        missing = [t for t in named if t not in defined]
        assert not missing, f"{page.name}: '{feature}' names tests that do not exist: {missing}"
    assert "ff.auto" in page.read_text().split("## ", 1)[0], f"{page.name}: say it up front"
