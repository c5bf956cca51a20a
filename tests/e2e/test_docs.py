"""The documentation keeps up with the code: every name in the ``__all__`` of a public
namespace has a docstring and is documented, once, in the API reference; the pages' lists of
top-level names match ``freezeflow.__all__``; and the figure script runs. (Docstring examples
run as doctests in the test session; the site itself is built, warnings as errors, by
`nox -s docs`.)

"Documented" means: an autodoc directive in ``docs/api/*.md`` names the same object (by
identity: ``.. autofunction:: freezeflow.core.freeze`` documents ``ff.freeze`` too), or an
``.. automodule::`` with a bare ``:members:`` option covers it through that module's
``__all__`` (less its ``:exclude-members:``), or a ``:members:`` list names it. Directives with
``:no-index:`` only repeat a module's description and document nothing."""

from __future__ import annotations

import ast
import functools
import importlib
import importlib.util
import inspect
import itertools
import re
import runpy
from dataclasses import dataclass, field, is_dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import faq_messages
import paths
import pytest

import freezeflow

DOCS = paths.DOCS
API = DOCS / "api"

# The public namespaces: `import freezeflow as ff` and what a user reaches through it or
# imports by name. Their `__all__` is the public API. (The integrations need their framework;
# see test_integration_is_documented.)
NAMESPACES = (
    "freezeflow",
    "freezeflow.core",
    "freezeflow.schedules",
    "freezeflow.presets",
    "freezeflow.unfreezer",
    "freezeflow.training",
    "freezeflow.callbacks",
    "freezeflow.distributed",
    "freezeflow.compile",
    "freezeflow.errors",
    "freezeflow.cli",
)
INTEGRATIONS = {
    "freezeflow.integrations.lightning": "lightning",
    "freezeflow.integrations.transformers": "transformers",
}

# "namespace.NAME" of public data (a type alias, a constant) whose module still lacks the
# string literal after its assignment; its API page describes it in the directive's body.
# Remove an entry once the module documents it (test_known_undocumented_is_current fails as a
# reminder).
KNOWN_UNDOCUMENTED: set[str] = set()


def public_names(namespace: str) -> list[str]:
    module = importlib.import_module(namespace)
    return [n for n in module.__all__ if not (n.startswith("__") and n.endswith("__"))]


def every_public_name() -> list[tuple[str, str]]:
    return [(ns, n) for ns in NAMESPACES for n in public_names(ns)]


def lookup(dotted: str) -> object:
    """The object a dotted name means in Python, resolved as the docs build resolves it
    (``lookup`` in docs/conf.py): ``freezeflow.plan`` is the function, not the module."""
    return _conf()["lookup"](dotted)


@functools.cache
def _conf() -> dict[str, Any]:
    """The names docs/conf.py defines (read once)."""
    return runpy.run_path(str(DOCS / "conf.py"))


# --------------------------------------------------------------------------- docstrings


def module_source(module: str) -> ast.Module:
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin is not None, module
    return ast.parse(Path(spec.origin).read_text(encoding="utf-8"))


def attribute_docstring(module: str, name: str) -> str | None:
    """The string literal after ``NAME = value`` in the module that defines ``name``, following
    ``from X import NAME`` re-exports from ``module`` on."""
    body = module_source(module).body
    for stmt, after in itertools.pairwise([*body, ast.Pass()]):
        targets: list[ast.expr] = []
        if isinstance(stmt, ast.Assign):
            targets = list(stmt.targets)
        elif isinstance(stmt, ast.AnnAssign):
            targets = [stmt.target]
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            if (
                isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
                and after.value.value.strip()
            ):
                return after.value.value
            return None
        if (
            isinstance(stmt, ast.ImportFrom)
            and stmt.module
            and stmt.level == 0
            and any((a.asname or a.name) == name for a in stmt.names)
        ):
            return attribute_docstring(stmt.module, name)
    return None


def docstring(namespace: str, name: str) -> str | None:
    obj = getattr(importlib.import_module(namespace), name)
    if inspect.ismodule(obj) or inspect.isroutine(obj):
        doc = obj.__doc__
    elif inspect.isclass(obj):
        doc = obj.__dict__.get("__doc__")
        # a dataclass without a docstring gets its signature as __doc__
        if is_dataclass(obj) and isinstance(doc, str) and doc.startswith(f"{obj.__name__}("):
            doc = None
    else:
        doc = attribute_docstring(namespace, name)
    return doc if isinstance(doc, str) and doc.strip() else None


