"""A refused call leaves everything as it was (issue 22), checked with the snapshot harness
(tests/snapshot.py): model, optimizer, LR scheduler, unfreezer, files and random states.

- the harness itself: it sees each kind of change, and taking a snapshot changes nothing;
- every refusal docs/faq.md quotes (tests/faq_messages.py sets each up): the error class the
  FAQ names, the message the FAQ quotes, and nothing changed; the warnings the FAQ quotes are
  given once, with the quoted message;
- bad input, drawn by hypothesis, against the public entry points (policies written as data,
  schedule data, the knobs of ``ff.auto``): a ``FreezeflowError`` whose message names the
  offending value, and nothing changed.
"""

from __future__ import annotations

import math
import random
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faq_messages
import numpy as np
import paths
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from models import Net, make_net, three_stage
from snapshot import Snapshot, unchanged
from torch import nn
from torch.optim import lr_scheduler as lrs

import freezeflow as ff
from freezeflow.core.serialize import policy_from_data

pytestmark = pytest.mark.usefixtures("single_thread")

FAQ = paths.DOCS / "faq.md"


def faq_quotes() -> set[str]:
    """The messages quoted under "Things freezeflow refuses or warns about": each ``> ...``
    line, and each fenced block (its ``:option:`` lines aside)."""
    text = FAQ.read_text(encoding="utf-8")
    section = text.split("## Things freezeflow refuses or warns about", 1)[1].split("\n## ")[0]
    quotes: set[str] = set()
    block: list[str] | None = None
    for line in section.splitlines():
        if line.startswith("```"):
            if block is not None:
                quotes.add("\n".join(block).strip())
            block = [] if block is None else None
        elif block is not None:
            if not line.startswith(":"):
                block.append(line)
        elif line.startswith("> "):
            quotes.add(line[2:])
    return quotes


# --------------------------------------------------------------------------- the harness


def _nudge(t: torch.Tensor) -> None:
    """Change one element of ``t`` by one unit in the last place."""
    with torch.no_grad():
        flat = t.view(-1)
        flat[0] = torch.nextafter(flat[0], flat[0] + 1)


def _trained(tmp_path: Path) -> tuple[Net, torch.optim.Optimizer, Any]:
    model = make_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = lrs.StepLR(opt, step_size=1)
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    opt.step()
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "a.pt").write_bytes(b"0123")
    return model, opt, sched


