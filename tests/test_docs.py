"""The documentation keeps up with the code: every public name is documented and has a place
in the API reference, and the figure script runs. (Docstring examples run as doctests in the
test session; the site itself is built, warnings as errors, by `nox -s docs`.)"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import itertools
import pkgutil
import re
import runpy
from pathlib import Path

import pytest

import freezeflow

DOCS = Path(__file__).resolve().parents[1] / "docs"
API = DOCS / "api"

# Public data names (not classes or functions) whose attribute docstring is still missing in
# the source; the API page documents them in prose. Remove a name once its module documents it
# (test_known_undocumented_is_current fails as a reminder).
KNOWN_UNDOCUMENTED: set[str] = set()


def public_names() -> list[str]:
    return [n for n in freezeflow.__all__ if not (n.startswith("__") and n.endswith("__"))]


def attribute_docstrings() -> dict[str, str]:
    """``NAME = value`` followed by a string literal, in every module of the package."""
    found: dict[str, str] = {}
    for info in pkgutil.walk_packages(freezeflow.__path__, "freezeflow."):
        spec = importlib.util.find_spec(info.name)
        if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
            continue
        tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
        body = tree.body
        for stmt, after in itertools.pairwise(body):
            targets: list[ast.expr] = []
            if isinstance(stmt, ast.Assign):
                targets = list(stmt.targets)
            elif isinstance(stmt, ast.AnnAssign):
                targets = [stmt.target]
            doc = (
                after.value.value
                if isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
                else None
            )
            for target in targets:
                if isinstance(target, ast.Name) and doc and doc.strip():
                    found.setdefault(target.id, doc)
    return found


def docstring(name: str) -> str | None:
    obj = getattr(freezeflow, name)
    if inspect.ismodule(obj):
        return obj.__doc__ if obj.__doc__ and obj.__doc__.strip() else None
    if inspect.isclass(obj) or inspect.isroutine(obj):
        own = obj.__dict__.get("__doc__") if inspect.isclass(obj) else obj.__doc__
        return own if isinstance(own, str) and own.strip() else None
    return attribute_docstrings().get(name)


def api_text() -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in sorted(API.glob("*.md")))


@pytest.mark.parametrize("name", public_names())
def test_public_name_has_a_docstring(name: str) -> None:
    if name in KNOWN_UNDOCUMENTED:
        pytest.skip(f"{name}: documented in docs/api prose; its module lacks a docstring")
    assert docstring(name), (
        f"freezeflow.{name} is in freezeflow.__all__ but has no docstring; write one (for a "
        "constant or type alias, a string literal on the line after the assignment)"
    )


def test_known_undocumented_is_current() -> None:
    stale = sorted(n for n in KNOWN_UNDOCUMENTED if n not in freezeflow.__all__ or docstring(n))
    assert not stale, f"remove {stale} from KNOWN_UNDOCUMENTED in tests/test_docs.py"


@pytest.mark.parametrize("name", freezeflow.__all__)
def test_public_name_is_in_the_api_reference(name: str) -> None:
    # an autodoc directive naming it: ".. autofunction:: freezeflow.freeze", or through its
    # module: ".. autodata:: freezeflow.core.policy.ALL"
    directive = re.compile(
        r"^\.\. auto\w+:: freezeflow(\.\w+)*\." + re.escape(name) + r"\s*$", re.MULTILINE
    )
    assert directive.search(api_text()), (
        f"freezeflow.{name} is in freezeflow.__all__ but no page in docs/api/ documents it; "
        f"add '.. autofunction:: freezeflow.{name}' (or autoclass/autodata/autoexception) to "
        "the page where it belongs"
    )


def test_api_reference_names_only_real_objects() -> None:
    names = re.findall(r"^\.\. auto\w+:: (freezeflow[\w.]*)", api_text(), re.MULTILINE)
    assert names
    for dotted in names:
        parts = dotted.split(".")
        for cut in range(len(parts), 0, -1):
            try:
                obj: object = importlib.import_module(".".join(parts[:cut]))
            except ImportError:
                continue
            for attr in parts[cut:]:
                assert hasattr(obj, attr), f"docs/api names {dotted}, which does not exist"
                obj = getattr(obj, attr)
            break


def test_every_api_page_is_in_the_api_toctree() -> None:
    index = (API / "index.md").read_text(encoding="utf-8")
    toctree = index.split("```{toctree}", 1)[1].split("```", 1)[0]
    listed = {line.strip() for line in toctree.splitlines() if line.strip()}
    pages = {p.stem for p in API.glob("*.md")} - {"index"}
    assert pages <= listed, f"add {sorted(pages - listed)} to the toctree of docs/api/index.md"


def test_gen_figures_renders_a_real_plan(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    module = runpy.run_path(str(DOCS / "gen_figures.py"))
    written = module["render"](tmp_path)
    assert sorted(p.name for p in written) == [
        "resnet18_plan.png",
        "resnet18_plan.txt",
        "resnet18_summary.txt",
    ]
    plan = (tmp_path / "resnet18_plan.txt").read_text(encoding="utf-8")
    assert plan.startswith("Plan for ResNet: 3 stage(s)\n")
    assert "[1] layer4: starts at epoch 3" in plan
    assert (tmp_path / "resnet18_plan.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = (tmp_path / "resnet18_summary.txt").read_text(encoding="utf-8")
    assert summary.startswith("ResNet: 513,000 of 11,689,512 parameters trainable")
    for name in ("resnet18_plan.txt", "resnet18_summary.txt"):
        shown = (DOCS / "img" / name).read_text(encoding="utf-8")
        assert shown == (tmp_path / name).read_text(encoding="utf-8"), (
            f"docs/img/{name} is out of date; run python docs/gen_figures.py"
        )