@pytest.mark.parametrize(("namespace", "name"), every_public_name())
def test_public_name_has_a_docstring(namespace: str, name: str) -> None:
    if f"{namespace}.{name}" in KNOWN_UNDOCUMENTED:
        pytest.skip(f"{namespace}.{name}: described on its API page; its module lacks a docstring")
    assert docstring(namespace, name), (
        f"{namespace}.{name} is in {namespace}.__all__ but has no docstring; write one (for a "
        "constant or type alias, a string literal on the line after the assignment)"
    )


def test_known_undocumented_is_current() -> None:
    stale = sorted(
        q
        for q in KNOWN_UNDOCUMENTED
        if q.rpartition(".")[2] not in public_names(q.rpartition(".")[0])
        or docstring(*q.rsplit(".", 1))
    )
    assert not stale, f"remove {stale} from KNOWN_UNDOCUMENTED in tests/test_docs.py"


# --------------------------------------------------------------------------- the API pages


@dataclass
class Directive:
    page: str
    kind: str  # "automodule", "autoclass", ...
    target: str
    options: dict[str, str] = field(default_factory=dict)

    def names(self, option: str) -> list[str]:
        return [n for n in re.split(r"[\s,]+", self.options.get(option, "")) if n]


def directives() -> list[Directive]:
    """Every autodoc directive of docs/api, with its options (``:members: a, b`` may continue
    on more indented lines)."""
    found: list[Directive] = []
    for page in sorted(API.glob("*.md")):
        current: Directive | None = None
        option = ""
        for line in page.read_text(encoding="utf-8").splitlines():
            head = re.match(r"^\.\. (auto\w+):: (\S+)\s*$", line)
            if head:
                current = Directive(page.name, head[1], head[2])
                found.append(current)
                option = ""
                continue
            opt = re.match(r"^\s+:([\w-]+):\s*(.*)$", line)
            if current is not None and opt:
                option = opt[1]
                current.options[option] = opt[2].strip()
            elif current is not None and option and re.match(r"^\s{4,}\S", line):
                current.options[option] += " " + line.strip()
            else:
                current, option = None, ""
    return found


def documented_objects() -> list[tuple[object, str]]:
    """(object, where) for everything the API pages document, once per directive or member."""
    out: list[tuple[object, str]] = []
    for d in directives():
        if "no-index" in d.options:
            continue
        obj = lookup(d.target)
        out.append((obj, f"{d.page}: {d.kind} {d.target}"))
        if d.kind != "automodule" or "members" not in d.options:
            continue
        assert isinstance(obj, ModuleType)
        listed = d.names("members") or list(getattr(obj, "__all__", []))
        skipped = set(d.names("exclude-members"))
        out.extend(
            (getattr(obj, n), f"{d.page}: automodule {d.target} :members: {n}")
            for n in listed
            if n not in skipped
        )
    return out


def is_documented(obj: object) -> bool:
    return any(o is obj for o, _ in documented_objects())


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_every_public_name_is_in_the_api_reference(namespace: str) -> None:
    module = importlib.import_module(namespace)
    documented = [o for o, _ in documented_objects()]
    missing = [n for n in module.__all__ if not any(o is getattr(module, n) for o in documented)]
    assert not missing, (
        f"{missing} from {namespace}.__all__ are in no page of docs/api/; add an autodoc "
        f"directive ('.. autofunction:: {namespace}.{missing[0]}', autoclass, autodata, "
        "autoexception) to the page of its namespace, or let an automodule with :members: cover "
        "it"
    )


@pytest.mark.parametrize("module", sorted(INTEGRATIONS))
def test_integration_is_documented(module: str) -> None:
    pytest.importorskip(INTEGRATIONS[module])
    mod = importlib.import_module(module)
    assert mod.__all__
    for name in mod.__all__:
        obj = getattr(mod, name)
        assert inspect.getdoc(obj), f"{module}.{name} has no docstring"
        assert is_documented(obj), f"{module}.{name} is in no page of docs/api/"


def test_each_object_is_documented_once() -> None:
    seen: dict[int, str] = {}
    twice = []
    for obj, where in documented_objects():
        if isinstance(obj, str):  # __version__
            continue
        if id(obj) in seen:
            twice.append(f"{where} (also {seen[id(obj)]})")
        seen.setdefault(id(obj), where)
    assert not twice, (
        f"documented twice: {twice}; document an object under one namespace and leave it out of "
        "the others (:exclude-members:)"
    )


def test_api_reference_names_only_real_objects() -> None:
    found = directives()
    assert found
    for d in found:
        obj = lookup(d.target)  # raises for a name that does not exist
        for name in d.names("members") + d.names("exclude-members"):
            if d.kind == "automodule":
                assert hasattr(obj, name), f"docs/api/{d.page} names {d.target}.{name}"