# each: what to change, and a fragment of the line the harness must report
CHANGES: dict[str, tuple[Callable[[Any, Any, Any, Path], object], str]] = {
    "a parameter, one ulp": (
        lambda m, o, s, p: _nudge(m.head.weight),
        r"parameter values: head\.weight: 1 of 12 element",
    ),
    "a parameter object": (
        lambda m, o, s, p: setattr(m.head, "bias", nn.Parameter(m.head.bias.detach().clone())),
        r"parameter objects: head\.bias",
    ),
    "a flag": (
        lambda m, o, s, p: m.stem[0].weight.requires_grad_(False),
        r"requires_grad: stem\.0\.weight: True -> False",
    ),
    "a gradient dropped": (
        lambda m, o, s, p: setattr(m.head.weight, "grad", None),
        r"gradients: head\.weight: tensor.* -> None",
    ),
    "a gradient changed": (
        lambda m, o, s, p: _nudge(m.head.weight.grad),
        r"gradients: head\.weight: 1 of",
    ),
    "a buffer": (
        lambda m, o, s, p: m.stem[1].running_mean.add_(1),
        r"buffers: stem\.1\.running_mean: 4 of 4",
    ),
    "a training mode": (
        lambda m, o, s, p: m.head.eval(),
        r"training modes: head: \(True, None\) -> \(False, None\)",
    ),
    "a norm lock": (
        lambda m, o, s, p: ff.freeze(m, "stem", norm="frozen"),
        r"training modes: stem\.1: .* -> \(False, 'frozen'\)",
    ),
    "a module's settings": (
        lambda m, o, s, p: setattr(m.stem[1], "eps", 0.1),
        r"module settings: stem\.1: '4, eps=1e-05.* -> '4, eps=0\.1",
    ),
    "a module replaced": (
        lambda m, o, s, p: setattr(m, "head", nn.Linear(4, 3)),
        r"modules: head: <Linear",
    ),
    "a hyper-parameter": (
        lambda m, o, s, p: o.param_groups[0].update(lr=0.2),
        r"param_groups: group 0: \{'lr': 0\.1 -> 0\.2",
    ),
    "a group's members": (
        lambda m, o, s, p: o.param_groups[0].update(params=o.param_groups[0]["params"][:-1]),
        r"group 0 params: lost \['head\.bias'\], gained \[\]",
    ),
    "a group added": (
        lambda m, o, s, p: o.add_param_group({"params": [nn.Parameter(torch.zeros(1))]}),
        r"param_groups: count: 1 -> 2",
    ),
    "optimizer state": (
        lambda m, o, s, p: o.state[m.head.weight]["momentum_buffer"].mul_(2),
        r"optimizer state: head\.weight: \{'momentum_buffer'",
    ),
    "optimizer state dropped": (
        lambda m, o, s, p: o.state.clear(),
        r"optimizer state: head\.weight removed",
    ),
    "the LR scheduler": (lambda m, o, s, p: s.step(), r"LR scheduler state: last_epoch: 0 -> 1"),
    "a file written": (
        lambda m, o, s, p: (p / "run" / "b.pt").write_bytes(b""),
        r"files under .*: b\.pt added",
    ),
    "a file's bytes": (
        lambda m, o, s, p: (p / "run" / "a.pt").write_bytes(b"0124"),
        r"files under .*: a\.pt: \('file', 4",
    ),
    "a file removed": (
        lambda m, o, s, p: (p / "run" / "a.pt").unlink(),
        r"files under .*: a\.pt removed",
    ),
    "a folder made": (
        lambda m, o, s, p: (p / "run" / "sub").mkdir(),
        r"files under .*: sub added \('folder'\)",
    ),
    "torch's generator": (lambda m, o, s, p: torch.rand(1), r"random states: torch \(CPU\)"),
    "numpy's generator": (lambda m, o, s, p: np.random.rand(), r"random states: numpy"),
    "Python's random": (lambda m, o, s, p: random.random(), r"random states: random"),
    "grad mode": (
        lambda m, o, s, p: torch.set_grad_enabled(False),
        r"torch switches: grad enabled: True -> False",
    ),
}


@pytest.mark.parametrize("what", sorted(CHANGES))
def test_the_harness_reports_each_kind_of_change(what: str, tmp_path: Path) -> None:
    change, reported = CHANGES[what]
    model, opt, sched = _trained(tmp_path)
    snap = Snapshot.take(model, opt, tmp_path / "run", sched)
    with torch.enable_grad():
        change(model, opt, sched, tmp_path)
        lines = snap.differences()
        with pytest.raises(AssertionError, match=r"thing\(s\) changed"):
            snap.assert_unchanged()
    assert lines, what
    assert any(re.search(reported, line) for line in lines), lines


def test_taking_a_snapshot_changes_nothing(tmp_path: Path) -> None:
    model, opt, sched = _trained(tmp_path)
    model.stem[1].eval()
    first = Snapshot.take(model, opt, tmp_path / "run", sched)
    second = Snapshot.take(model, opt, tmp_path / "run", sched)
    assert first.differences() == second.differences() == []
    first.assert_unchanged()
    assert not model.stem[1].training and model.training


def test_a_folder_that_appears_is_a_change(tmp_path: Path) -> None:
    snap = Snapshot.take(folder=tmp_path / "checkpoints")
    (tmp_path / "checkpoints").mkdir()
    assert snap.differences() == [
        f"files under {tmp_path / 'checkpoints'}: .: 'absent' -> 'folder'"
    ]


def test_values_compare_bit_for_bit() -> None:
    """nan equals nan (nothing changed), -0.0 differs from 0.0 (something did)."""
    p = nn.Parameter(torch.tensor([float("nan"), 0.0]))
    model = nn.Linear(1, 1)
    model.weight = p
    snap = Snapshot.take(model)
    assert snap.differences() == []
    with torch.no_grad():
        p[1] = -0.0
    assert snap.differences() == ["parameter values: weight: 1 of 2 element(s) differ"]


