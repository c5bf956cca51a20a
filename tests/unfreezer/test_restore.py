"""freezeflow.unfreezer.restore: whatever a measurement changes inside ``Restored`` and
``OtherRngs`` is put back bit for bit: parameters, buffers, flags, gradients, modes, and
NumPy's and Python's random streams."""

from __future__ import annotations

import random

import numpy as np
import torch
from torch import nn

from freezeflow.unfreezer.restore import OtherRngs, Restored, rng_devices


def test_restored_puts_back_every_parameter_buffer_flag_gradient_and_mode() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    params = list(net.parameters())
    params[0].requires_grad_(False)
    params[2].grad = torch.ones_like(params[2])
    net.eval()
    before = [t.detach().clone() for t in [*params, *net.buffers()]]
    flags = [p.requires_grad for p in params]
    with Restored(net, params):
        net.train()
        for p in params:
            p.requires_grad_(True)
            p.grad = None
        net(torch.randn(8, 3)).sum().backward()
        with torch.no_grad():
            for p in params:
                p.add_(1.0)
    after = [*params, *net.buffers()]
    assert all(torch.equal(a, b) for a, b in zip(after, before))
    assert [p.requires_grad for p in params] == flags
    assert params[2].grad is not None and torch.equal(params[2].grad, torch.ones_like(params[2]))
    assert params[0].grad is None
    assert not any(m.training for m in net.modules())
    assert rng_devices(params) == []  # on the CPU: no CUDA generator to fork


def test_other_rngs_puts_back_numpy_and_python_streams() -> None:
    np.random.seed(1)
    random.seed(1)
    numpy_before, python_before = np.random.get_state(), random.getstate()
    with OtherRngs():
        np.random.rand(10)
        random.random()
    assert all(np.array_equal(a, b) for a, b in zip(numpy_before, np.random.get_state()))
    assert random.getstate() == python_before
