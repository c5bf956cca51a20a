"""Fixtures: a fresh, seeded instance of each toy model per test (tests mutate models), and
``single_thread`` (torch on one thread for the test, the previous setting restored after).

A module whose tests all train opts in with
``pytestmark = pytest.mark.usefixtures("single_thread")``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from models import (
    FACTORIES,
    MLP,
    NestedLists,
    SmallCNN,
    TinyLM,
    make_mlp,
    make_nested,
    make_resnet18,
    make_small_cnn,
    make_tiny_lm,
    one_thread,
)
from torch import nn


@pytest.fixture
def single_thread() -> Iterator[None]:
    """Run the test with torch on one thread: the toy models are tiny, and on a busy machine
    intra-op threads cost more than they give (and add noise)."""
    with one_thread():
        yield


@pytest.fixture
def mlp() -> MLP:
    """A seeded :class:`models.MLP`."""
    return make_mlp()


@pytest.fixture
def cnn() -> SmallCNN:
    """A seeded :class:`models.SmallCNN`."""
    return make_small_cnn()


@pytest.fixture
def tiny_lm() -> TinyLM:
    """A seeded :class:`models.TinyLM` (tied embedding and head)."""
    return make_tiny_lm()


@pytest.fixture
def nested() -> NestedLists:
    """A seeded :class:`models.NestedLists`."""
    return make_nested()


@pytest.fixture
def resnet18() -> nn.Module:
    """A seeded torchvision ResNet18 (no weights)."""
    return make_resnet18()


@pytest.fixture(params=sorted(FACTORIES))
def toy(request: pytest.FixtureRequest) -> nn.Module:
    """Each toy model in turn."""
    return FACTORIES[request.param]()