def test_with_unchanged_checks_after_pytest_raises() -> None:
    model = make_net()

    def refused_too_late() -> None:
        model.head.weight.requires_grad_(False)
        raise RuntimeError("refused, but too late")

    def checked() -> None:
        with unchanged(model), pytest.raises(RuntimeError):
            refused_too_late()

    with pytest.raises(AssertionError, match=r"requires_grad: head\.weight: True -> False"):
        checked()


# --------------------------------------------------------------------------- the FAQ refusals

REFUSALS = sorted(k for k, c in faq_messages.CASES.items() if c.raises is not None)
WARNINGS = sorted(k for k, c in faq_messages.CASES.items() if c.warns is not None)


def test_every_faq_quote_is_a_case() -> None:
    assert len(faq_quotes()) == len(faq_messages.CASES)
    assert REFUSALS and WARNINGS


@pytest.mark.parametrize("key", REFUSALS)
def test_a_faq_refusal_changes_nothing(key: str) -> None:
    case = faq_messages.CASES[key]
    assert case.raises is not None
    scene = case.setup()
    snap = Snapshot.take(
        scene.model, scene.optimizer, scheduler=scene.scheduler, unfreezer=scene.unfreezer
    )
    with pytest.raises(case.raises) as info:
        scene.call()
    assert str(info.value) in faq_quotes()
    snap.assert_unchanged()


@pytest.mark.parametrize("key", ["nothing to train", "auto budget"])
def test_fit_refuses_before_building_anything_or_writing(key: str, tmp_path: Path) -> None:
    """The two fit() refusals, with the user's own optimizer, a scheduler over it and a
    checkpoint folder: fit() builds nothing over them and writes nothing."""
    model = make_net()
    if key == "nothing to train":
        ff.freeze(model, ff.everything())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = lrs.StepLR(opt, step_size=1)
    data = [(torch.randn(4, 3, 8, 8), torch.randint(0, 3, (4,)))]
    schedule = ff.auto(7) if key == "auto budget" else None
    folder = tmp_path / "run"
    with (
        unchanged(model, opt, folder, sched),
        pytest.raises(faq_messages.CASES[key].raises or Exception),
    ):
        ff.fit(
            model,
            data,
            epochs=5 if schedule else 1,
            schedule=schedule,
            optimizer=opt,
            scheduler=sched,
            callbacks=[ff.Checkpoint(folder)],
        )


@pytest.mark.parametrize("key", WARNINGS)
def test_a_faq_warning_is_given_once_as_quoted(key: str) -> None:
    case = faq_messages.CASES[key]
    assert case.warns is not None
    scene = case.setup()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scene.call()
    ours = [w for w in caught if issubclass(w.category, ff.errors.FreezeflowWarning)]
    assert [w.category for w in ours] == [case.warns]
    assert str(ours[0].message) in faq_quotes()


# --------------------------------------------------------------------------- bad input

NET = make_net()
NET_NAMES = {n for n, _ in NET.named_parameters()} | {n for n, _ in NET.named_modules()}
KEYWORDS = {"everything", "nothing", "norm_layers"}

PROPERTY = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

not_bools = st.one_of(st.integers(), st.floats(), st.text(max_size=5), st.none())
not_ints = st.one_of(st.floats(), st.text(max_size=5), st.booleans(), st.none())
not_numbers = st.one_of(
    st.text(max_size=5), st.booleans(), st.none(), st.lists(st.integers(), max_size=2)
)


def _compiles(pattern: str) -> bool:
    try:
        re.compile(pattern)
    except re.error:
        return False
    return True


