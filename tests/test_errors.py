"""Bad input: the right error type (a FreezeflowError and the fitting builtin), a message that
names the offending value, and a model left exactly as it was; and freezeflow.errors itself
(the exception hierarchy, check_int, nearest, quote_list)."""

from __future__ import annotations

import ast
import importlib
import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


@pytest.mark.parametrize("count", [0, -1], ids=repr)
def test_non_positive_block_count(count: object) -> None:
    with pytest.raises(ff.PolicyError) as info:
        ff.last(count)  # type: ignore[arg-type]
    assert isinstance(info.value, ValueError)
    assert repr(count) in str(info.value) and "hint: last(2)" in str(info.value)


@pytest.mark.parametrize("count", [True, 1.5, "2"], ids=repr)
def test_block_count_of_the_wrong_type(count: object) -> None:
    with pytest.raises(ff.errors.PolicyTypeError) as info:
        ff.last(count)  # type: ignore[arg-type]
    assert not isinstance(info.value, ValueError)
    assert f"{count!r} of type {type(count).__name__}" in str(info.value)


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


KINDS: tuple[type[Exception], ...] = (
    TypeError,
    ValueError,
    RuntimeError,
    ImportError,
    LookupError,
)
"""The builtin kinds a freezeflow error is one of (exactly one each)."""


def error_classes() -> list[type[BaseException]]:
    return [
        v
        for v in vars(ff.errors).values()
        if isinstance(v, type)
        and issubclass(v, BaseException)
        and v.__module__ == "freezeflow.errors"
    ]


@pytest.mark.parametrize("error", error_classes(), ids=lambda v: v.__name__)
def test_every_error_is_a_freezeflow_error_and_one_fitting_builtin(
    error: type[BaseException],
) -> None:
    assert error.__name__ in ff.errors.__all__
    assert error.__doc__, f"{error.__name__} has no docstring"
    if issubclass(error, Warning):
        assert issubclass(error, ff.FreezeflowWarning)
        return
    assert issubclass(error, ff.FreezeflowError)
    if error is ff.FreezeflowError:
        return
    kinds = [k.__name__ for k in KINDS if issubclass(error, k)]
    assert len(kinds) == 1, f"{error.__name__} is a {kinds}: expected exactly one of {KINDS}"
    # a wrong type is a ...TypeError, under FreezeflowTypeError, and nothing else is
    is_type = issubclass(error, TypeError)
    assert is_type == error.__name__.endswith("TypeError"), error.__name__
    assert is_type == issubclass(error, ff.errors.FreezeflowTypeError), error.__name__


@pytest.mark.parametrize(
    ("error", "parent"),
    [
        (ff.errors.EmptySelectionError, ff.PolicyError),
        (ff.errors.TiedParameterError, ff.PolicyError),
        (ff.errors.DistributedError, ff.TrainingError),
        (ff.errors.HeadNotFoundError, ff.errors.HeadError),
        (ff.errors.PolicyTypeError, ff.errors.FreezeflowTypeError),
        (ff.errors.ScheduleTypeError, ff.errors.FreezeflowTypeError),
        (ff.errors.OptimizerTypeError, ff.errors.FreezeflowTypeError),
        (ff.errors.TrainingTypeError, ff.errors.FreezeflowTypeError),
        (ff.errors.CacheRefused, RuntimeError),
        (ff.errors.MissingDependencyError, ImportError),
        (ff.errors.NotSelectedError, KeyError),
    ],
    ids=lambda v: v.__name__,
)
def test_families(error: type[Exception], parent: type[Exception]) -> None:
    assert issubclass(error, parent)


def test_every_public_exception_class_is_listed() -> None:
    # every exception and warning class lives in errors.py, and every one of them is public
    classes = {
        n
        for n, v in vars(ff.errors).items()
        if isinstance(v, type) and issubclass(v, (Exception, Warning)) and not n.startswith("_")
    }
    assert classes == set(ff.errors.__all__)
    assert issubclass(ff.errors.FreezeflowWarning, UserWarning)


