"""freezeflow._torch_internals: each private part of torch freezeflow reads, pinned to the torch
release it was read from (READ_FROM), with a test that fails naming the internal and the torch
version when a release changes it; the public APIs used instead of the internals they replace;
and that no other module reads torch internals (the LR schedulers' aside, which
unfreezer/lr_schedulers.py holds and tests/unfreezer/test_lr_schedulers.py pins)."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import RandomSampler

import freezeflow
from freezeflow import _torch_internals as internals
from freezeflow._torch_internals import (
    COMPILED_ORIGINAL,
    NORM_BASE,
    RECOMPILE_LIMIT_KEYS,
    compiled_original,
    recompile_limit,
)

READ_FROM = "2.14.1"
"""The torch release every internal below was read from (``torch.__version__`` then)."""


def _changed(internal: str, what: str) -> str:
    return (
        f"torch {torch.__version__} changed {internal} (read from torch {READ_FROM}): {what}. "
        "freezeflow._torch_internals relies on it: update it there (its docstring says what "
        "it reads and why), then this test"
    )


# --------------------------------------------------------------------------- NORM_BASE

# every public torch.nn class with running statistics, as of READ_FROM
NORMS_WITH_RUNNING_STATS = {
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "SyncBatchNorm",
    "InstanceNorm1d",
    "InstanceNorm2d",
    "InstanceNorm3d",
    "LazyBatchNorm1d",
    "LazyBatchNorm2d",
    "LazyBatchNorm3d",
    "LazyInstanceNorm1d",
    "LazyInstanceNorm2d",
    "LazyInstanceNorm3d",
}


def test_norm_base_is_the_private_base_of_batch_and_instance_norms() -> None:
    assert getattr(nn.modules.batchnorm, "_NormBase", None) is NORM_BASE, _changed(
        "nn.modules.batchnorm._NormBase", "it is gone or is another class"
    )
    public = {
        name
        for name, cls in vars(nn).items()
        if isinstance(cls, type) and issubclass(cls, nn.Module) and issubclass(cls, NORM_BASE)
    }
    assert public == NORMS_WITH_RUNNING_STATS, _changed(
        "nn.modules.batchnorm._NormBase",
        f"its public subclasses are now {sorted(public)}; new: "
        f"{sorted(public - NORMS_WITH_RUNNING_STATS)}, gone: "
        f"{sorted(NORMS_WITH_RUNNING_STATS - public)}",
    )
    for other in (nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm):
        assert not issubclass(other, NORM_BASE), _changed(
            "nn.modules.batchnorm._NormBase", f"{other.__name__} derives from it now"
        )


@pytest.mark.parametrize(
    "norm", [nn.BatchNorm2d(4), nn.InstanceNorm1d(4, track_running_stats=True)], ids=repr
)
def test_norm_base_holds_running_statistics_that_move_in_train_mode(norm: nn.Module) -> None:
    # what the feature cache's check relies on: an instance of NORM_BASE in train mode moves
    # its running statistics, so its output depends on the batch
    assert isinstance(norm, NORM_BASE)
    for attr in ("track_running_stats", "running_mean", "running_var", "momentum"):
        assert hasattr(norm, attr), _changed("nn.modules.batchnorm._NormBase", f"no {attr}")
    running_mean = norm.get_buffer("running_mean")
    before = running_mean.clone()
    shape = (3, 4, 5) if isinstance(norm, nn.InstanceNorm1d) else (3, 4, 2, 2)
    norm.train()
    norm(torch.randn(shape))
    assert not torch.equal(before, norm.get_buffer("running_mean"))


def test_norm_layers_are_found_through_norm_base() -> None:
    class MyNorm(nn.modules.batchnorm._BatchNorm):  # a subclass of a private base only
        def _check_input_dim(self, input: torch.Tensor) -> None:
            pass

    assert isinstance(MyNorm(3), NORM_BASE)
    assert freezeflow.core.is_norm_layer(MyNorm(3))


# --------------------------------------------------------------------------- recompile_limit


def test_recompile_limit_reads_the_public_config_else_the_private_one() -> None:
    private = torch._dynamo.config
    found = [key for key in RECOMPILE_LIMIT_KEYS if hasattr(private, key)]
    assert found and found[0] == RECOMPILE_LIMIT_KEYS[0], _changed(
        "torch._dynamo.config.recompile_limit", f"of {RECOMPILE_LIMIT_KEYS} only {found} exist"
    )
    # read from 2.14.1: the public torch.compiler.config.recompile_limit is an alias of it
    public: Any = getattr(torch.compiler, "config", None)
    assert hasattr(public, "recompile_limit"), _changed(
        "torch.compiler.config.recompile_limit", "the public setting is gone"
    )
    assert recompile_limit() == public.recompile_limit == private.recompile_limit >= 1
    with private.patch(recompile_limit=5):
        assert recompile_limit() == public.recompile_limit == 5, _changed(
            "torch.compiler.config.recompile_limit", "it no longer aliases the private one"
        )
    with public.patch(recompile_limit=6):
        assert recompile_limit() == 6


def test_recompile_limit_falls_back_to_the_private_config(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # torch releases before the public setting (the supported floor, 2.3, has none)
    monkeypatch.delattr(torch.compiler, "config", raising=False)
    with torch._dynamo.config.patch(recompile_limit=7):
        assert recompile_limit() == 7


# --------------------------------------------------------------------------- compiled_original


def test_compiled_original_is_the_module_torch_compile_wrapped() -> None:
    model = nn.Linear(2, 2)
    compiled = torch.compile(model)  # lazy: nothing is compiled before the first call
    assert getattr(compiled, COMPILED_ORIGINAL, None) is model, _changed(
        f"the {COMPILED_ORIGINAL} attribute of torch.compile's module", "it is not the module"
    )
    assert compiled_original(compiled) is model
    assert compiled_original(model) is None
    assert compiled_original(torch.zeros(1)) is None
    assert compiled_original("model") is None


def test_unwrap_goes_through_a_compiled_model() -> None:
    from freezeflow.distributed.ddp import unwrap

    model = nn.Sequential(nn.Linear(2, 2))
    assert unwrap(torch.compile(model)) is model


# --------------------------------------------------------------------------- public instead


def test_compiler_reset_is_public() -> None:
    assert callable(torch.compiler.reset)
    torch.compiler.reset()


def test_random_sampler_num_samples_is_the_dataset_length_unless_given() -> None:
    # distributed.sharding tells a RandomSampler with num_samples= from a plain one by the
    # public num_samples, which is exact: given as the length, it draws the same permutation
    data = range(10)
    plain = RandomSampler(data, generator=torch.Generator().manual_seed(3))
    given = RandomSampler(data, num_samples=10, generator=torch.Generator().manual_seed(3))
    assert plain.num_samples == len(data)
    assert list(plain) == list(given)
    assert RandomSampler(data, num_samples=4).num_samples == 4


# --------------------------------------------------------------------------- nowhere else

# torch's private names that freezeflow has read somewhere (found by attribute or as a string)
KNOWN_PRIVATE = {
    "_NormBase",
    "_BatchNorm",
    "_InstanceNorm",
    "_dynamo",
    "_orig_mod",
    "_num_samples",
}
ALLOWED = {"_torch_internals.py", "unfreezer/lr_schedulers.py"}


def _torch_private_reads(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Attribute):
            base = ast.unparse(node.value)
            private = node.attr.startswith("_") and not node.attr.startswith("__")
            on_torch = base.split(".")[0] in ("torch", "nn", "F", "dist")
            if (private and on_torch) or node.attr in KNOWN_PRIVATE:
                found.append(f"{path.name}:{node.lineno}: {base}.{node.attr}")
        elif isinstance(node, ast.Constant) and node.value in KNOWN_PRIVATE:
            found.append(f"{path.name}:{node.lineno}: {node.value!r}")
    return sorted(found, key=lambda read: int(read.split(":")[1]))


def test_no_other_module_reads_torch_internals() -> None:
    package = Path(freezeflow.__file__).parent
    reads = [
        read
        for path in sorted(package.rglob("*.py"))
        if path.relative_to(package).as_posix() not in ALLOWED
        for read in _torch_private_reads(path)
    ]
    assert not reads, (
        "torch internals read outside freezeflow/_torch_internals.py (give each a named "
        f"constant or function there, with a docstring and a test here): {reads}"
    )


def test_the_check_finds_an_internal(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import torch\nfrom torch import nn\n"
        "torch._dynamo.reset()\nx = nn.modules.batchnorm._NormBase\n"
        "y = model._orig_mod\nz = hasattr(s, '_num_samples')\nok = torch.compiler.reset\n"
    )
    assert [r.split(": ")[1] for r in _torch_private_reads(sample)] == [
        "torch._dynamo",
        "nn.modules.batchnorm._NormBase",
        "model._orig_mod",
        "'_num_samples'",
    ]


def test_every_internal_is_documented() -> None:
    # a function says why no public API does it; a constant has a docstring (the string
    # right after its assignment)
    tree = ast.parse(Path(internals.__file__).read_text(encoding="utf-8"))
    documented = set()
    following: list[ast.stmt | None] = [*tree.body[1:], None]
    for node, after in zip(tree.body, following):
        if isinstance(node, ast.FunctionDef):
            doc = ast.get_docstring(node) or ""
            if "public API" in doc:
                documented.add(node.name)
        target: ast.expr | None = node.target if isinstance(node, ast.AnnAssign) else None
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
        doc_after = (
            isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        )
        if isinstance(target, ast.Name) and doc_after:
            documented.add(target.id)
    assert set(internals.__all__) <= documented, set(internals.__all__) - documented
