"""The README's quickstart runs as written."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


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
    names = [t.name for t in unfreezer.history]  # type: ignore[attr-defined]
    assert names == ["last1", "last2", "last3", "last4"]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}  # type: ignore[attr-defined]
    assert trainable and all(n.startswith(("fc.", "layer4.", "layer3.1.")) for n in trainable)
    assert "layer3.0.conv1.weight" not in trainable


def test_policy_snippet_runs() -> None:
    blocks = python_blocks()
    scope: dict[str, object] = {}
    exec(compile(blocks[0].split("optimizer =")[0], str(README), "exec"), scope)
    exec(compile(blocks[1], str(README), "exec"), scope)
    model = scope["model"]
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]  # type: ignore[attr-defined]
    # last(2) = layer4.1 and fc, minus norm layers; fc stayed trainable from the first line
    assert "fc.weight" in trainable and "layer4.1.conv1.weight" in trainable
    assert "layer4.1.bn1.weight" not in trainable and "layer4.0.conv1.weight" not in trainable
