"""Check the built sdist and wheel before they are published (``nox -s build`` runs it).

    python tools/check_dist.py [DIST_DIR]     # default: dist/

DIST_DIR must hold exactly one wheel and one sdist of this project's version. The wheel must
hold the package, every file of ``src/freezeflow`` (``py.typed`` included) and its metadata,
and nothing else: no tests, no docs, no examples or data, no caches. The sdist must hold the
package, the tests and the project files, and no build, environment or cache folders. Each
failure is printed as one line saying what is wrong and what to change; the exit status is 1
when there is any.
"""

from __future__ import annotations

import re
import sys
import tarfile
import zipfile
from email.parser import Parser
from pathlib import Path, PurePosixPath

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "freezeflow"
SRC = ROOT / "src" / PACKAGE

# Folders that are never part of a distribution: environments, caches and build outputs.
JUNK_DIRS = {
    ".nox",
    ".venv",
    ".git",
    ".ci",
    "__pycache__",
    ".pytest_cache",
    ".mypy_cache",
    ".ruff_cache",
    ".hypothesis",
    ".ipynb_checkpoints",
    "build",
    "dist",
    "runs",
    "checkpoints",
    "lightning_logs",
    "output",
}
JUNK_SUFFIXES = {".pyc", ".pyo", ".pt", ".ckpt", ".egg-info"}
# What a wheel may not carry besides code: data and documents.
DATA_SUFFIXES = {
    ".zip",
    ".tar",
    ".gz",
    ".npz",
    ".npy",
    ".pt",
    ".pth",
    ".ckpt",
    ".safetensors",
    ".png",
    ".jpg",
    ".jpeg",
    ".ipynb",
    ".md",
    ".rst",
}


def project_version() -> str:
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    found = re.search(r'^version = "([^"]+)"$', text, re.M)
    if found is None:
        raise SystemExit('check_dist: pyproject.toml has no `version = "..."` line')
    return found.group(1)


def source_files() -> set[str]:
    """The package's files as they should appear in an archive (``freezeflow/...``)."""
    return {
        f"{PACKAGE}/{p.relative_to(SRC).as_posix()}"
        for p in SRC.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix not in JUNK_SUFFIXES
    }


def junk(path: str) -> str | None:
    """Why ``path`` (inside an archive) is junk, or None."""
    parts = PurePosixPath(path).parts
    for part in parts[:-1]:
        if part in JUNK_DIRS or part.endswith(".egg-info"):
            return f"a {part}/ folder"
    suffix = PurePosixPath(path).suffix
    if suffix in JUNK_SUFFIXES and not (suffix == ".pt" and path.startswith("tests/data/")):
        return f"a {suffix} file"
    return None


def check_wheel(wheel: Path, version: str) -> tuple[list[str], list[str]]:
    """Problems with the wheel, and its file list."""
    problems = []
    with zipfile.ZipFile(wheel) as z:
        names = [n for n in z.namelist() if not n.endswith("/")]
        dist_info = f"{PACKAGE}-{version}.dist-info"
        metadata = Parser().parsestr(z.read(f"{dist_info}/METADATA").decode())
        entry_points = z.read(f"{dist_info}/entry_points.txt").decode()
    package = {n for n in names if n.startswith(f"{PACKAGE}/")}
    for n in names:
        top = n.split("/", 1)[0]
        if top not in (PACKAGE, dist_info):
            problems.append(
                f"wheel: {n} lies outside the package ({top}/ would be installed into "
                "site-packages): [tool.hatch.build.targets.wheel] must list only src/freezeflow"
            )
        elif why := junk(n):
            problems.append(f"wheel: {n} is {why}: clean src/ or exclude it from the wheel")
        elif top == PACKAGE and PurePosixPath(n).suffix in DATA_SUFFIXES:
            problems.append(f"wheel: {n} is data or a document; it belongs outside src/")
        elif top == PACKAGE and re.search(
            r"(^|/)(tests?/|testing/|test_[^/]*\.py$|conftest\.py$)", n
        ):
            problems.append(f"wheel: {n} is a test; tests live in tests/, not in the package")
    if f"{PACKAGE}/py.typed" not in package:
        problems.append(
            f"wheel: {PACKAGE}/py.typed is missing: type checkers would ignore the package's "
            "annotations (the file must exist in src/freezeflow and be included)"
        )
    missing = sorted(source_files() - package)
    if missing:
        problems.append(f"wheel: files of src/{PACKAGE} are missing: {', '.join(missing)}")
    if metadata["Name"] != PACKAGE or metadata["Version"] != version:
        problems.append(
            f"wheel: METADATA says {metadata['Name']} {metadata['Version']}, expected "
            f"{PACKAGE} {version}"
        )
    if not any(r.startswith("torch") for r in metadata.get_all("Requires-Dist") or []):
        problems.append("wheel: METADATA has no Requires-Dist on torch")
    if f"{PACKAGE} = {PACKAGE}.cli:main" not in entry_points:
        problems.append(f"wheel: the `{PACKAGE}` console script is missing from entry_points.txt")
    if not any(n.startswith(f"{dist_info}/licenses/LICENSE") for n in names):
        problems.append("wheel: the LICENSE file is missing from the dist-info folder")
    return problems, names


