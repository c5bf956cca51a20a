"""Fixtures: a fresh, seeded instance of each toy model per test (tests mutate models)."""

from __future__ import annotations

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
)
from torch import nn


@pytest.fixture
def mlp() -> MLP:
    return make_mlp()


@pytest.fixture
def cnn() -> SmallCNN:
    return make_small_cnn()


@pytest.fixture
def tiny_lm() -> TinyLM:
    return make_tiny_lm()


@pytest.fixture
def nested() -> NestedLists:
    return make_nested()


@pytest.fixture
def resnet18() -> nn.Module:
    return make_resnet18()


@pytest.fixture(params=sorted(FACTORIES))
def toy(request: pytest.FixtureRequest) -> nn.Module:
    """Each toy model in turn."""
    return FACTORIES[request.param]()
