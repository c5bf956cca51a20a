"""summary(): rows and totals (checked against counts computed here), text and HTML tables."""

from __future__ import annotations

import re

import pytest
import torchvision
from models import SmallCNN, TinyLM
from torch import nn

import freezeflow as ff


def numel(*modules: nn.Module) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


def row_tuples(s: ff.core.Summary) -> list[tuple[int, str, int, int, str, str]]:
    return [(r.index, r.name, r.params, r.n_trainable, r.status, r.norm) for r in s.rows]


def test_cnn_rows_and_totals(cnn: SmallCNN) -> None:
    ff.freeze(cnn, "stem")
    ff.freeze(cnn, "conv.bias")
    s = ff.summary(cnn)
    stem, conv_bn, head = numel(cnn.stem), numel(cnn.conv, cnn.bn), numel(cnn.head)
    assert (stem, conv_bn, head) == (8 * 3 * 9 + 8 + 2 * 8, 16 * 8 * 9 + 16 + 2 * 16, 16 * 5 + 5)
    assert row_tuples(s) == [
        (0, "stem", stem, 0, "frozen", "eval"),
        (1, "conv+bn", conv_bn, conv_bn - 16, "partial", "train"),
        (2, "head", head, head, "trainable", ""),
    ]
    assert s.model_name == "SmallCNN"
    assert s.unit == "blocks"
    assert s.total == stem + conv_bn + head == numel(cnn)
    assert s.n_trainable == sum(p.numel() for p in cnn.parameters() if p.requires_grad)
    assert s.n_trainable == conv_bn - 16 + head
    assert s.frozen == stem + 16


def test_norm_column_shows_modes(cnn: SmallCNN) -> None:
    ff.freeze(cnn, "conv", norm="eval")
    ff.freeze(cnn, "bn", norm="frozen")
    cnn.eval()
    assert [r.norm for r in ff.summary(cnn).rows] == ["eval", "frozen", ""]
    cnn.train()
    assert [r.norm for r in ff.summary(cnn).rows] == ["train", "frozen", ""]


def test_mixed_norm_modes_in_one_block(resnet18: nn.Module) -> None:
    ff.freeze(resnet18, "layer1.0.bn1", norm="frozen")
    resnet18.train()
    rows = {r.name: r for r in ff.summary(resnet18).rows}
    assert rows["layer1.0"].norm == "frozen/train"
    assert rows["layer1.0"].status == "partial"
    assert rows["layer1.1"].norm == "train"


def test_resnet18_totals_and_rows(resnet18: nn.Module) -> None:
    ff.freeze(resnet18, ~ff.name("fc"))
    s = ff.summary(resnet18)
    assert s.total == 11_689_512 == numel(resnet18)
    assert s.n_trainable == 513_000 == numel(resnet18.get_submodule("fc"))
    assert [r.name for r in s.rows] == [b.name for b in ff.find_blocks(resnet18)]
    assert sum(r.params for r in s.rows) == s.total
    for r in s.rows:
        modules = [resnet18.get_submodule(path) for path in r.name.split("+")]
        assert r.params == numel(*modules), r.name
        assert r.n_trainable == (r.params if r.name == "fc" else 0)
        assert r.status == ("trainable" if r.name == "fc" else "frozen")
    assert str(s).splitlines()[0] == (
        "ResNet: 513,000 of 11,689,512 parameters trainable (11,176,512 frozen)"
    )


def test_tied_weight_is_counted_once(tiny_lm: TinyLM) -> None:
    s = ff.summary(tiny_lm)
    unique = numel(tiny_lm)
    assert s.total == unique
    assert s.total == sum(p.numel() for _, p in tiny_lm.named_parameters())
    assert sum(r.params for r in s.rows) == unique
    rows = {r.name: r for r in s.rows}
    assert rows["embed"].params == 32 * 16 + 8 * 16  # the embedding and the loose pos
    assert rows["lm_head"].params == 0  # its weight is the embedding's
    assert rows["lm_head"].status == "-"
    ff.freeze(tiny_lm, "lm_head")
    s = ff.summary(tiny_lm)
    assert s.n_trainable == unique - 32 * 16
    assert {r.name: r for r in s.rows}["embed"].status == "partial"


