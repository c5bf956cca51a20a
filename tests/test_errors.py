"""Bad input: the right error type (a FreezeflowError and the fitting builtin), a message that
names the offending value, and a model left exactly as it was; and freezeflow.errors itself
(the exception hierarchy, check_int, nearest, quote_list)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from models import make_small_cnn, make_tiny_lm
from snapshot import Snapshot, unchanged
from torch import nn

import freezeflow as ff
from freezeflow.errors import check_int, nearest, quote_list


def prepared_cnn() -> nn.Module:
    """A CNN that is not in its default state: some parameters frozen, norms locked."""
    cnn = make_small_cnn()
    ff.freeze(cnn, "stem")
    ff.freeze(cnn, "bn", norm="frozen")
    cnn.train()
    return cnn


def prepared_lm() -> nn.Module:
    lm = make_tiny_lm()
    ff.freeze(lm, "blocks.0")
    lm.eval()
    return lm


def applying(
    action: Callable[[nn.Module, ff.FreezePolicy], object], policy: ff.FreezePolicy
) -> Callable[[nn.Module], object]:
    """``action(model, policy)`` as a function of the model."""
    return lambda model: action(model, policy)


def check(
    make: Callable[[], nn.Module],
    action: Callable[[nn.Module], object],
    error: type[ff.FreezeflowError],
    builtin: type[Exception],
    *fragments: str,
) -> str:
    model = make()
    with unchanged(model), pytest.raises(error) as info:
        action(model)
    assert isinstance(info.value, ff.FreezeflowError)
    assert isinstance(info.value, builtin)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


def test_name_that_matches_nothing_shows_nearest_names() -> None:
    message = check(
        prepared_cnn, lambda m: ff.freeze(m, "stem.3"), ff.PolicyError, ValueError, "'stem.3'"
    )
    nearest = message.partition("nearest:")[2]
    assert any(f"'stem.{i}" in nearest for i in range(3)), message


def test_glob_that_matches_nothing_shows_nearest_names() -> None:
    message = check(
        prepared_cnn,
        lambda m: ff.freeze(m, ff.name("head.*.weight")),
        ff.PolicyError,
        ValueError,
        "'head.*.weight'",
    )
    assert "'head.weight'" in message.partition("nearest:")[2], message


def test_regex_that_matches_nothing_shows_nearest_names() -> None:
    message = check(
        prepared_cnn,
        lambda m: ff.unfreeze(m, ff.regex(r"heads\..*")),
        ff.PolicyError,
        ValueError,
        "heads",
    )
    assert "'head." in message.partition("nearest:")[2], message


def test_name_in_a_union_that_matches_nothing() -> None:
    check(
        prepared_cnn,
        lambda m: ff.freeze(m, ff.name("head") | ff.name("tail")),
        ff.PolicyError,
        ValueError,
        "'tail'",
    )


def test_invalid_regex() -> None:
    message = check(
        prepared_cnn, lambda m: ff.freeze(m, ff.regex(r"stem\.(0")), ff.PolicyError, ValueError
    )
    assert repr(r"stem\.(0") in message


def test_unclosed_glob_bracket() -> None:
    check(
        prepared_cnn,
        lambda m: ff.freeze(m, ff.name("stem.[01")),
        ff.PolicyError,
        ValueError,
        "'stem.[01'",
    )


@pytest.mark.parametrize(
    ("policy", "shown"),
    [
        (ff.blocks(5), "blocks(5)"),
        (ff.last(4), "last(4)"),
        (ff.first(7), "first(7)"),
        (ff.blocks(2, 1), "blocks(2, 1)"),
        (ff.layers(-6), "layers(-6)"),
        (ff.last(3, among=ff.norm_layers()), "last(3, among=norm_layers())"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_depth_out_of_range(policy: ff.FreezePolicy, shown: str) -> None:
    message = check(prepared_cnn, lambda m: ff.freeze(m, policy), ff.PolicyError, ValueError, shown)
    assert "SmallCNN has" in message


@pytest.mark.parametrize("count", [0, -1, True, 1.5], ids=repr)
def test_non_positive_block_count(count: object) -> None:
    with pytest.raises(ff.PolicyError) as info:
        ff.last(count)  # type: ignore[arg-type]
    assert isinstance(info.value, ValueError)
    assert repr(count) in str(info.value)


@pytest.mark.parametrize(
    ("value", "shown"),
    [(3, "3"), (None, "None"), (2.5, "2.5"), (nn.Linear, "Linear"), ({"head"}, "{'head'}")],
    ids=["int", "none", "float", "module_class", "set"],
)
def test_policy_that_is_not_a_policy(value: object, shown: str) -> None:
    check(
        prepared_cnn,
        lambda m: ff.freeze(m, value),  # type: ignore[arg-type]
        ff.errors.PolicyTypeError,
        TypeError,
        shown,
        type(value).__name__,
    )


def test_non_policy_in_an_expression() -> None:
    with pytest.raises(ff.errors.PolicyTypeError) as info:
        ff.name("head") | 3  # type: ignore[operator]
    assert isinstance(info.value, TypeError)
    assert "3" in str(info.value)


@pytest.mark.parametrize(
    ("build", "shown"),
    [
        (lambda: ff.name(3), "3"),  # type: ignore[arg-type]
        (lambda: ff.name(""), "''"),
        (lambda: ff.regex(None), "None"),  # type: ignore[arg-type]
        (lambda: ff.of_type(nn.Linear(2, 2)), "Linear(in_features=2"),  # type: ignore[arg-type]
        (lambda: ff.of_type(int), "int"),  # type: ignore[arg-type]
        (lambda: ff.where("head"), "'head'"),  # type: ignore[arg-type]
        (lambda: ff.blocks("1"), "'1'"),  # type: ignore[arg-type]
    ],
    ids=[
        "name_int",
        "name_empty",
        "regex_none",
        "of_type_instance",
        "of_type_int",
        "where_str",
        "blocks_str",
    ],
)
def test_constructor_arguments_of_the_wrong_type(build: Callable[[], object], shown: str) -> None:
    with pytest.raises(ff.errors.PolicyTypeError) as info:
        build()
    assert isinstance(info.value, TypeError)
    assert shown in str(info.value)


def test_not_a_model() -> None:
    cnn = prepared_cnn()
    params = list(cnn.parameters())
    snap = Snapshot.take(cnn)
    with pytest.raises(ff.errors.PolicyTypeError) as info:
        ff.freeze(params, "head")  # type: ignore[arg-type]
    assert isinstance(info.value, TypeError)
    assert "list" in str(info.value)
    snap.assert_unchanged()


@pytest.mark.parametrize(
    "policy",
    [
        ff.name("embed") - ff.name("lm_head"),
        ~ff.name("lm_head"),
        ff.everything() - ff.last(1),
    ],
    ids=repr,
)
def test_contradictory_tied_selection(policy: ff.FreezePolicy) -> None:
    for action in (ff.freeze, ff.unfreeze):
        check(
            prepared_lm,
            applying(action, policy),
            ff.errors.TiedParameterError,
            ValueError,
            "'embed.weight'",
            "'lm_head.weight'",
        )


def test_tied_error_is_a_policy_error() -> None:
    assert issubclass(ff.errors.TiedParameterError, ff.PolicyError)
    assert issubclass(ff.errors.EmptySelectionError, ff.PolicyError)


@pytest.mark.parametrize("mode", ["bogus", "EVAL", None, True], ids=repr)
def test_invalid_norm_mode(mode: object) -> None:
    check(
        prepared_cnn,
        lambda m: ff.freeze(m, "head", norm=mode),  # type: ignore[arg-type]
        ff.PolicyError,
        ValueError,
        f"norm={mode!r}",
    )


def test_invalid_norm_mode_in_frozen_context() -> None:
    def enter(m: nn.Module) -> None:
        with ff.frozen(m, "head", norm="bogus"):  # type: ignore[arg-type]
            pass  # pragma: no cover

    check(prepared_cnn, enter, ff.PolicyError, ValueError, "'bogus'")


def test_empty_selection() -> None:
    message = check(
        prepared_cnn,
        lambda m: ff.freeze(m, ff.name("head") & ff.norm_layers()),
        ff.errors.EmptySelectionError,
        ValueError,
        "name('head') & norm_layers()",
    )
    assert "0 of 10" in message


def test_set_blocks_with_an_unknown_name() -> None:
    check(
        prepared_cnn,
        lambda m: ff.set_blocks(m, ["stem", ["conv", "bnn"]]),
        ff.PolicyError,
        ValueError,
        "'bnn'",
        "'bn'",
    )


def test_summary_with_a_bad_unit() -> None:
    check(
        prepared_cnn,
        lambda m: ff.summary(m, by="rows"),  # type: ignore[arg-type]
        ff.PolicyError,
        ValueError,
        "'rows'",
    )


# --------------------------------------------------------------------------- errors.py itself


@pytest.mark.parametrize(
    ("error", "builtin"),
    [
        (ff.errors.PolicyError, ValueError),
        (ff.errors.EmptySelectionError, ff.errors.PolicyError),
        (ff.errors.TiedParameterError, ff.errors.PolicyError),
        (ff.errors.PolicyTypeError, TypeError),
        (ff.errors.ScheduleError, ValueError),
        (ff.errors.OptimizerError, ValueError),
        (ff.errors.StateError, ValueError),
        (ff.errors.CheckpointError, RuntimeError),
        (ff.errors.TrainingError, RuntimeError),
        (ff.errors.DistributedError, ff.errors.TrainingError),
        (ff.errors.HeadError, ValueError),
        (ff.errors.HeadNotFoundError, ff.errors.HeadError),
        (ff.errors.CliError, ValueError),
    ],
    ids=lambda v: v.__name__,
)
def test_every_error_is_a_freezeflow_error_and_the_fitting_builtin(
    error: type[Exception], builtin: type[Exception]
) -> None:
    assert issubclass(error, ff.FreezeflowError)
    assert issubclass(error, builtin)
    assert error.__name__ in ff.errors.__all__


def test_every_public_exception_class_is_listed() -> None:
    # every exception and warning class lives in errors.py, and every one of them is public
    classes = {
        n
        for n, v in vars(ff.errors).items()
        if isinstance(v, type) and issubclass(v, (Exception, Warning)) and not n.startswith("_")
    }
    assert classes == set(ff.errors.__all__)
    assert issubclass(ff.errors.FreezeflowWarning, UserWarning)
    # a cache refusal is caught inside fit(), never a user-facing error
    assert not issubclass(ff.errors.CacheRefused, ff.FreezeflowError)


def test_check_int_accepts_integers_from_low_up() -> None:
    assert check_int("n", 0, 0) == 0
    assert check_int("n", 5, 1) == 5


@pytest.mark.parametrize(
    ("value", "shown"),
    [(0, "0"), (-2, "-2"), (True, "True"), (1.0, "1.0"), ("3", "'3'"), (None, "None")],
)
def test_check_int_names_what_the_value_and_the_hint(value: object, shown: str) -> None:
    with pytest.raises(ff.errors.OptimizerError) as info:
        check_int("f(n)", value, 1, ff.errors.OptimizerError, "pass a count")
    assert str(info.value) == f"f(n): expected an integer >= 1, got {shown}; hint: pass a count"
    with pytest.raises(ff.ScheduleError, match=rf"^f\(n\): expected an integer >= 1, got {shown}$"):
        check_int("f(n)", value, 1)


def test_nearest_suggests_close_names_then_containing_ones() -> None:
    names = ["layer1", "layer2", "layer3", "fc", "conv1"]
    close = nearest("layr2", names)
    assert close[0] == "layer2"  # the closest first
    assert sorted(close) == ["layer1", "layer2", "layer3"]
    assert nearest("fc", ["fc", "fc"], n=3) == ["fc"]  # each candidate once
    # nothing close: the names that contain the pattern's letters, else the first ones
    assert nearest("**conv1**", ["a.conv1.weight", "b"]) == ["a.conv1.weight"]
    assert nearest("zzzzzz", names, n=2) == ["layer1", "layer2"]


def test_quote_list_shows_a_few_and_counts_the_rest() -> None:
    assert quote_list([]) == ""
    assert quote_list(["a"]) == "'a'"
    assert quote_list(["a", "b"]) == "'a', 'b'"
    assert quote_list([str(i) for i in range(7)], limit=3) == "'0', '1', '2' (+4 more)"
