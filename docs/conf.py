"""Sphinx configuration: Markdown pages (MyST) plus an API reference from the docstrings.

Build with ``nox -s docs`` or ``sphinx-build -W --keep-going -b html docs build/docs``.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import freezeflow

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sources

if TYPE_CHECKING:
    from sphinx.application import Sphinx
    from sphinx.environment import BuildEnvironment

project = "freezeflow"
author = "freezeflow developers"
copyright = "freezeflow developers"
release = freezeflow.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "img/*.txt"]

myst_enable_extensions = ["colon_fence", "deflist", "substitution"]
myst_heading_anchors = 3
# {{ key }} in a page: a number or table from the committed benchmark outputs (docs/sources.py)
myst_substitutions = sources.substitutions()

# sphinx-build -n: every reference must resolve. Other packages have no inventory offline (no
# intersphinx), so references into them are not checked; the known gaps inside freezeflow are
# listed, one per line, in nitpick-ignore.txt.
nitpicky = True
nitpick_ignore_regex = [
    (
        r"py:.*",
        r"(torch|collections|contextlib|io|os|pathlib|types|typing|typing_extensions|numpy"
        r"|lightning|transformers|accelerate)(\..+)?",
    ),
    (r"py:class", r"nn\.Module|Module|Optimizer|Tensor|Path|optional|(list\[)?dict\[str"),
]
nitpick_ignore = [
    tuple(line.split(" ", 1))
    for line in (Path(__file__).parent / "nitpick-ignore.txt").read_text().splitlines()
    if line.strip() and not line.startswith("#")
]

# The docstrings are Google style with reStructuredText roles (:func:`freeze`); napoleon
# reads the sections, Sphinx resolves the roles into links.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True  # "Attributes:" as fields, so dataclass fields are not listed twice
napoleon_use_rtype = False
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_typehints_format = "short"
autodoc_preserve_defaults = True
add_module_names = False
default_role = "code"

html_theme = "furo"
html_title = f"freezeflow {release}"
html_static_path = ["_static"]
html_css_files = ["freezeflow.css"]


# --------------------------------------------------------------------------- links by identity
# Each object is documented once, under its namespace (``freezeflow.core.freeze``), but
# docstrings name it as users do (``freezeflow.freeze``) or by a module-relative short name
# (``Run`` in a callback's docstring). When Sphinx finds no target, look the name up, and link
# to wherever that same object is documented.

_DOCUMENTED: dict[int, tuple[object, str]] = {}


def lookup(dotted: str) -> object:
    """The object a dotted name means in Python: ``freezeflow.plan`` is the function, not the
    module ``freezeflow.unfreezer.plan`` that defines it; failing that, the name inside the
    longest module prefix (``freezeflow.unfreezer.plan.Plan``, although
    ``freezeflow.unfreezer.plan`` is also a function)."""
    parts = dotted.split(".")
    try:
        obj: object = importlib.import_module(parts[0])
        for i, attr in enumerate(parts[1:], start=2):
            try:
                obj = getattr(obj, attr)
            except AttributeError:
                obj = importlib.import_module(".".join(parts[:i]))
        return obj
    except (AttributeError, ImportError):
        pass
    for cut in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise LookupError(f"{dotted} does not import")


def _key(obj: object) -> int:
    return id(getattr(obj, "__func__", obj))  # a classmethod is a new bound method each time


def _documented(env: BuildEnvironment) -> dict[int, tuple[object, str]]:
    """id(object) -> (the object, kept alive; the full name it is documented under)."""
    if not _DOCUMENTED:
        for fullname, entry in env.get_domain("py").objects.items():  # type: ignore[attr-defined]
            if entry.aliased:
                continue
            try:
                obj = lookup(fullname)
            except Exception:  # a documented name that does not import: leave it out
                continue
            if inspect.ismodule(obj) or inspect.isclass(obj) or inspect.isroutine(obj):
                _DOCUMENTED.setdefault(_key(obj), (obj, fullname))
    return _DOCUMENTED


def _candidates(node: Any, target: str) -> list[str]:
    module, cls = node.get("py:module"), node.get("py:class")
    found = [target]
    if module and cls:
        found.append(f"{module}.{cls}.{target}")
    if module:
        found.append(f"{module}.{target}")
    return found


def _resolve_by_identity(app: Sphinx, env: BuildEnvironment, node: Any, contnode: Any) -> Any:
    if node.get("refdomain") != "py" or "refdoc" not in node:
        return None
    documented = _documented(env)
    target = node.get("reftarget", "")
    names = []
    for dotted in _candidates(node, target):
        try:
            hit = documented.get(_key(lookup(dotted)))
        except Exception:
            continue
        if hit is not None:
            names.append(hit[1])
            break
    if not names:  # a short name (``Run``): the one documented object whose name ends with it
        names = [full for _, full in documented.values() if full.endswith(f".{target}")]
    if len(names) != 1:
        return None
    domain = env.get_domain("py")
    return domain.resolve_xref(env, node["refdoc"], app.builder, "obj", names[0], node, contnode)


def _forget(app: Sphinx, env: BuildEnvironment) -> None:
    _DOCUMENTED.clear()


def _no_builtin_docstrings(
    app: Sphinx, what: str, name: str, obj: object, options: Any, lines: list[str]
) -> None:
    """A constant or type alias without a docstring of its own would show its type's (``str``'s
    under ``__version__``, ``Union``'s under ``PolicyLike``): drop it, and keep the text the
    API page writes under the directive."""
    if what not in ("data", "attribute") or not lines:
        return
    inherited = inspect.getdoc(type(obj))
    if inherited and "\n".join(lines).strip() == inspect.cleandoc(inherited).strip():
        lines.clear()


def _fix_viewcode_backlinks(app: Sphinx, exception: Exception | None) -> None:
    """viewcode keeps one page and one module name per source file for its "[docs]" links back
    to the API pages: when objects of one file are documented under two namespaces
    (``Callback`` of training/run.py under ``freezeflow.callbacks``, ``Run`` under
    ``freezeflow.training``), some links point at an anchor that does not exist. Point each
    such link at the one API anchor that names the same object
    (``api/training.html#freezeflow.training.Run``), on its page if it is there."""
    if exception is not None or app.builder.format != "html":
        return
    out = Path(app.outdir)
    api = {
        page: set(re.findall(r'id="([^"]+)"', page.read_text(encoding="utf-8")))
        for page in (out / "api").glob("*.html")
    }
    link = re.compile(r'(class="viewcode-back" href=")([^"#]+)#([^"]+)(")')
    for page in (out / "_modules").rglob("*.html"):
        text = page.read_text(encoding="utf-8")

        def fix(m: re.Match[str], page: Path = page) -> str:
            target = (page.parent / m[2]).resolve()
            if m[3] in api.get(target, set()):
                return m[0]
            name = m[3].split(".", 2)[-1]  # freezeflow.<namespace>.<Name[.member]>
            found = [i for i in api.get(target, set()) if i.endswith("." + name)]
            if len(found) != 1:
                found = [
                    f"{os.path.relpath(p, page.parent)}#{i}"
                    for p, ids in api.items()
                    for i in ids
                    if i.endswith("." + name)
                ]
                return f"{m[1]}{found[0]}{m[4]}" if len(found) == 1 else m[0]
            return f"{m[1]}{m[2]}#{found[0]}{m[4]}"

        fixed = link.sub(fix, text)
        if fixed != text:
            page.write_text(fixed, encoding="utf-8")


def setup(app: Sphinx) -> dict[str, object]:
    app.connect("build-finished", _fix_viewcode_backlinks)
    app.connect("env-updated", _forget)
    app.connect("autodoc-process-docstring", _no_builtin_docstrings)
    app.connect("missing-reference", _resolve_by_identity)
    return {"parallel_read_safe": True}
