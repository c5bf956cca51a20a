"""freezeflow.presets, the facade ``ff.presets``: it re-exports the presets that
freezeflow.schedules.presets defines (the same functions, all of them), defines nothing of its
own, and every preset builds a plain Schedule. (The recipes themselves are tested in
tests/schedules/test_presets.py.)"""

from __future__ import annotations

import inspect

import freezeflow as ff
import freezeflow.presets as facade
import freezeflow.schedules.presets as defined


def test_ff_presets_is_the_facade() -> None:
    assert ff.presets is facade


def test_it_re_exports_every_preset_as_defined() -> None:
    assert sorted(facade.__all__) == sorted(defined.__all__)
    for name in facade.__all__:
        fn = getattr(facade, name)
        assert fn is getattr(defined, name), name
        assert fn.__module__ == "freezeflow.schedules.presets", name


def test_it_defines_nothing_of_its_own() -> None:
    public = {n for n in vars(facade) if not n.startswith("_")}
    assert public == set(facade.__all__)


def test_every_preset_builds_a_plain_schedule_from_its_defaults() -> None:
    """Called with only its required arguments, each preset returns a plain Schedule (not a
    subclass) that round-trips through its data form."""
    required = {"head": "head", "parts": ["body.1", "body.0"], "n_stages": 3, "n_blocks": 3}
    for name in facade.__all__:
        fn = getattr(facade, name)
        params = inspect.signature(fn).parameters.values()
        args = {
            p.name: required[p.name]
            for p in params
            if p.default is inspect.Parameter.empty and p.kind is not p.VAR_POSITIONAL
        }
        schedule = fn(**args)
        assert type(schedule) is ff.Schedule, name
        assert ff.Schedule.from_dict(schedule.to_dict()) == schedule, name
