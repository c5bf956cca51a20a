"""Tests mirror the source (docs/design.md, "a test"): every module under src/freezeflow/
(``__init__.py`` and ``__main__.py`` aside) has its test module,
``tests/<package>/test_<module>.py`` (``tests/test_<module>.py`` for the top-level modules; a
private module keeps its underscore: ``_common.py`` is tested in ``test__common.py``). The
source tree is read when the test runs, so a new module without tests fails here."""

from __future__ import annotations

from pathlib import Path

import paths

SOURCE = paths.ROOT / "src" / "freezeflow"
NOT_MODULES = {"__init__.py", "__main__.py"}


def source_modules() -> list[Path]:
    """Every module of the package, relative to src/freezeflow/."""
    return sorted(
        p.relative_to(SOURCE)
        for p in SOURCE.rglob("*.py")
        if p.name not in NOT_MODULES and "__pycache__" not in p.parts
    )


def where_tested(module: Path) -> Path:
    """Where the tests of ``module`` (relative to src/freezeflow/) live."""
    return paths.TESTS / module.parent / f"test_{module.name}"


def test_the_source_tree_is_found() -> None:
    found = {m.as_posix() for m in source_modules()}
    assert {"errors.py", "core/policy.py", "training/loop.py"} <= found
    assert not found & NOT_MODULES


def test_the_mapping_of_a_module_to_its_tests() -> None:
    assert where_tested(Path("cli.py")) == paths.TESTS / "test_cli.py"
    assert where_tested(Path("core/policy.py")) == paths.TESTS / "core" / "test_policy.py"
    expected = paths.TESTS / "integrations" / "test__common.py"
    assert where_tested(Path("integrations/_common.py")) == expected


def test_every_source_module_has_a_test_module() -> None:
    missing = [
        f"src/freezeflow/{m.as_posix()} -> {where_tested(m).relative_to(paths.ROOT)}"
        for m in source_modules()
        if not where_tested(m).is_file()
    ]
    assert not missing, "modules without a test module:\n  " + "\n  ".join(missing)
