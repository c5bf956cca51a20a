"""replace_head (freezeflow.core.heads) on real torchvision, timm and efficientnet_lite_pytorch
architectures (random weights)."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
import torchvision as tv
from snapshot import Snapshot
from torch import nn

from freezeflow.core.heads import replace_head
from freezeflow.errors import FreezeflowError, FreezeflowTypeError, HeadError, HeadNotFoundError


def _lite0() -> nn.Module:
    # an optional extra (examples): the guard skips only when it is not installed
    lite = pytest.importorskip("efficientnet_lite_pytorch")
    return lite.EfficientNet.from_name("efficientnet-lite0")  # type: ignore[no-any-return]


# (factory, path of the replaced Linear, its in_features, input size)
MODELS = [
    pytest.param(lambda: tv.models.resnet18(weights=None), "fc", 512, 32, id="resnet18"),
    pytest.param(lambda: tv.models.vgg11(weights=None), "classifier.6", 4096, 32, id="vgg11"),
    pytest.param(
        lambda: tv.models.efficientnet_b0(weights=None), "classifier.1", 1280, 32, id="effnet_b0"
    ),
    pytest.param(
        lambda: tv.models.mobilenet_v3_small(weights=None),
        "classifier.3",
        1024,
        32,
        id="mobilenet_v3_small",
    ),
    # ViT-B/16 at 32 px (2x2 patches) keeps the test fast; the head is the same.
    pytest.param(
        lambda: tv.models.vit_b_16(weights=None, image_size=32),
        "heads.head",
        768,
        32,
        id="vit_b_16",
    ),
    pytest.param(_lite0, "_fc", 1280, 32, id="efficientnet_lite0"),
]


class ConvNet(nn.Module):
    """A model with no recognisable head."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3))
        self.proj = nn.Linear(4, 4)


class SqueezeLike(nn.Module):
    """``classifier`` exists but does not end in a Linear (SqueezeNet's conv classifier)."""

    def __init__(self) -> None:
        super().__init__()
        self.classifier = nn.Sequential(nn.Dropout(0.5), nn.Conv2d(8, 10, 1), nn.ReLU())


class TimmHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(16)
        self.fc = nn.Linear(16, 1000)