def test_summary_by_layers(cnn: SmallCNN) -> None:
    ff.freeze(cnn, "stem.1")
    cnn.train()
    s = ff.summary(cnn, by="layers")
    assert s.unit == "layers"
    expected = []
    for i, path in enumerate(["stem.0", "stem.1", "conv", "bn", "head"]):
        m = cnn.get_submodule(path)
        n = numel(m)
        frozen = path == "stem.1"
        norm = {"stem.1": "eval", "bn": "train"}.get(path, "")
        status = "frozen" if frozen else "trainable"
        expected.append((i, path, n, 0 if frozen else n, status, norm))
    assert row_tuples(s) == expected
    assert s.total == numel(cnn)
    assert " layer " in str(s).splitlines()[1] + " "


def test_str_is_a_text_table(cnn: SmallCNN) -> None:
    ff.freeze(cnn, "stem")
    s = ff.summary(cnn)
    lines = str(s).splitlines()
    assert repr(s) == str(s)
    assert len(lines) == len(s.rows) + 5  # title, header, rule, rows, rule, totals
    assert lines[0] == f"SmallCNN: {s.n_trainable:,} of {s.total:,} parameters trainable " + (
        f"({s.frozen:,} frozen)"
    )
    assert lines[1].split() == ["#", "block", "params", "trainable", "status", "norm"]
    assert set(lines[2].replace(" ", "")) == {"-"}
    assert lines[2] == lines[-2]
    for line, row in zip(lines[3:-2], s.rows):
        cells = line.split()
        expected = [str(row.index), row.name, f"{row.params:,}", f"{row.n_trainable:,}"]
        assert cells[:5] == [*expected, row.status]
    pct = f"{100 * s.n_trainable / s.total:.1f}%"
    assert lines[-1].split() == ["total", f"{s.total:,}", f"{s.n_trainable:,}", pct]
    # columns line up: every row has the same width up to the status column
    starts = {line.index(row.status) for line, row in zip(lines[3:-2], s.rows)}
    assert len(starts) == 1


def test_html_is_a_table(cnn: SmallCNN) -> None:
    s = ff.summary(cnn)
    html = s._repr_html_()
    assert html.startswith("<p><b>SmallCNN</b></p><table>")
    assert html.endswith("</table>")
    assert html.count("<tr>") == html.count("</tr>") == len(s.rows) + 2
    assert html.count("<th>") == 12  # header and totals
    assert html.count("<td>") == 6 * len(s.rows)
    cells = re.findall(r"<td>(.*?)</td>", html)
    stem = f"{numel(cnn.stem):,}"
    assert cells[:6] == ["0", "stem", stem, stem, "trainable", "train"]


def test_html_escapes_names() -> None:
    model = nn.Linear(3, 2)  # a bare layer is one block named '<root>'
    s = ff.summary(model)
    assert [r.name for r in s.rows] == ["<root>"]
    html = s._repr_html_()
    assert "&lt;root&gt;" in html
    assert "<root>" not in html
    assert s.rows[0].params == 8


def test_summary_of_vit_counts_loose_parameters_in_the_first_block() -> None:
    model = torchvision.models.vit_b_16(weights=None)
    s = ff.summary(model)
    first = s.rows[0]
    assert first.name == "conv_proj"
    expected = numel(model.conv_proj) + model.class_token.numel()
    expected += model.encoder.pos_embedding.numel()
    assert first.params == expected
    assert sum(r.params for r in s.rows) == s.total == numel(model)


def test_bad_unit_is_rejected(cnn: SmallCNN) -> None:
    with pytest.raises(ff.PolicyError, match=r"'modules'.*hint"):
        ff.summary(cnn, by="modules")  # type: ignore[arg-type]


def test_counts_have_one_name(cnn: SmallCNN) -> None:
    # n_trainable only: no alias under the name used before the rename
    s = ff.summary(cnn)
    assert s.n_trainable == sum(r.n_trainable for r in s.rows)
    assert not hasattr(s, "trainable") and not hasattr(s.rows[0], "trainable")
