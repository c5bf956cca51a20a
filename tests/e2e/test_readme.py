"""The README's quickstart runs as written."""

from __future__ import annotations

import re

import paths
from torch import nn

import freezeflow as ff

README = paths.README


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


def test_quickstart_runs_and_unfreezes_on_schedule() -> None:
    blocks = python_blocks()
    assert blocks, "README has no python code block"
    quickstart = blocks[0]
    assert len(quickstart.strip().splitlines()) <= 16
    scope: dict[str, object] = {}
    exec(compile(quickstart, str(README), "exec"), scope)
    unfreezer = scope["unfreezer"]
    model = scope["model"]
    # after 4 epochs of ulmfit(4) the last 4 blocks train, everything before them is frozen
    assert isinstance(unfreezer, ff.GradualUnfreezer)
    assert isinstance(model, nn.Module)
    names = [t.name for t in unfreezer.history]
    assert names == ["last1", "last2", "last3", "last4"]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    last4 = {
        n for n, _ in model.named_parameters() if n.startswith(("fc.", "layer4.", "layer3.1."))
    }
    assert len(last4) == 2 + 15 + 6  # fc, layer4 (its two blocks), layer3.1
    assert trainable == last4


def test_policy_snippet_runs() -> None:
    blocks = python_blocks()
    scope: dict[str, object] = {}
    exec(compile(blocks[0].split("optimizer =")[0], str(README), "exec"), scope)
    exec(compile(blocks[1], str(README), "exec"), scope)
    model = scope["model"]
    assert isinstance(model, nn.Module)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    # last(2) = layer4.1 and fc, minus norm layers; fc stayed trainable from the first line
    assert trainable == {"fc.weight", "fc.bias", "layer4.1.conv1.weight", "layer4.1.conv2.weight"}