# (data, the offending value the message must name)
_bad_policy_leaves: st.SearchStrategy[tuple[Any, Any]] = st.one_of(
    st.text("abcdefghijklmnopqrstuvwxyz0123456789._", min_size=1, max_size=12)
    .filter(lambda s: s not in NET_NAMES and s not in KEYWORDS)
    .map(lambda s: (s, s)),
    st.one_of(st.integers(), st.floats(), st.none(), st.booleans(), st.just([]), st.just({})).map(
        lambda v: (v, v)
    ),
    st.lists(st.integers(), min_size=1, max_size=3).map(lambda v: (v, v)),
    st.tuples(
        st.sampled_from(["first", "last"]), st.one_of(st.integers(max_value=0), not_ints)
    ).map(lambda kv: ({kv[0]: kv[1]}, kv[1])),
    st.tuples(
        st.sampled_from(["blocks", "layers"]),
        st.integers(-3, 3),
        not_ints.filter(lambda v: v is not None),
    ).map(lambda t: ({t[0]: [t[1], t[2]]}, t[2])),
    st.tuples(
        st.sampled_from(["blocks", "layers"]),
        st.one_of(st.integers(), st.text(max_size=3), st.lists(st.integers(), max_size=1)),
    ).map(lambda t: ({t[0]: t[1]}, t[1])),
    st.from_regex(r"[a-z]{1,6}\.[A-Z][a-z]{1,6}", fullmatch=True).map(lambda s: ({"type": s}, s)),
    st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=8)
    .filter(
        lambda k: (
            k
            not in (
                "strict",
                "name",
                "regex",
                "type",
                "blocks",
                "layers",
                "first",
                "last",
                "or",
                "and",
                "minus",
                "not",
            )
        )
    )
    .map(lambda k: ({"name": "head", k: True}, k)),
    not_bools.filter(lambda v: not isinstance(v, bool)).map(
        lambda v: ({"name": "head", "strict": v}, v)
    ),
    st.text(max_size=6).filter(lambda s: not _compiles(s)).map(lambda s: ({"regex": s}, s)),
    st.sampled_from(["or", "and", "minus"]).flatmap(
        lambda k: st.one_of(st.just([]), st.integers(), st.text(max_size=3)).map(
            lambda v: ({k: v}, v)
        )
    ),
)


@st.composite
def bad_policies(draw: st.DrawFn) -> tuple[Any, Any]:
    """Bad policy data, alone or nested inside a combinator."""
    data, offending = draw(_bad_policy_leaves)
    wrap = draw(st.sampled_from(["alone", "not", "or", "minus"]))
    if wrap == "not":
        return {"not": data}, offending
    if wrap == "or":
        return {"or": ["head", data]}, offending
    if wrap == "minus":
        return {"minus": [data, "head"]}, offending
    return data, offending


def _names(exc: BaseException, value: Any) -> bool:
    return repr(value) in str(exc) or (isinstance(value, str) and value in str(exc))


@PROPERTY
@given(bad_policies())
def test_bad_policy_data_is_refused_and_changes_nothing(case: tuple[Any, Any]) -> None:
    data, offending = case
    opt = torch.optim.SGD(NET.parameters(), lr=0.1)
    with unchanged(NET, opt), pytest.raises(ff.errors.FreezeflowError) as info:
        ff.freeze(NET, policy_from_data(data))
    assert _names(info.value, offending), (data, str(info.value))


