"""Developer sessions. `nox -s tests` is the README's test command; CI runs every session
listed in .ci/run.

Every session that needs torch shares ONE environment, `.nox/_torch` (torch's build is ~5 GB:
one copy per clone instead of one per session). Each session says which extras and
dependency groups it needs; what is missing is installed into the shared environment, once
(a stamp file per requirement set remembers it, keyed on pyproject.toml and the torch pins).
Torch is pinned to the release that lies on this project's build machines (pip takes it from
local disk); users get the range declared in pyproject.toml. `lint` needs no torch and keeps a
small environment of its own, and so does `build` (the sdist and wheel, checked).
`wheel_tests` is the exception: it installs the built wheel, torch with the same pins, into
a fresh environment of its own and runs the tests against it, then deletes that environment.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from pathlib import Path

import nox

nox.options.default_venv_backend = "virtualenv"
nox.options.sessions = ["lint", "typecheck", "tests"]

TORCH = ("torch==2.14.1", "torchvision==0.29.1")
PYPROJECT = nox.project.load_toml("pyproject.toml")
ROOT = Path(__file__).resolve().parent
SHARED = ROOT / ".nox" / "_torch"
ALL_EXTRAS = "examples,lightning,transformers,yaml,plot,progress"


def group(name: str) -> list[str]:
    return list(nox.project.dependency_groups(PYPROJECT, name))


def torch_env(
    session: nox.Session, extras: str = ALL_EXTRAS, groups: tuple[str, ...] = ("test",)
) -> dict[str, str]:
    """Make sure the shared environment holds torch, the project with ``extras`` and the
    dependency ``groups``; return the environment variables that run its tools."""
    bindir = SHARED / "bin"
    python = bindir / "python"
    if not python.exists():
        base = shutil.which("python3.11") or sys.executable
        session.run(base, "-m", "venv", str(SHARED), external=True)
    key = hashlib.sha256(
        (ROOT / "pyproject.toml").read_bytes() + repr((TORCH, extras, groups)).encode()
    ).hexdigest()[:16]
    stamp = SHARED / f".installed-{key}"
    if not stamp.exists():
        pip = (str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check")
        session.run(*pip, *TORCH, external=True)
        deps = [d for g in groups for d in group(g)]
        session.run(*pip, "-e", f".[{extras}]", *deps, external=True)
        stamp.touch()
    return {
        "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",
        "VIRTUAL_ENV": str(SHARED),
        "OMP_NUM_THREADS": "2",
    }


def tool(name: str) -> str:
    """A program of the shared environment."""
    return str(SHARED / "bin" / name)


@nox.session(venv_backend="none")
def tests(session: nox.Session) -> None:
    """Unit tests and doctests (everything not marked slow)."""
    env = torch_env(session)
    session.run(
        tool("pytest"),
        "-m",
        "not slow",
        "--doctest-modules",
        "src/freezeflow",
        "tests",
        *session.posargs,
        env=env,
        external=True,
    )


# glibc returns large freed blocks to the kernel at once; on these machines that made CPU
# convolutions 2-3x slower (see docs/benchmarks.md). Only the demo and benchmarks set it.
FAST_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "4000000000", "MALLOC_TRIM_THRESHOLD_": "4000000000"}


@nox.session(venv_backend="none")
def demo(session: nox.Session) -> None:
    """The main job: the offline fine-tuning demo (the classic tutorial recipe vs freezeflow)
    on the shipped CIFAR-10 subset. Extra arguments go to examples/offline_transfer.py."""
    env = torch_env(session, "examples", ())
    session.run(
        tool("python"),
        "examples/offline_transfer.py",
        *session.posargs,
        env={**env, **FAST_MALLOC},
        external=True,
    )


@nox.session(venv_backend="none")
def examples(session: nox.Session) -> None:
    """Run the examples as users would: the notebook (offline mode) and the Keras recipe."""
    env = torch_env(session)
    session.run(
        tool("jupytext"),
        "--to",
        "ipynb",
        "--execute",
        "--output",
        "build/resnet18_cifar10.ipynb",
        "examples/resnet18_cifar10.py",
        env=env,
        external=True,
    )
    session.run(tool("python"), "examples/keras_resnet50_recipe.py", env=env, external=True)


@nox.session(venv_backend="none")
def slow(session: nox.Session) -> None:
    """Tests marked slow (subprocess resume, kill trials, the reduced demo...)."""
    env = torch_env(session)
    session.run(tool("pytest"), "-m", "slow", "tests", *session.posargs, env=env, external=True)


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    """ruff check, ruff format --check, and the import-linter contracts of the layers
    (pyproject.toml; docs/design.md). Needs no torch: import-linter reads the source."""
    session.install(*group("lint"))
    paths = [
        "src",
        "tests",
        "examples",
        "benchmarks",
        "docs/conf.py",
        "docs/gen_figures.py",
        "noxfile.py",
        "tools",
    ]
    session.run("ruff", "check", *paths)
    session.run("ruff", "format", "--check", *paths)
    session.run("lint-imports", env={"PYTHONPATH": str(ROOT / "src")})


@nox.session(venv_backend="none")
def typecheck(session: nox.Session) -> None:
    """mypy --strict on src/ and tests/."""
    env = torch_env(session, groups=("test", "typecheck"))
    session.run(tool("mypy"), "src", "tests", env=env, external=True)


@nox.session(venv_backend="none")
def docs(session: nox.Session) -> None:
    """The documentation site into build/docs, checked: the figures rendered, the pages'
    printed output, claims and numbers against their sources (tests/e2e/test_docs*.py), the
    build with warnings and unresolved references as errors (-W -n), its internal links and
    the FAQ's messages as rendered, then every page in headless Chromium at 1280 px
    (docs/browser_check.py; Debian's chromium is installed first when none is on the PATH).
    Screenshots of the main pages go to build/docs-screenshots."""
    env = torch_env(session, groups=("test", "docs"))
    session.run(tool("python"), "docs/gen_figures.py", env=env, external=True)
    pages = ["test_docs.py", "test_docs_claims.py", "test_docs_numbers.py", "test_docs_examples.py"]
    tests = [f"tests/e2e/{name}" for name in pages]
    session.run(tool("pytest"), "-q", *tests, env=env, external=True)
    site = str(ROOT / "build" / "docs")
    session.run(
        tool("sphinx-build"),
        "-W",
        "-n",
        "-E",
        "--keep-going",
        "-b",
        "html",
        "docs",
        site,
        env=env,
        external=True,
    )
    session.run(
        tool("pytest"),
        "-q",
        "tests/e2e/test_docs_site.py",
        env={**env, "FREEZEFLOW_DOCS_BUILD": site},
        external=True,
    )
    session.run("bash", "docs/install_chromium.sh", external=True)
    shots = ["index.html", "quickstart.html", "results.html", "model-zoo.html", "design.html"]
    shots += ["faq.html", "integrations/lightning.html", "api/index.html"]
    session.run(
        tool("python"),
        "docs/browser_check.py",
        site,
        "--screenshots",
        str(ROOT / "build" / "docs-screenshots"),
        *shots,
        env=env,
        external=True,
    )


def build_and_check(session: nox.Session, outdir: Path) -> Path:
    """Build the sdist, then the wheel from it (as an installer building from the sdist
    would), into ``outdir`` (emptied first); check both with twine and tools/check_dist.py.
    Needs the ``release`` group in the session. Returns the wheel."""
    shutil.rmtree(outdir, ignore_errors=True)
    session.run("python", "-m", "build", "--outdir", str(outdir), str(ROOT))
    session.run("twine", "check", "--strict", *map(str, sorted(outdir.iterdir())))
    session.run("python", str(ROOT / "tools" / "check_dist.py"), str(outdir))
    (wheel,) = outdir.glob("*.whl")
    return wheel


@nox.session(python="3.11")
def build(session: nox.Session) -> None:
    """The sdist and the wheel, into dist/, and their checks: ``twine check --strict``, then
    tools/check_dist.py (the wheel holds the package with py.typed and its metadata, no
    tests, docs or data; the sdist holds no environment, cache or build folder)."""
    session.install(*group("release"))
    build_and_check(session, ROOT / "dist")


@nox.session(python="3.11")
def wheel_tests(session: nox.Session) -> None:
    """The test suite (not slow) against the BUILT WHEEL, installed into this session's
    fresh environment with torch from the same pins as .nox/_torch (pip takes them from
    local disk); no editable install, no src/ on the path: FREEZEFLOW_EXPECT_INSTALLED=1
    makes tests/e2e/test_install.py fail if the tests or their subprocesses import
    freezeflow from anywhere but this environment's site-packages. Doctests run against
    src/ in `tests`, not here. The environment (~5.5 GB, torch's build) is deleted after."""
    try:
        session.install(*group("release"))
        wheel = build_and_check(session, Path(session.create_tmp()) / "dist")
        # one resolve with the exact torch pins, so nothing can pull another torch
        session.install(*TORCH, f"{wheel}[{ALL_EXTRAS}]", *group("test"))
        session.run(
            "python",
            "-c",
            "import freezeflow, sysconfig; from pathlib import Path; "
            "f = Path(freezeflow.__file__).resolve(); "
            "print(f'freezeflow {freezeflow.__version__} from {f}'); "
            "assert f.is_relative_to(Path(sysconfig.get_paths()['purelib']).resolve()), f",
        )
        session.run(
            "pytest",
            "-m",
            "not slow",
            "tests",
            *session.posargs,
            env={"FREEZEFLOW_EXPECT_INSTALLED": "1", "OMP_NUM_THREADS": "2"},
        )
    finally:
        location = getattr(session.virtualenv, "location", None)
        if location:
            shutil.rmtree(location, ignore_errors=True)


BENCHMARKS = {"auto": ("benchmarks/bench_auto.py", ("bench",))}
"""Benchmarks run by name (``nox -s bench -- auto [its arguments]``), with the dependency
groups they need beyond the examples."""


@nox.session(venv_backend="none")
def bench(session: nox.Session) -> None:
    """Benchmarks (ratios against a baseline measured in the same run; see
    docs/benchmarks.md). Not part of CI: they take minutes and need a quiet machine.
    ``nox -s bench -- auto`` runs ff.auto against fastai (defaults and lr_find), full
    fine-tuning and layer-wise LR decay (each swept), the hand-tuned schedule and the classic
    recipe, one file per run under benchmarks/results/auto/, skipping the runs recorded
    (roughly 15 minutes per run on 2 cores; docs/results.md); the arguments after ``auto``
    go to benchmarks/bench_auto.py (--tasks, --methods, --seeds...)."""
    args = list(session.posargs)
    if args and args[0] in BENCHMARKS:
        script, groups = BENCHMARKS[args.pop(0)]
        env = {**torch_env(session, "examples", groups), **FAST_MALLOC}
        session.run(tool("python"), script, *args, env=env, external=True)
        return
    env = {**torch_env(session, "examples", ()), **FAST_MALLOC}
    scripts = args or [
        "benchmarks/bench_overhead.py",
        "benchmarks/bench_cache.py",
        "benchmarks/bench_progressive.py",
    ]
    for script in scripts:
        session.run(tool("python"), script, env=env, external=True)