class TimmLike(nn.Module):
    """timm's ``head`` module holding its Linear as ``head.fc`` (NormMlpClassifierHead)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(8, 16)
        self.head = TimmHead()


def _forward(model: nn.Module, size: int, n: int = 2) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        out: torch.Tensor = model(torch.randn(n, 3, size, size))
    return out


@pytest.mark.parametrize(("factory", "path", "in_features", "size"), MODELS)
def test_linear_head_shape_and_only_head_params_change(
    factory: Callable[[], nn.Module], path: str, in_features: int, size: int
) -> None:
    model = factory()
    before = dict(model.named_parameters())
    old = model.get_submodule(path)
    old_ids = {id(p) for p in old.parameters()}

    head = replace_head(model, 7)

    assert isinstance(head, nn.Linear)
    assert (head.in_features, head.out_features) == (in_features, 7)
    assert model.get_submodule(path) is head
    after = dict(model.named_parameters())
    new_ids = {id(p) for p in head.parameters()}
    assert {n for n, p in after.items() if id(p) in new_ids} == {f"{path}.weight", f"{path}.bias"}
    for n, p in after.items():
        if id(p) not in new_ids:
            assert before[n] is p, n
    assert {id(p) for p in before.values()} - {id(p) for p in after.values()} == old_ids
    assert _forward(model, size).shape == (2, 7)


@pytest.mark.parametrize(("factory", "path", "in_features", "size"), MODELS)
def test_hidden_and_dropout_build_the_seed_head(
    factory: Callable[[], nn.Module], path: str, in_features: int, size: int
) -> None:
    model = factory()
    head = replace_head(model, 3, hidden=32, dropout=0.25)

    assert isinstance(head, nn.Sequential)
    assert [type(m) for m in head] == [nn.Linear, nn.ReLU, nn.Dropout, nn.Linear]
    first, _, drop, last = head
    assert isinstance(first, nn.Linear)
    assert isinstance(last, nn.Linear)
    assert isinstance(drop, nn.Dropout)
    assert (first.in_features, first.out_features) == (in_features, 32)
    assert (last.in_features, last.out_features) == (32, 3)
    assert drop.p == 0.25
    assert model.get_submodule(path) is head
    assert _forward(model, size, n=3).shape == (3, 3)


def test_preceding_classifier_layers_are_kept() -> None:
    model = tv.models.vgg11(weights=None)
    kept = list(model.classifier)[:-1]
    replace_head(model, 10)
    assert all(a is b for a, b in zip(kept, list(model.classifier)[:-1]))
    assert len(model.classifier) == 7


def test_dropout_without_hidden_prepends_dropout() -> None:
    model = tv.models.resnet18(weights=None)
    head = replace_head(model, 4, dropout=0.5)
    assert isinstance(head, nn.Sequential)
    assert [type(m) for m in head] == [nn.Dropout, nn.Linear]
    assert model.fc is head


def test_new_head_follows_the_parent_training_mode() -> None:
    model = tv.models.resnet18(weights=None).eval()
    head = replace_head(model, 4, hidden=8, dropout=0.1)
    assert not any(m.training for m in head.modules())
    model.train()
    assert all(m.training for m in head.modules())


def test_new_head_keeps_dtype() -> None:
    model = tv.models.resnet18(weights=None).double()
    head = replace_head(model, 4)
    assert isinstance(head, nn.Linear)
    assert head.weight.dtype == torch.float64


@pytest.mark.parametrize(
    ("factory", "attr", "path"),
    [
        pytest.param(
            lambda: tv.models.vit_b_16(weights=None, image_size=32),
            "heads.head",
            "heads.head",
            id="vit-dotted",
        ),
        pytest.param(lambda: tv.models.vgg11(weights=None), "classifier", "classifier.6", id="seq"),
        pytest.param(lambda: ConvNet(), "proj", "proj", id="custom-linear"),
        pytest.param(lambda: TimmLike(), None, "head.fc", id="timm-head-fc"),
    ],
)
def test_explicit_attr_and_timm_head(
    factory: Callable[[], nn.Module], attr: str | None, path: str
) -> None:
    model = factory()
    head = replace_head(model, 5, attr=attr)
    assert isinstance(head, nn.Linear)
    assert head.out_features == 5
    assert model.get_submodule(path) is head


@pytest.mark.parametrize(
    ("arch", "path", "in_features"),
    [
        ("resnet18", "fc", 512),
        ("vit_tiny_patch16_224", "head", 192),
        ("convnext_atto", "head.fc", 320),  # NormMlpClassifierHead: norm, then fc
        ("efficientnet_b0", "classifier", 1280),
    ],
)
def test_real_timm_models(arch: str, path: str, in_features: int) -> None:
    # timm is in the test dependencies; the guard skips only where it is not installed
    timm = pytest.importorskip("timm")
    model = timm.create_model(arch, pretrained=False)
    before = dict(model.named_parameters())
    head = replace_head(model, 7)
    assert isinstance(head, nn.Linear)
    assert (head.in_features, head.out_features) == (in_features, 7)
    assert model.get_submodule(path) is head
    assert model.get_classifier() is head
    after = dict(model.named_parameters())
    assert {n for n in after if n not in before or after[n] is not before[n]} == {
        f"{path}.weight",
        f"{path}.bias",
    }
    assert _forward(model, 224 if arch.startswith("vit") else 64, n=1).shape == (1, 7)


@pytest.mark.parametrize(
    ("factory", "cls_name"),
    [
        pytest.param(
            lambda: nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3)),
            "Sequential",
            id="bare-sequential",
        ),
        pytest.param(ConvNet, "ConvNet", id="custom-module"),
        pytest.param(SqueezeLike, "SqueezeLike", id="conv-classifier"),
    ],
)
def test_unknown_model_raises_and_leaves_model_unchanged(
    factory: Callable[[], nn.Module], cls_name: str
) -> None:
    model = factory()
    snap = Snapshot.take(model)
    with pytest.raises(HeadNotFoundError) as info:
        replace_head(model, 10)
    assert isinstance(info.value, FreezeflowError)
    assert isinstance(info.value, ValueError)
    msg = str(info.value)
    assert cls_name in msg
    for tried in ("model.fc", "model.classifier", "model.head", "model.heads", "model._fc"):
        assert tried in msg
    assert "attr=" in msg
    snap.assert_unchanged()


def test_not_found_hint_names_the_last_linear() -> None:
    with pytest.raises(HeadNotFoundError, match=r"attr='proj'"):
        replace_head(ConvNet(), 10)


def test_conv_classifier_message_says_why() -> None:
    with pytest.raises(HeadNotFoundError, match=r"does not end in nn\.Linear"):
        replace_head(SqueezeLike(), 10)


@pytest.mark.parametrize(
    ("attr", "pattern"),
    [
        pytest.param("clasifier", r"no submodule 'clasifier'.*'classifier'", id="typo"),
        pytest.param("features", r"attr='features'.*not an nn.Linear", id="not-linear"),
        pytest.param("", r"attr must be a non-empty.*got ''", id="empty"),
    ],
)
def test_bad_attr(attr: str, pattern: str) -> None:
    model = tv.models.mobilenet_v3_small(weights=None)
    snap = Snapshot.take(model)
    with pytest.raises(HeadError, match=pattern) as info:
        replace_head(model, 10, attr=attr)
    assert "MobileNetV3" in str(info.value) or attr == ""
    snap.assert_unchanged()


@pytest.mark.parametrize(
    ("kwargs", "shown"),
    [
        pytest.param({"num_classes": 0}, "num_classes", id="classes-zero"),
        pytest.param({"num_classes": -3}, "-3", id="classes-negative"),
        pytest.param({"num_classes": 10, "hidden": 0}, "hidden", id="hidden-zero"),
        pytest.param({"num_classes": 10, "dropout": -0.1}, "-0.1", id="dropout-negative"),
        pytest.param({"num_classes": 10, "dropout": 1.0}, "1.0", id="dropout-one"),
        pytest.param({"num_classes": 10, "dropout": math.nan}, "nan", id="dropout-nan"),
    ],
)
def test_invalid_values_raise_and_leave_model_unchanged(
    kwargs: dict[str, object], shown: str
) -> None:
    model = tv.models.resnet18(weights=None)
    snap = Snapshot.take(model)
    with pytest.raises(HeadError) as info:
        replace_head(model, **kwargs)  # type: ignore[arg-type]
    assert isinstance(info.value, ValueError)
    assert shown in str(info.value) and "hint:" in str(info.value)
    snap.assert_unchanged()


@pytest.mark.parametrize(
    ("kwargs", "shown"),
    [
        pytest.param({"num_classes": 2.5}, "2.5 of type float", id="classes-float"),
        pytest.param({"num_classes": True}, "True of type bool", id="classes-bool"),
        pytest.param({"num_classes": "10"}, "'10' of type str", id="classes-str"),
        pytest.param({"num_classes": 10, "hidden": 1.5}, "1.5 of type float", id="hidden-float"),
        pytest.param({"num_classes": 10, "dropout": "0.5"}, "'0.5' of type str", id="dropout-str"),
        pytest.param({"num_classes": 10, "attr": 3}, "3 of type int", id="attr-int"),
    ],
)
def test_values_of_the_wrong_type_raise_a_type_error(kwargs: dict[str, object], shown: str) -> None:
    model = tv.models.resnet18(weights=None)
    snap = Snapshot.take(model)
    with pytest.raises(FreezeflowTypeError) as info:
        replace_head(model, **kwargs)  # type: ignore[arg-type]
    assert not isinstance(info.value, ValueError)
    assert shown in str(info.value) and "hint:" in str(info.value)
    snap.assert_unchanged()