STAGE_BAD_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "lr": st.one_of(st.floats(max_value=0.0), st.just(math.inf), st.just(math.nan), not_numbers),
    "weight_decay": st.one_of(
        st.floats(max_value=-1e-300),
        st.just(math.inf),
        st.just(math.nan),
        not_numbers.filter(lambda v: v is not None),
    ),
    "lr_decay": st.one_of(
        st.floats(max_value=0.0),
        st.floats(min_value=1.0, exclude_min=True),
        st.just(math.nan),
        not_numbers.filter(lambda v: v is not None),
    ),
    "start": st.one_of(
        st.integers(max_value=-1),
        st.floats(),
        st.text(max_size=5),
        st.booleans(),
        st.dictionaries(
            st.text("abcxyz", min_size=1, max_size=4), st.integers(), min_size=1, max_size=1
        ),
        st.sampled_from(["epoch", "step"]).flatmap(
            lambda k: st.one_of(st.integers(max_value=-1), not_ints).map(lambda v: {k: v})
        ),
        # (0.0 is a fraction, refused as "the beginning of training, 0%")
        st.one_of(st.floats(max_value=-1e-300), st.floats(min_value=1.0), not_numbers).map(
            lambda v: {"fraction": v}
        ),
    ),
    "name": st.one_of(
        st.just(""), st.text(max_size=3).map(lambda s: s + "/"), st.integers(), st.booleans()
    ),
    "reset_state": not_bools.filter(lambda v: not isinstance(v, bool) and v is not None),
    "exclusive": not_bools.filter(lambda v: not isinstance(v, bool) and v is not None),
}
PLATEAU_BAD_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "patience": st.one_of(st.integers(max_value=0), not_ints.filter(lambda v: v is not None)),
    # (a bool min_delta and any metric are accepted: see the known gaps below)
    "min_delta": st.one_of(
        st.floats(max_value=-1e-300), st.just(math.inf), st.just(math.nan), st.text(max_size=3)
    ),
    "mode": st.one_of(st.text(max_size=4), st.integers()).filter(lambda m: m not in ("min", "max")),
    "max_epoch": st.one_of(st.integers(max_value=-1), st.floats(), st.text(max_size=3)),
}
_STAGE_KEYS = {
    "trainable",
    "lr",
    "weight_decay",
    "start",
    "lr_decay",
    "reset_state",
    "exclusive",
    "name",
}


@st.composite
def bad_stages(draw: st.DrawFn) -> tuple[dict[str, Any], Any]:
    """A second stage with one bad key or value (the offending value: inside a trigger's
    mapping, its value)."""
    stage: dict[str, Any] = {"trainable": "body.1", "lr": 1e-3, "start": 1}
    kind = draw(st.sampled_from([*STAGE_BAD_VALUES, "unknown key", "trainable", "plateau"]))
    if kind == "plateau":  # one bad option of an on_plateau start
        option, value = draw(
            st.sampled_from(sorted(PLATEAU_BAD_VALUES)).flatmap(
                lambda k: PLATEAU_BAD_VALUES[k].map(lambda v: (k, v))
            )
        )
        return {**stage, "start": {"plateau": {option: value}}}, value
    if kind == "unknown key":
        key = draw(
            st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=10).filter(
                lambda k: k not in _STAGE_KEYS
            )
        )
        return {**stage, key: 1}, key
    if kind == "trainable":
        data, offending = draw(bad_policies())
        return {**stage, "trainable": data}, offending
    value = draw(STAGE_BAD_VALUES[kind])
    offending = next(iter(value.values())) if isinstance(value, dict) and kind == "start" else value
    if (
        kind == "start"
        and isinstance(value, dict)
        and next(iter(value)) not in ("epoch", "step", "fraction")
    ):
        offending = next(iter(value))
    return {**stage, kind: value}, offending


@PROPERTY
@given(bad_stages())
def test_bad_schedule_data_is_refused_and_changes_nothing(case: tuple[dict[str, Any], Any]) -> None:
    stage, offending = case
    data = {"stages": [{"trainable": "head", "lr": 1e-2}, stage]}
    opt = torch.optim.AdamW(NET.parameters())
    with unchanged(NET, opt), pytest.raises(ff.errors.FreezeflowError) as info:
        ff.GradualUnfreezer(NET, ff.Schedule.from_dict(data), opt)
    assert _names(info.value, offending), (stage, str(info.value))


AUTO_BAD_KNOBS: dict[str, st.SearchStrategy[Any]] = {
    "lr": st.one_of(
        st.floats(max_value=0.0), st.floats(min_value=1.0), st.just(math.nan), not_numbers
    ),
    "windows": st.one_of(st.integers(max_value=0), not_ints),
    "trial_steps": st.one_of(st.integers(max_value=0), not_ints),
    "probe_batches": st.one_of(st.integers(max_value=0), not_ints),
    "seed": st.one_of(st.integers(max_value=-1), not_ints),
    "refreeze": not_bools,
    "anneal": not_bools,
    "train_norms": not_bools,
    "metric": st.one_of(st.just(""), st.integers(), st.none(), st.booleans()),
    "minutes": st.one_of(  # None is no time budget
        st.floats(max_value=0.0),
        st.just(math.inf),
        st.just(math.nan),
        st.text(max_size=5),
        st.booleans(),
        st.lists(st.integers(), max_size=2),
    ),
}


