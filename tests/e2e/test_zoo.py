"""Block discovery on 26 real architectures from torchvision, timm and transformers (random
weights, tiny configs for transformers): block counts at the level of repeated units, the
head last, ``last(2)`` of the backbone exactly its last two units, agreement with timm's and
transformers' own grouping, and the table in docs/model-zoo.md (see tests/zoo.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from torch import nn
from zoo import ARCHS, DOC, HF, TIMM, Arch, row, table

from freezeflow import cli
from freezeflow.zoo.report import BEGIN as BEGIN_SWEEP
from freezeflow.zoo.report import END as END_SWEEP

STATUSES = {"agree", "disagree", "no_reference", "build_error"}

IDS = [f"{a.zoo}:{a.name}" for a in ARCHS]


@pytest.mark.parametrize("arch", ARCHS, ids=IDS)
def test_blocks_are_repeated_units_with_the_head_last(arch: Arch) -> None:
    r = row(arch)
    names = [b.name for b in r.blocks]
    assert len(names) == arch.blocks, names
    assert r.blocks[-1].modules == arch.head
    # last(2) of the backbone: exactly two blocks, its last two units (a final norm or conv
    # head that lies between the last unit and the head goes with the last unit)
    assert len(r.last2_blocks) == 2
    for got, unit in zip(r.last2_blocks, arch.last2, strict=True):
        assert got.split("+")[0] == unit
    assert all(n.startswith(arch.last2) or "+" in r.last2_blocks[1] for n in r.last2)
    assert any(n.startswith(arch.last2[0] + ".") for n in r.last2)
    assert any(n.startswith(arch.last2[1] + ".") for n in r.last2)
    assert 0 < r.share < 1


@pytest.mark.parametrize("arch", ARCHS, ids=IDS)
def test_blocks_partition_every_parameter_name(arch: Arch) -> None:
    r = row(arch)
    model = arch.build()
    for name, _ in model.named_parameters(remove_duplicate=False):
        assert sum(b.covers(name) for b in r.blocks) <= 1, name
    covered = {n for n, _ in model.named_parameters() if any(b.covers(n) for b in r.blocks)}
    assert covered == {n for n, _ in model.named_parameters()}


TIMM_ARCHS = [a for a in ARCHS if a.zoo == TIMM]


@pytest.mark.parametrize("arch", TIMM_ARCHS, ids=[a.name for a in TIMM_ARCHS])
def test_blocks_agree_with_timms_own_grouping(arch: Arch) -> None:
    # timm's fine grouping (the one its layer decay uses): every freezeflow block lies inside
    # one timm group, and freezeflow has more blocks only where timm folds a stage's
    # downsampling layer into the stage's first unit
    r = row(arch)
    assert r.timm_groups is not None
    params = {n for g in r.timm_groups for n in g}
    for block in r.blocks:
        mine = {n for n in params if block.covers(n)}
        assert sum(mine <= g for g in r.timm_groups) == 1, block.name
    assert len(r.blocks) - len(r.timm_groups) == arch.timm_extra


HF_ARCHS = [a for a in ARCHS if a.zoo == HF]


@pytest.mark.parametrize("arch", HF_ARCHS, ids=[a.name for a in HF_ARCHS])
def test_units_are_the_transformer_layer_lists(arch: Arch) -> None:
    # transformers models list their layers in ModuleLists (encoder.layer, h, block): each
    # layer is a block of its own, in order
    model = arch.build()
    firsts = [b.name.split("+")[0] for b in row(arch).blocks]
    lists: list[tuple[str, nn.ModuleList]] = []
    for path, m in model.named_modules():
        inside = any(path.startswith(p + ".") for p, _ in lists)  # T5's block.0.layer
        if isinstance(m, nn.ModuleList) and len(m) > 1 and not inside:
            lists.append((path, m))
    assert lists
    for path, layers in lists:
        expected = [f"{path}.{i}" for i in range(len(layers))]
        at = firsts.index(expected[0])
        assert firsts[at : at + len(expected)] == expected


def test_the_docs_table_is_the_generated_one() -> None:
    text = DOC.read_text()
    assert table() in text, "docs/model-zoo.md is stale: run python tests/zoo.py --write"


def test_inspect_shows_the_blocks_of_a_timm_model(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["inspect", "timm:convnext_atto"]) == 0
    out = capsys.readouterr().out
    assert "stages.3.blocks.1" in out and "stages.3.downsample" in out


@pytest.mark.slow
def test_the_zoo_measurement_runs_on_a_sample(tmp_path: Path) -> None:
    # python -m freezeflow.zoo end to end, on a few names of each zoo
    page = tmp_path / "page.md"
    page.write_text(f"{BEGIN_SWEEP}\n{END_SWEEP}\n")
    code = subprocess.call(
        [sys.executable, "-m", "freezeflow.zoo", "--sample", "4", "--out", str(tmp_path),
         "--page", str(page), "--quiet"]
    )  # fmt: skip
    assert code == 0
    for zoo in ("timm", "transformers"):
        data = json.loads((tmp_path / f"{zoo}.json").read_text())
        assert data["sample"] is True and len(data["records"]) == 4
        assert all(r["status"] in STATUSES for r in data["records"])
        assert f"**{zoo}** (4 model" in page.read_text()