def check_sdist(sdist: Path, version: str) -> tuple[list[str], list[str]]:
    """Problems with the sdist, and its file list (relative to its top folder)."""
    problems = []
    top = f"{PACKAGE}-{version}"
    with tarfile.open(sdist) as t:
        members = [m for m in t.getmembers() if m.isfile()]
    names = []
    for m in members:
        if not m.name.startswith(f"{top}/"):
            problems.append(f"sdist: {m.name} lies outside the top folder {top}/")
            continue
        names.append(m.name[len(top) + 1 :])
    for n in names:
        if why := junk(n):
            problems.append(
                f"sdist: {n} is {why}: [tool.hatch.build.targets.sdist] in pyproject.toml "
                "must leave it out"
            )
        elif n.endswith(".zip"):
            problems.append(f"sdist: {n} is the demo's data; the sdist leaves it out")
    required = {"pyproject.toml", "README.md", "LICENSE", "PKG-INFO", f"src/{PACKAGE}/py.typed"}
    required |= {f"src/{f}" for f in source_files()}
    missing = sorted(required - set(names))
    if missing:
        problems.append(f"sdist: missing {', '.join(missing)}")
    if not any(n.startswith("tests/") and n.endswith(".py") for n in names):
        problems.append("sdist: the tests are missing (tests/)")
    return problems, names


def main(argv: list[str]) -> int:
    dist = Path(argv[0]) if argv else ROOT / "dist"
    version = project_version()
    wheels = sorted(dist.glob("*.whl"))
    sdists = sorted(dist.glob("*.tar.gz"))
    expected_wheel = f"{PACKAGE}-{version}-py3-none-any.whl"
    expected_sdist = f"{PACKAGE}-{version}.tar.gz"
    if [w.name for w in wheels] != [expected_wheel] or [s.name for s in sdists] != [expected_sdist]:
        print(
            f"check_dist: {dist} must hold exactly {expected_wheel} and {expected_sdist}; "
            f"it holds {[p.name for p in wheels + sdists]} (empty it and build again)"
        )
        return 1
    wheel_problems, wheel_names = check_wheel(wheels[0], version)
    sdist_problems, sdist_names = check_sdist(sdists[0], version)
    problems = wheel_problems + sdist_problems
    tops = sorted({n.split("/", 1)[0] for n in sdist_names})
    typed = "with" if f"{PACKAGE}/py.typed" in wheel_names else "WITHOUT"
    print(
        f"check_dist: {wheels[0].name}: {len(wheel_names)} files "
        f"({wheels[0].stat().st_size / 1e3:.0f} kB), {typed} {PACKAGE}/py.typed\n"
        f"check_dist: {sdists[0].name}: {len(sdist_names)} files "
        f"({sdists[0].stat().st_size / 1e3:.0f} kB): {', '.join(tops)}"
    )
    for p in problems:
        print(f"check_dist: FAIL {p}")
    if problems:
        return 1
    print("check_dist: OK (wheel: the package and its metadata only; sdist: no build junk)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