@PROPERTY
@given(
    st.one_of(
        st.one_of(st.integers(max_value=1), not_ints).map(lambda v: ("epochs", v)),
        st.sampled_from(sorted(AUTO_BAD_KNOBS)).flatmap(
            lambda k: AUTO_BAD_KNOBS[k].map(lambda v: (k, v))
        ),
    ),
    st.booleans(),
)
def test_bad_auto_knobs_are_refused_and_change_nothing(
    knob: tuple[str, Any], as_data: bool
) -> None:
    key, value = knob
    knobs = {"epochs": 7, key: value}
    opt = torch.optim.AdamW(NET.parameters())
    data = [(torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2,)))]

    def call() -> object:
        schedule = ff.Schedule.from_dict({"auto": knobs}) if as_data else ff.auto(**knobs)
        return ff.fit(NET, data, epochs=7, schedule=schedule, optimizer=opt, progress=False)

    with unchanged(NET, opt), pytest.raises(ff.errors.FreezeflowError) as info:
        call()
    assert _names(info.value, value), (knobs, str(info.value))


@PROPERTY
@given(st.integers(1, 3), st.integers(4, 30))
def test_fewer_auto_windows_than_stages_is_refused(windows: int, epochs: int) -> None:
    """A budget of 4 epochs or more has two stages after the head: one window is too few."""
    if windows >= 2:
        ff.auto(epochs, windows=windows)
        return
    with unchanged(NET), pytest.raises(ff.ScheduleError, match=rf"windows={windows}\b"):
        ff.auto(epochs, windows=windows)


FLAGS = st.one_of(st.integers(), st.text(max_size=4), st.none(), st.floats(), st.just([True]))


@PROPERTY
@given(
    st.sampled_from(
        [
            ("freeze", "eval_frozen"),
            ("freeze", "allow_empty"),
            ("unfreeze", "include_frozen_norm"),
            ("unfreeze", "allow_empty"),
        ]
    ),
    FLAGS,
)
def test_a_switch_that_is_not_a_bool_is_refused(call: tuple[str, str], value: Any) -> None:
    """``eval_frozen="no"`` is truthy: a switch takes True or False only."""
    fn, name = call
    opt = torch.optim.SGD(NET.parameters(), lr=0.1)
    with unchanged(NET, opt), pytest.raises(ff.errors.FreezeflowError) as info:
        getattr(ff, fn)(NET, "head", **{name: value})
    assert isinstance(info.value, TypeError)
    assert f"{name}={value!r}" in str(info.value)


UNFREEZER_BAD_KNOBS: dict[str, st.SearchStrategy[Any]] = {
    "norm": st.text(max_size=6).filter(lambda s: s not in ("eval", "train", "frozen", "ignore")),
    "total_steps": st.one_of(st.integers(max_value=0), not_ints.filter(lambda v: v is not None)),
    "total_epochs": st.one_of(st.integers(max_value=0), not_ints.filter(lambda v: v is not None)),
    "no_decay": st.one_of(st.integers(), st.floats(), st.booleans()),
    "optimizer": st.one_of(st.integers(), st.text(max_size=4)),
}


@PROPERTY
@given(
    st.sampled_from(sorted(UNFREEZER_BAD_KNOBS)).flatmap(
        lambda k: UNFREEZER_BAD_KNOBS[k].map(lambda v: (k, v))
    )
)
def test_bad_unfreezer_arguments_are_refused_and_change_nothing(knob: tuple[str, Any]) -> None:
    key, value = knob
    opt = torch.optim.AdamW(NET.parameters())
    kwargs: dict[str, Any] = {"optimizer": opt, key: value}
    with unchanged(NET, opt), pytest.raises(ff.errors.FreezeflowError) as info:
        ff.GradualUnfreezer(NET, three_stage(), **kwargs)
    assert _names(info.value, value), (knob, str(info.value))