def test_type_error_for_gives_each_family_its_type_error() -> None:
    errors = ff.errors
    assert errors.type_error_for(errors.PolicyError) is errors.PolicyTypeError
    assert errors.type_error_for(errors.EmptySelectionError) is errors.PolicyTypeError
    assert errors.type_error_for(errors.ScheduleError) is errors.ScheduleTypeError
    assert errors.type_error_for(errors.OptimizerError) is errors.OptimizerTypeError
    assert errors.type_error_for(errors.TrainingArgumentError) is errors.TrainingTypeError
    assert errors.type_error_for(errors.DistributedError) is errors.TrainingTypeError
    assert errors.type_error_for(errors.HeadError) is errors.FreezeflowTypeError
    assert errors.type_error_for(errors.PolicyTypeError) is errors.PolicyTypeError


def test_not_selected_is_a_key_error_with_a_readable_message() -> None:
    cnn = make_small_cnn()
    selection = ff.name("head").select(cnn)
    with pytest.raises(ff.errors.NotSelectedError) as info:
        selection["stem.0.weight"]
    assert isinstance(info.value, KeyError)
    assert str(info.value).startswith("'stem.0.weight' is not")
    assert selection.get("stem.0.weight") is None  # the Mapping protocol still works
    assert "stem.0.weight" not in selection


def test_check_int_accepts_integers_from_low_up() -> None:
    assert check_int("n", 0, 0) == 0
    assert check_int("n", 5, 1) == 5


@pytest.mark.parametrize(("value", "shown"), [(0, "0"), (-2, "-2")])
def test_check_int_below_low_is_a_value_error(value: object, shown: str) -> None:
    with pytest.raises(ff.errors.OptimizerError) as info:
        check_int("f(n)", value, 1, ff.errors.OptimizerError, "pass a count")
    assert not isinstance(info.value, TypeError)
    assert str(info.value) == f"f(n): expected an integer >= 1, got {shown}; hint: pass a count"
    with pytest.raises(ff.ScheduleError, match=rf"^f\(n\): expected an integer >= 1, got {shown}$"):
        check_int("f(n)", value, 1)


@pytest.mark.parametrize(
    ("value", "shown"),
    [(True, "True"), (1.0, "1.0"), ("3", "'3'"), (None, "None")],
)
def test_check_int_not_an_integer_is_the_familys_type_error(value: object, shown: str) -> None:
    with pytest.raises(ff.errors.OptimizerTypeError) as info:
        check_int("f(n)", value, 1, ff.errors.OptimizerError, "pass a count")
    assert not isinstance(info.value, ValueError)
    kind = type(value).__name__
    assert str(info.value) == (
        f"f(n): expected an integer >= 1, got {shown} of type {kind}; hint: pass a count"
    )
    with pytest.raises(ff.errors.ScheduleTypeError, match=rf"got {shown} of type {kind}$"):
        check_int("f(n)", value, 1)
    with pytest.raises(ff.errors.FreezeflowTypeError):
        check_int("f(n)", value, 1, ff.errors.HeadError)


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


# --------------------------------------------------------------------------- the whole package
# Every module under src/freezeflow, read with ast and imported: no exception class outside
# errors.py, and no raise of anything but a freezeflow error, except where listed here.

PACKAGE = Path(ff.__file__).parent

CONTROL_FLOW = {("training/prefix.py", "_Stop")}
"""Private exception classes that are control flow, not errors: raised and caught inside one
function, never seen by a user (``_Stop`` ends a forward pass at the cut)."""

BUILTIN_ALLOWED = {
    ("__main__.py", "SystemExit"): "the exit status of the command line",
}
"""Builtin exceptions raised on purpose: (module, class) -> why. ``NotImplementedError`` is
allowed in an abstract method (a body of a docstring and the raise) only."""

DATA_READERS = {
    ("core/serialize.py", "_import_type"): "resolves a module type named in policy data",
    ("integrations/_hf_callback.py", "resume_from"): "reads the state file of a checkpoint",
}
"""Functions that read plain data (JSON/YAML values, saved states) besides those named
``*from_data``, ``*from_dict``, ``*from_json``, ``*from_yaml`` or ``load_state_dict``:
(module, function) -> why. What they refuse is a wrong value in the data, whatever its type,
so they raise a ``ValueError``, as ``json`` and ``yaml`` do."""

