"""Where things are, for tests in any folder under tests/: the repository root, the tests
folder (where the worker scripts and shared helpers live), docs/ and examples/."""

from __future__ import annotations

from pathlib import Path

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
DOCS = ROOT / "docs"
EXAMPLES = ROOT / "examples"
README = ROOT / "README.md"
