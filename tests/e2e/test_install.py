"""The package the tests import. Always: the version the code reports is the one its
distribution was built with. With FREEZEFLOW_EXPECT_INSTALLED=1 (``nox -s wheel_tests``,
which installs the built wheel into a fresh environment): the tests, and the subprocesses
the multi-process tests start, import freezeflow from site-packages, never from src/, and the
installed package carries py.typed."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from _two_ranks import package_path
from paths import ROOT

import freezeflow

INSTALLED = os.environ.get("FREEZEFLOW_EXPECT_INSTALLED") == "1"
needs_wheel = pytest.mark.skipif(
    not INSTALLED, reason="FREEZEFLOW_EXPECT_INSTALLED=1 (nox -s wheel_tests) only"
)
PACKAGE = Path(freezeflow.__file__).resolve().parent


def test_version_is_the_distributions() -> None:
    assert freezeflow.__version__ == importlib.metadata.version("freezeflow")


@needs_wheel
def test_the_installed_wheel_is_imported_not_src() -> None:
    site_packages = Path(sysconfig.get_paths()["purelib"]).resolve()
    assert site_packages / "freezeflow" == PACKAGE, f"freezeflow imported from {PACKAGE}"
    assert not PACKAGE.is_relative_to(ROOT / "src")
    assert (ROOT / "src").resolve() not in {Path(p).resolve() for p in sys.path if p}
    direct_url = importlib.metadata.distribution("freezeflow").read_text("direct_url.json")
    assert direct_url is not None, "freezeflow was not installed from a file"
    info = json.loads(direct_url)
    assert info["url"].endswith(".whl"), info
    assert not info.get("dir_info", {}).get("editable", False), info
    assert (PACKAGE / "py.typed").is_file()


@needs_wheel
def test_subprocesses_import_the_installed_wheel_too() -> None:
    """What the multi-process tests' workers import (tests/_two_ranks.py gives them their
    PYTHONPATH), and the command line."""
    env = {**os.environ, "PYTHONPATH": package_path()}
    code = "import freezeflow; print(freezeflow.__file__)"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert Path(out.strip()).resolve().parent == PACKAGE
    version = subprocess.run(
        [sys.executable, "-m", "freezeflow", "--version"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert version.strip() == f"freezeflow {freezeflow.__version__}"