REASONS = (ff.errors.CacheRefused,)
"""Refusals whose message is a reason, caught inside fit() (which then trains uncached),
whatever the test that found it."""

_TO_SWITCH = "a wrong type raises {}: use {}"
PENDING: set[tuple[str, str, str, str]] = set()
"""Raise sites of the wrong class in modules being rewritten (module, function, class raised,
problem), each to be switched to the class :func:`check_raise` asks for, then removed here;
a site fixed but still listed fails :func:`test_every_raise_raises_a_freezeflow_error` too,
so this list only shrinks."""


@dataclass(frozen=True)
class RaiseSite:
    module: str  # path under src/freezeflow
    function: str  # qualified name of the enclosing function, "" at module level
    line: int
    raised: str  # the expression raised (the callee, for a call)
    cls: type[BaseException] | None  # what it resolves to; None: a re-raise of a caught one
    type_test: str | None  # the test of the `if` it sits under, when that tests only types
    tested: tuple[str, ...]  # what that test checks the type of
    message: ast.expr | None  # the first argument, for a call


def _is_type_call(node: ast.expr) -> bool:
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in ("isinstance", "issubclass", "callable")
    )


def _type_test(test: ast.expr, negated: bool) -> bool:
    """Whether ``test`` (negated when the raise is in the else branch) is true exactly when
    something has the wrong type: a negated isinstance/issubclass/callable, or an ``or`` of
    such tests (and of positive ones) with at least one negated."""

    def negations(node: ast.expr, neg: bool) -> int | None:
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            return negations(node.operand, not neg)
        if _is_type_call(node):
            return int(neg)
        if isinstance(node, ast.BoolOp):
            # not (a and b) == (not a) or (not b): an `and` under a negation is an `or`
            if isinstance(node.op, ast.Or) == neg:
                return None
            counts = [negations(v, neg) for v in node.values]
            return None if None in counts else sum(c or 0 for c in counts)
        return None

    found = negations(test, negated)
    return found is not None and found > 0


def _annotation_class(
    func: ast.FunctionDef | ast.AsyncFunctionDef | None, name: str, namespace: dict[str, Any]
) -> type[BaseException] | None:
    """The X of a parameter ``name: type[X]`` of ``func``."""
    if func is None:
        return None
    for arg in [*func.args.args, *func.args.kwonlyargs]:
        ann = arg.annotation
        if arg.arg == name and isinstance(ann, ast.Subscript) and ast.unparse(ann.value) == "type":
            found = eval(ast.unparse(ann.slice), namespace)
            return found if isinstance(found, type) else None
    return None


def _caught_names(func: ast.AST | None) -> set[str]:
    return (
        {h.name for h in ast.walk(func) if isinstance(h, ast.ExceptHandler) and h.name is not None}
        if func is not None
        else set()
    )