# --------------------------------------------------------------------------- gaps closed

# Refusals that once changed something first, or misuse that was not refused (the unfreezer's
# switches, on_plateau's arguments, a checkpoint of another schedule found only after fit()
# built the unfreezer): each now refused before anything changes.


def test_an_unfreezer_refused_for_its_eval_frozen_leaves_the_optimizer() -> None:
    model = make_net()
    opt = torch.optim.AdamW(model.parameters())
    with unchanged(model, opt), pytest.raises(ff.errors.FreezeflowError, match="eval_frozen"):
        ff.GradualUnfreezer(model, three_stage(), opt, eval_frozen="no")  # type: ignore[arg-type]


def test_on_plateau_refuses_a_bool_min_delta() -> None:
    with pytest.raises(ff.errors.FreezeflowError, match=r"min_delta=True"):
        ff.on_plateau(min_delta=True)


@pytest.mark.parametrize("metric", [5, None, ""])
def test_on_plateau_refuses_a_metric_that_is_not_a_name(metric: Any) -> None:
    with pytest.raises(ff.errors.FreezeflowError, match=rf"metric={metric!r}"):
        ff.on_plateau(metric=metric)


def _checkpointed(folder: Path) -> None:
    model = make_net()
    data = [(torch.randn(4, 3, 8, 8), torch.randint(0, 3, (4,)))]
    ff.fit(
        model,
        data,
        epochs=1,
        schedule=three_stage(),
        callbacks=[ff.Checkpoint(folder)],
        progress=False,
    )


def _spoilt(spoil: str, folder: Path) -> tuple[Path, bool]:
    """A checkpoint folder (or what stands for one) that fit() must refuse, and whether the
    run resumes from it."""
    if spoil == "a file as the folder":
        folder.write_text("not a folder")
        return folder, False
    _checkpointed(folder)
    (latest,) = folder.glob("epoch-*.pt")
    if spoil == "a truncated file":
        latest.write_bytes(latest.read_bytes()[:1000])
    elif spoil == "random bytes":
        latest.write_bytes(bytes(range(256)) * 8)
    return folder, spoil != "another run's folder"


@pytest.mark.parametrize(
    "spoil",
    [
        "another run's folder",
        "a truncated file",
        "random bytes",
        "another model",
        "a file as the folder",
    ],
)
def test_a_refused_checkpoint_leaves_model_optimizer_and_files(spoil: str, tmp_path: Path) -> None:
    """fit() reads and checks the checkpoint folder before it builds anything (issue 22)."""
    folder, resume = _spoilt(spoil, tmp_path / "run")
    model = make_net(classes=5 if spoil == "another model" else 3)
    opt = torch.optim.AdamW(model.parameters())
    data = [(torch.randn(4, 3, 8, 8), torch.randint(0, 3, (4,)))]
    checkpoint = ff.Checkpoint(folder, resume=resume)
    with unchanged(model, opt, folder), pytest.raises(ff.errors.CheckpointError) as info:
        ff.fit(
            model,
            data,
            epochs=2,
            schedule=three_stage(),
            optimizer=opt,
            callbacks=[checkpoint],
            progress=False,
        )
    assert str(folder) in str(info.value)
    if spoil == "random bytes":
        assert "truncated or corrupt" in str(info.value)


def test_a_checkpoint_of_another_schedule_leaves_model_and_optimizer(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    _checkpointed(folder)
    model = make_net()
    opt = torch.optim.AdamW(model.parameters())
    data = [(torch.randn(4, 3, 8, 8), torch.randint(0, 3, (4,)))]
    other = ff.Schedule([ff.Stage("head", lr=1e-2), ff.Stage("body.1", lr=1e-3, start=1)])
    with unchanged(model, opt, folder), pytest.raises(ff.errors.CheckpointError):
        ff.fit(
            model,
            data,
            epochs=2,
            schedule=other,
            optimizer=opt,
            callbacks=[ff.Checkpoint(folder, resume=True)],
            progress=False,
        )
