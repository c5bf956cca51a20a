"""Developer sessions. `nox -s tests` is the README's test command; CI runs every session
listed in .ci/run. Torch is pinned to the release that lies on this project's build machines
(pip takes it from local disk); users get the range declared in pyproject.toml."""

from __future__ import annotations

import nox

nox.options.default_venv_backend = "virtualenv"
nox.options.sessions = ["lint", "typecheck", "tests"]

TORCH = ("torch==2.14.1", "torchvision==0.29.1")
PYPROJECT = nox.project.load_toml("pyproject.toml")


def group(name: str) -> list[str]:
    return list(nox.project.dependency_groups(PYPROJECT, name))


def install_project(
    session: nox.Session, extras: str = "examples,lightning,transformers,yaml,plot"
) -> None:
    session.install(*TORCH)
    session.install("-e", f".[{extras}]", *group("test"))


@nox.session(python="3.11")
def tests(session: nox.Session) -> None:
    """Unit tests and doctests (everything not marked slow)."""
    install_project(session)
    session.run(
        "pytest",
        "-m",
        "not slow",
        "--doctest-modules",
        "src/freezeflow",
        "tests",
        *session.posargs,
        env={"OMP_NUM_THREADS": "2"},
    )


# glibc returns large freed blocks to the kernel at once; on these machines that made CPU
# convolutions 2-3x slower (see docs/benchmarks.md). Only the demo and benchmarks set it.
FAST_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "4000000000", "MALLOC_TRIM_THRESHOLD_": "4000000000"}


@nox.session(python="3.11")
def demo(session: nox.Session) -> None:
    """The main job: the offline fine-tuning demo (seed recipe vs freezeflow) on the shipped
    CIFAR-10 subset. Extra arguments go to examples/offline_transfer.py."""
    session.install(*TORCH)
    session.install("-e", ".[examples]")
    session.run(
        "python",
        "examples/offline_transfer.py",
        *session.posargs,
        env={"OMP_NUM_THREADS": "2", **FAST_MALLOC},
    )


@nox.session(python="3.11")
def examples(session: nox.Session) -> None:
    """Run the examples as users would: the notebook (offline mode) and the Keras recipe."""
    install_project(session)
    env = {"OMP_NUM_THREADS": "2"}
    session.run(
        "jupytext",
        "--to",
        "ipynb",
        "--execute",
        "--output",
        "build/resnet18_cifar10.ipynb",
        "examples/resnet18_cifar10.py",
        env=env,
    )
    session.run("python", "examples/keras_resnet50_recipe.py", env=env)


@nox.session(python="3.11")
def slow(session: nox.Session) -> None:
    """Tests marked slow (subprocess resume, kill trials, the reduced demo...)."""
    install_project(session)
    session.run("pytest", "-m", "slow", "tests", *session.posargs, env={"OMP_NUM_THREADS": "2"})


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install(*group("lint"))
    paths = [
        "src",
        "tests",
        "examples",
        "benchmarks",
        "docs/conf.py",
        "docs/gen_figures.py",
        "noxfile.py",
    ]
    session.run("ruff", "check", *paths)
    session.run("ruff", "format", "--check", *paths)


@nox.session(python="3.11")
def typecheck(session: nox.Session) -> None:
    """mypy --strict on src/."""
    session.install(*TORCH)
    session.install("-e", ".[progress,plot,yaml,lightning,transformers]", *group("typecheck"))
    session.run("mypy", "src")


@nox.session(python="3.11")
def docs(session: nox.Session) -> None:
    """The documentation site (Sphinx + MyST), warnings as errors, into build/docs."""
    session.install(*TORCH)
    session.install("-e", ".[plot,yaml,vision]", *group("docs"))
    session.run("python", "docs/gen_figures.py", env={"OMP_NUM_THREADS": "2"})
    session.run(
        "sphinx-build",
        "-W",
        "--keep-going",
        "-b",
        "html",
        "docs",
        "build/docs",
        env={"OMP_NUM_THREADS": "2"},
    )


@nox.session(python="3.11")
def bench(session: nox.Session) -> None:
    """Benchmarks (ratios against a baseline measured in the same run; see
    docs/benchmarks.md). Not part of CI: they take minutes and need a quiet machine."""
    session.install(*TORCH)
    session.install("-e", ".[examples]")
    env = {"OMP_NUM_THREADS": "2", **FAST_MALLOC}
    scripts = session.posargs or [
        "benchmarks/bench_overhead.py",
        "benchmarks/bench_cache.py",
        "benchmarks/bench_progressive.py",
    ]
    for script in scripts:
        session.run("python", script, env=env)
