"""freezeflow.core.meta: a model built on the meta device has the real model's names, shapes
and blocks, builds without running its initialisers, and leaves real tensors alone."""

from __future__ import annotations

import torch
import torchvision
from torch import nn

import freezeflow as ff
from freezeflow.core.meta import on_meta_device


def test_a_meta_model_has_the_real_ones_names_shapes_and_blocks() -> None:
    real = torchvision.models.resnet18()
    with on_meta_device():
        model = torchvision.models.resnet18()
    assert all(p.is_meta for p in model.parameters())
    assert {n: p.shape for n, p in model.named_parameters()} == {
        n: p.shape for n, p in real.named_parameters()
    }
    assert ff.find_blocks(model) == ff.find_blocks(real)
    assert ff.last(2).select(model).names == ff.last(2).select(real).names


def test_in_place_initialisers_are_skipped_on_meta_tensors_only() -> None:
    calls: list[str] = []

    class Counting(nn.Linear):
        def reset_parameters(self) -> None:
            calls.append("reset")
            nn.init.trunc_normal_(self.weight)  # runs through clamp_, erfinv_, mul_, add_

    real = torch.zeros(3)
    with on_meta_device():
        layer = Counting(4, 4)
        t = torch.empty(2)
        assert t.normal_() is t  # skipped: the same tensor back
        real.add_(1.0)  # a real tensor's in-place operation still runs
    assert calls == ["reset"] and layer.weight.is_meta
    assert real.tolist() == [1.0, 1.0, 1.0]
    assert torch.empty(1).device.type == "cpu"  # the device is restored after the block
