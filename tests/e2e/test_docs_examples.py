"""The docs' code prints what the pages show: every page with an output block (``% output``
or ``% run`` before a fence, see docs/examples.py) runs its Python blocks in order, and each
output block must be what they printed. The landing page's example runs too (on a few random
images standing in for the reader's data). ``python docs/examples.py --update`` rewrites the
shown output after a deliberate change. The runs are marked slow (``nox -s slow``);
``nox -s docs`` runs this whole file."""

from __future__ import annotations

import functools
import runpy
from pathlib import Path
from typing import Any

import paths
import pytest

DOCS = paths.DOCS


@functools.cache
def tool() -> dict[str, Any]:
    return runpy.run_path(str(DOCS / "examples.py"))


@functools.cache
def run(page: str) -> list[Any]:
    return list(tool()["run_page"](DOCS / page))


def executed() -> list[str]:
    return [p.relative_to(DOCS).as_posix() for p in tool()["executed_pages"]()]


def test_the_pages_that_show_output_are_found() -> None:
    # the pages this check was written for; more may join
    assert {"quickstart.md", "integrations/lightning.md"} <= set(executed())


@pytest.mark.slow  # a minute or two (Lightning, transformers, ResNet18); nox -s docs runs it
@pytest.mark.parametrize("page", executed())
def test_shown_output_is_what_the_code_prints(page: str) -> None:
    shown = run(page)
    assert shown, f"docs/{page} has no output block"
    for s in shown:
        assert s.ok, (
            f"docs/{page}:{s.line} shows\n{s.shown}\nbut the code printed\n{s.printed}\n"
            "(python docs/examples.py --update rewrites it)"
        )


@pytest.mark.slow
def test_the_landing_page_example_runs() -> None:
    pytest.importorskip("torchvision")
    assert run("index.md") == []  # no output block; it must run without an error
    text = (DOCS / "index.md").read_text(encoding="utf-8")
    (block,) = [b for b in tool()["blocks"](text) if b.info == "python"]
    assert len([line for line in block.body if line.strip()]) <= 10, "ten lines, not more"


def test_an_output_that_differs_is_reported(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text('```python\nprint("it prints this")\n```\n\n% output\n```text\nnot this\n```\n')
    (s,) = tool()["run_page"](page)
    assert not s.ok
    assert s.printed == "it prints this\n"
