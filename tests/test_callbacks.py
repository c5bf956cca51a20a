"""freezeflow.callbacks, the facade ``ff.callbacks``: it re-exports the callbacks that
freezeflow.training defines (the same objects), defines nothing of its own, and nothing in the
library imports it (docs/design.md, "the facades"). The callbacks themselves are tested in
tests/training/."""

from __future__ import annotations

import ast
import importlib

import paths

import freezeflow as ff
import freezeflow.callbacks as facade
import freezeflow.training as training
from freezeflow.training.run import Callback

SOURCE = paths.ROOT / "src" / "freezeflow"


def test_ff_callbacks_is_the_facade() -> None:
    assert ff.callbacks is facade


def test_every_name_is_a_callback_class_of_training() -> None:
    assert facade.__all__ == sorted(facade.__all__)
    assert "Callback" in facade.__all__
    for name in facade.__all__:
        cls = getattr(facade, name)
        assert cls.__module__.startswith("freezeflow.training."), name
        assert getattr(importlib.import_module(cls.__module__), name) is cls, name
        assert isinstance(cls, type) and issubclass(cls, Callback), name


def test_it_defines_nothing_of_its_own() -> None:
    public = {n for n in vars(facade) if not n.startswith("_")}
    assert public == set(facade.__all__)


def test_the_callbacks_training_exports_are_all_here() -> None:
    """A user finds every callback ``freezeflow.training`` exports in ``ff.callbacks``."""
    callbacks = {
        name
        for name in training.__all__
        if isinstance(obj := getattr(training, name), type) and issubclass(obj, Callback)
    }
    assert callbacks <= set(facade.__all__)


def test_nothing_in_the_library_imports_it() -> None:
    found = []
    for path in SOURCE.rglob("*.py"):
        if path.parent == SOURCE and path.name in ("__init__.py", "cli.py", "callbacks.py"):
            continue  # the package root re-exports the namespaces; cli stands above
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            if any(n == "freezeflow.callbacks" for n in names):
                found.append(path.relative_to(SOURCE).as_posix())
    assert not found