def listed_top_level(text: str) -> set[str]:
    """``ff.X`` as code, or as a link to it ({py:obj}`ff.X <freezeflow.X>`)."""
    return set(re.findall(r"`ff\.(\w+)(?: <freezeflow\.\1>)?`", text))


def test_the_api_index_lists_exactly_the_top_level_names() -> None:
    index = (API / "index.md").read_text(encoding="utf-8")
    section = index.split("## Top-level names", 1)[1].split("```", 1)[0]
    listed = listed_top_level(section)
    expected = set(freezeflow.__all__)
    assert listed == expected, (
        f"docs/api/index.md, 'Top-level names': missing {sorted(expected - listed)}, not "
        f"top-level {sorted(listed - expected)}"
    )


@pytest.mark.parametrize("namespace", [ns for ns in NAMESPACES if ns != "freezeflow"])
def test_namespace_page_says_which_names_are_top_level(namespace: str) -> None:
    page = API / f"{namespace.rsplit('.', 1)[1]}.md"
    assert page.exists(), f"{namespace} has no page docs/api/{page.name}"
    text = page.read_text(encoding="utf-8")
    module = importlib.import_module(namespace)
    expected = {
        n
        for n in module.__all__
        if n in freezeflow.__all__ and getattr(freezeflow, n) is getattr(module, n)
    }
    said = re.search(r"^\*\*Also top-level:?\*\*.*?(?=\n\n|\Z)", text, re.M | re.S)
    if not expected:
        assert said is None or not listed_top_level(said[0]), f"{page.name}: none is top-level"
        return
    assert said, f"docs/api/{page.name} needs a '**Also top-level:** `ff.X`, ...' paragraph"
    listed = listed_top_level(said[0])
    assert listed == expected, (
        f"docs/api/{page.name}, 'Also top-level': missing {sorted(expected - listed)}, not "
        f"top-level here {sorted(listed - expected)}"
    )


def test_every_api_page_is_in_the_api_toctree() -> None:
    index = (API / "index.md").read_text(encoding="utf-8")
    toctree = index.split("```{toctree}", 1)[1].split("```", 1)[0]
    listed = {line.strip() for line in toctree.splitlines() if line.strip()}
    pages = {p.stem for p in API.glob("*.md")} - {"index"}
    assert pages <= listed, f"add {sorted(pages - listed)} to the toctree of docs/api/index.md"


# --------------------------------------------------------------------------- figures


def test_gen_figures_renders_a_real_plan(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    module = runpy.run_path(str(DOCS / "gen_figures.py"))
    written = module["render"](tmp_path)
    assert sorted(p.name for p in written) == [
        "auto_time_to_accuracy.png",
        "resnet18_plan.png",
        "resnet18_plan.txt",
        "resnet18_summary.txt",
    ]
    plan = (tmp_path / "resnet18_plan.txt").read_text(encoding="utf-8")
    assert plan.startswith("Plan for ResNet: 3 stage(s)\n")
    assert "[1] layer4: starts at epoch 3" in plan
    for png in ("resnet18_plan.png", "auto_time_to_accuracy.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = (tmp_path / "resnet18_summary.txt").read_text(encoding="utf-8")
    assert summary.startswith("ResNet: 513,000 of 11,689,512 parameters trainable")
    for name in ("resnet18_plan.txt", "resnet18_summary.txt"):
        shown = (DOCS / "img" / name).read_text(encoding="utf-8")
        assert shown == (tmp_path / name).read_text(encoding="utf-8"), (
            f"docs/img/{name} is out of date; run python docs/gen_figures.py"
        )


def faq_message_blocks() -> list[str]:
    """The bodies of the FAQ's message blocks (```` ```{code-block} text ```` with the class
    ``ff-message``), each a literal block, so Markdown changes nothing in them."""
    text = (DOCS / "faq.md").read_text(encoding="utf-8")
    return re.findall(
        r"^```\{code-block\} text\n:class: ff-message\n\n(.*?)\n```$", text, re.M | re.S
    )


@pytest.mark.parametrize("case", sorted(faq_messages.MESSAGES))
def test_the_faq_quotes_the_real_messages(case: str) -> None:
    # "Things freezeflow refuses or warns about" quotes each message as the misuse makes it
    message = faq_messages.MESSAGES[case]()
    assert message in faq_message_blocks(), (
        f"{case}: docs/faq.md has no message block with\n{message}\n(a block: ```{{code-block}} "
        "text, then ':class: ff-message', a blank line, the message, ```)"
    )


def test_every_faq_message_block_is_a_raised_message() -> None:
    raised = {make() for make in faq_messages.MESSAGES.values()}
    blocks = faq_message_blocks()
    assert len(blocks) == len(faq_messages.MESSAGES)
    assert [b for b in blocks if b not in raised] == []