def raise_sites(path: Path, namespace: dict[str, Any]) -> list[RaiseSite]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    module = path.relative_to(PACKAGE).as_posix()
    parents: dict[ast.AST, ast.AST] = {}
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            parents[child] = node
    sites = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Raise) or node.exc is None:
            continue
        names, func, up = [], None, parents.get(node)
        while up is not None:
            if isinstance(up, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.append(up.name)
                if func is None and not isinstance(up, ast.ClassDef):
                    func = up
            up = parents.get(up)
        call = node.exc if isinstance(node.exc, ast.Call) else None
        target = call.func if call is not None else node.exc
        raised = ast.unparse(target)
        cls: type[BaseException] | None
        if isinstance(target, ast.Name) and target.id in _caught_names(func):
            cls = None
        elif isinstance(target, ast.Call):  # raise make_error(...)(message)
            maker = eval(ast.unparse(target.func), namespace)
            returned = inspect.get_annotations(maker, eval_str=True).get("return")
            cls = typing.get_args(returned)[0] if typing.get_origin(returned) is type else None
            assert cls is not None, f"{module}:{node.lineno}: {raised} returns {returned}"
        else:
            try:
                cls = eval(raised, namespace)
            except NameError:
                assert isinstance(target, ast.Name), raised
                cls = _annotation_class(func, target.id, namespace)
            assert isinstance(cls, type) and issubclass(cls, BaseException), (
                f"{module}:{node.lineno}: cannot tell what `raise {raised}` raises"
            )
        parent = parents.get(node)
        type_test: str | None = None
        tested: tuple[str, ...] = ()
        if isinstance(parent, ast.If):
            negated = node in parent.orelse
            if _type_test(parent.test, negated):
                type_test = ast.unparse(parent.test)
                tested = tuple(
                    ast.unparse(c.args[0])
                    for c in ast.walk(parent.test)
                    if isinstance(c, ast.Call) and _is_type_call(c)
                )
        message = call.args[0] if call is not None and call.args else None
        sites.append(
            RaiseSite(
                module,
                ".".join(reversed(names)),
                node.lineno,
                raised,
                cls,
                type_test,
                tested,
                message,
            )
        )
    return sites


def reads_data(site: RaiseSite) -> bool:
    parts = site.function.split(".")
    suffixes = ("from_data", "from_dict", "from_json", "from_yaml", "load_state_dict")
    return any(p.endswith(suffixes) for p in parts) or any(
        (site.module, p) in DATA_READERS for p in parts
    )


def _is_abstract_stub(path: Path, site: RaiseSite) -> bool:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    around = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef) and node.lineno <= site.line <= (node.end_lineno or 0)
    ]
    if not around:
        return False
    innermost = max(around, key=lambda node: node.lineno)
    body = [s for s in innermost.body if not isinstance(s, ast.Expr)]  # the docstring aside
    return len(body) == 1 and isinstance(body[0], ast.Raise)


def check_raise(path: Path, site: RaiseSite) -> str | None:
    """What is wrong with one raise site, or None."""
    cls = site.cls
    if cls is None:  # re-raising what was caught
        return None
    if (site.module, cls.__name__) in CONTROL_FLOW:
        return None
    if (site.module, cls.__name__) in BUILTIN_ALLOWED:
        return None
    if cls is NotImplementedError:
        return None if _is_abstract_stub(path, site) else "NotImplementedError outside a stub"
    if not issubclass(cls, ff.FreezeflowError):
        return f"raises the builtin {cls.__name__}: use a freezeflow error"
    if site.message is None:
        return "raises an error without a message"
    literal = isinstance(site.message, (ast.JoinedStr, ast.Constant))
    hinted = "hint: " in ast.unparse(site.message)
    if issubclass(cls, TypeError) and literal and not hinted and site.module != "errors.py":
        return "a type error without a hint"
    if site.type_test is None or issubclass(cls, REASONS):
        return None
    shown = {ast.unparse(n) for n in ast.walk(site.message)} if site.message else set()
    if isinstance(site.message, ast.JoinedStr) and not shown & set(site.tested):
        return f"the message does not show the value whose type is wrong ({site.tested})"
    if reads_data(site):
        if not issubclass(cls, ValueError):
            return f"reading data raises {cls.__name__}: use a ValueError (a wrong value in it)"
    elif not issubclass(cls, TypeError):
        wanted = ff.errors.type_error_for(cls).__name__
        return _TO_SWITCH.format(cls.__name__, wanted)
    return None


def _modules() -> list[tuple[Path, dict[str, Any]]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        module = importlib.import_module(name)
        found.append((path, vars(module)))
    return found


def test_every_raise_raises_a_freezeflow_error() -> None:
    problems, pending = [], set()
    for path, namespace in _modules():
        for site in raise_sites(path, namespace):
            problem = check_raise(path, site)
            if problem is None:
                continue
            key = (site.module, site.function, site.raised, problem)
            if key in PENDING:
                pending.add(key)
            else:
                problems.append(f"{site.module}:{site.line} ({site.function}) {problem}")
    assert not problems, "\n".join(problems)
    assert pending == PENDING, (
        f"fixed, so remove them from PENDING in tests/test_errors.py: {PENDING - pending}"
    )


def test_every_warning_is_a_freezeflow_warning() -> None:
    found, wrong = 0, []
    for path, namespace in _modules():
        module = path.relative_to(PACKAGE).as_posix()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.Call) and ast.unparse(node.func) == "warnings.warn"):
                continue
            found += 1
            given = [k.value for k in node.keywords if k.arg == "category"] + node.args[1:2]
            category = eval(ast.unparse(given[0]), namespace) if given else UserWarning
            if not issubclass(category, ff.FreezeflowWarning):
                wrong.append(f"{module}:{node.lineno} warns with {category.__name__}")
    assert found >= 5  # the walk sees the warnings there are
    assert not wrong, wrong


def _is_exception_base(base: ast.expr, namespace: dict[str, Any]) -> bool:
    try:
        found = eval(ast.unparse(base), namespace)
    except NameError:  # a name imported inside a function: judged by its name
        return ast.unparse(base).rpartition(".")[2].endswith(("Error", "Exception", "Warning"))
    return isinstance(found, type) and issubclass(found, BaseException)


def test_no_exception_class_outside_errors() -> None:
    found = []
    for path, namespace in _modules():
        if path.name == "errors.py" and path.parent == PACKAGE:
            continue
        module = path.relative_to(PACKAGE).as_posix()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ClassDef):
                continue
            exception = any(_is_exception_base(b, namespace) for b in node.bases)
            if exception and (module, node.name) not in CONTROL_FLOW:
                found.append(f"{module}:{node.lineno} {node.name}")
    assert not found, f"exception classes outside freezeflow/errors.py: {found}"


# the checks themselves, on a made-up module


SAMPLE = '''
from freezeflow.errors import PolicyError, PolicyTypeError


def f(x, error: type[PolicyError] = PolicyError):
    if not isinstance(x, int):
        raise PolicyError(f"x: expected an int, got {x!r}")
    if x < 0 or not callable(x):
        raise PolicyError(f"x={x}")
    if isinstance(x, bool) or not isinstance(x, int):
        raise PolicyTypeError(f"x={x!r}; hint: an int")
    if not callable(x):
        raise PolicyTypeError(f"expected a callable, got {type(None)}; hint: pass one")
    if not callable(x):
        raise PolicyTypeError(f"expected a callable, got {x!r}")
    if isinstance(x, str):
        pass
    else:
        raise ValueError("x")
    try:
        pass
    except KeyError as exc:
        raise exc
    raise error()


def stage_from_data(x):
    if not isinstance(x, dict):
        raise PolicyError(f"{x!r}: expected a mapping")
    if not isinstance(x, list):
        raise PolicyTypeError(f"{x!r}: expected a list; hint: [1]")


class Base:
    def stub(self):
        """Abstract."""
        raise NotImplementedError

    def partial(self):
        x = 1
        raise NotImplementedError(x)
'''


def test_the_checks_find_what_they_look_for(tmp_path: Path) -> None:
    package = tmp_path
    path = package / "sample.py"
    path.write_text(SAMPLE)
    namespace: dict[str, Any] = {}
    exec(compile(SAMPLE, str(path), "exec"), namespace)
    global PACKAGE
    saved, PACKAGE = PACKAGE, package
    try:
        sites = sorted(raise_sites(path, namespace), key=lambda s: s.line)
        found = [(s.function, s.raised, check_raise(path, s)) for s in sites]
    finally:
        PACKAGE = saved
    assert found == [
        ("f", "PolicyError", "a wrong type raises PolicyError: use PolicyTypeError"),
        ("f", "PolicyError", None),  # a test of a value, or of both: not checked
        ("f", "PolicyTypeError", None),
        (
            "f",
            "PolicyTypeError",
            "the message does not show the value whose type is wrong (('x',))",
        ),
        ("f", "PolicyTypeError", "a type error without a hint"),
        ("f", "ValueError", "raises the builtin ValueError: use a freezeflow error"),
        ("f", "exc", None),
        ("f", "error", "raises an error without a message"),
        ("stage_from_data", "PolicyError", None),
        (
            "stage_from_data",
            "PolicyTypeError",
            "reading data raises PolicyTypeError: use a ValueError (a wrong value in it)",
        ),
        ("Base.stub", "NotImplementedError", None),
        ("Base.partial", "NotImplementedError", "NotImplementedError outside a stub"),
    ], found
