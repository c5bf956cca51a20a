"""The Checkpoint callback: what a checkpoint holds, retention, refusals, and resuming across
processes (including after SIGKILL at random moments). (Atomic writes, safe loads, the
manifest: tests/training/test_checkpoint_files.py.)"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from _fit_worker import make_loaders, make_model, make_schedule
from paths import TESTS
from snapshot import unchanged
from torch import nn

import freezeflow as ff
from freezeflow.errors import CheckpointError, TrainingArgumentError, TrainingTypeError
from freezeflow.training.checkpoint import Checkpoint
from freezeflow.training.checkpoint_files import (
    MANIFEST,
    checkpoint_name,
    find_checkpoint,
    load_checkpoint,
)
from freezeflow.training.history import History
from freezeflow.training.loop import fit
from freezeflow.training.run import Callback, Run
from freezeflow.training.setup import seed_everything

WORKER = TESTS / "_fit_worker.py"

pytestmark = pytest.mark.usefixtures("single_thread")


def train(
    directory: Path,
    epochs: int = 2,
    callbacks: tuple[Callback, ...] = (),
    *,
    every: int = 1,
    keep_last: int | None = 3,
    keep_best: str | tuple[str, Any] | None = None,
    **kw: Any,
) -> tuple[nn.Module, History]:
    train_data, val = make_loaders(n_train=64)
    model = kw.pop("model", None) or make_model()
    seed_everything(0)
    checkpoint = Checkpoint(
        directory,
        every=every,
        keep_last=keep_last,
        keep_best=keep_best,
        resume=kw.pop("resume", False),
    )
    history = fit(
        model,
        train_data,
        schedule=kw.pop("schedule", make_schedule()),
        val_data=val,
        epochs=epochs,
        callbacks=[*callbacks, checkpoint],
        progress=False,
        **kw,
    )
    return model, history


def refused(directory: Path, match: str, **kw: Any) -> None:
    """:func:`train` with ``kw``, refused with a CheckpointError matching ``match``: the
    model, the files under ``directory`` and every random state as they were
    (tests/snapshot.py; ``train`` seeds with 0 before fit(), so a refusal that draws nothing
    leaves the seed-0 states)."""
    model = make_model()
    seed_everything(0)
    with unchanged(model, folder=directory), pytest.raises(CheckpointError, match=match):
        train(directory, model=model, **kw)


# --------------------------------------------------------------------------- what it holds


def test_checkpoint_holds_everything_and_loads_weights_only(tmp_path: Path) -> None:
    train(tmp_path, epochs=2)
    latest = find_checkpoint(True, tmp_path)
    assert latest == tmp_path / "epoch-0002.pt"
    ckpt = torch.load(latest, weights_only=True)
    assert {"model", "optimizer", "unfreezer", "scaler", "rng", "history", "position"} <= set(ckpt)
    assert set(ckpt["rng"]) >= {"torch", "python", "numpy", "generators"}
    assert ckpt["position"] == {"epoch": 2, "batch": 0, "step": 4}
    assert [r["kind"] for r in ckpt["history"]] == ["transition", "epoch", "epoch"]


# --------------------------------------------------------------------------- retention


def test_keeps_last_k_and_the_best(tmp_path: Path) -> None:
    scores = iter([0.5, 0.1, 0.9, 0.8, 0.7])

    class Score(Callback):
        def on_evaluate(self, run: Run, logs: dict[str, float]) -> None:
            logs["score"] = next(scores)

    train(tmp_path, epochs=5, callbacks=(Score(),), keep_last=2, keep_best=("score", "min"))
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["epoch-0002.pt", "epoch-0004.pt", "epoch-0005.pt", MANIFEST]
    import json

    manifest = json.loads((tmp_path / MANIFEST).read_text())
    assert (manifest["latest"], manifest["best"]) == ("epoch-0005.pt", "epoch-0002.pt")


def test_checkpoint_every_and_at_the_end(tmp_path: Path) -> None:
    train(tmp_path, epochs=5, every=2, keep_last=None)
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == [
        "epoch-0002.pt",
        "epoch-0004.pt",
        "epoch-0005.pt",
    ]


def test_a_checkpoint_with_the_defaults(tmp_path: Path) -> None:
    train_data, _ = make_loaders(n_train=64)
    ckpt = Checkpoint(str(tmp_path / "run"))
    fit(make_model(), train_data, epochs=5, callbacks=[ckpt], progress=False)
    assert sorted(p.name for p in (tmp_path / "run").glob("*.pt")) == [
        checkpoint_name(e)
        for e in (3, 4, 5)  # every epoch, the last 3 kept
    ]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"every": 0}, TrainingArgumentError, r"Checkpoint\(every=\).*got 0"),
        ({"every": True}, TrainingTypeError, r"Checkpoint\(every=\).*got True of type bool"),
        (
            {"keep_last": 0},
            TrainingArgumentError,
            r"Checkpoint\(keep_last=\).*got 0.*None to keep every file",
        ),
        ({"keep_last": True}, TrainingTypeError, r"Checkpoint\(keep_last=\).*got True"),
        ({"keep_last": 2.0}, TrainingTypeError, r"Checkpoint\(keep_last=\).*got 2.0"),
        (
            {"keep_best": ("score", "up")},
            TrainingArgumentError,
            r"keep_best=\('score', 'up'\).*'min' or 'max'",
        ),
    ],
)
def test_checkpoint_refuses_bad_arguments(
    tmp_path: Path, kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        Checkpoint(tmp_path, **kwargs)
    assert not list(tmp_path.iterdir())


def test_fresh_run_refuses_a_directory_with_checkpoints(tmp_path: Path) -> None:
    train(tmp_path, epochs=1)
    refused(tmp_path, r"already holds checkpoints.*resume=True", epochs=1)


def test_resume_true_on_an_empty_directory_starts_fresh(tmp_path: Path) -> None:
    _, history = train(tmp_path / "new", epochs=1, resume=True)
    assert len(history) == 1


def test_resume_finds_latest_by_scanning_without_manifest(tmp_path: Path) -> None:
    train(tmp_path, epochs=3, keep_last=None)
    (tmp_path / MANIFEST).unlink()
    assert find_checkpoint(True, tmp_path) == tmp_path / "epoch-0003.pt"
    assert find_checkpoint(tmp_path / "epoch-0001.pt", None) == tmp_path / "epoch-0001.pt"
    with pytest.raises(CheckpointError, match=r"needs the checkpoint directory"):
        find_checkpoint(True, None)
    with pytest.raises(CheckpointError, match="does not exist"):
        find_checkpoint(tmp_path / "nope.pt", None)


# --------------------------------------------------------------------------- refusals


def test_truncated_checkpoint_is_named_and_nothing_is_overwritten(tmp_path: Path) -> None:
    train(tmp_path, epochs=2)
    latest = tmp_path / "epoch-0002.pt"
    latest.write_bytes(latest.read_bytes()[:1000])
    refused(tmp_path, r"epoch-0002\.pt.*truncated or corrupt", epochs=4, resume=True)


class Payload:
    """Not a tensor or plain container: unpickling it could run code."""


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    train(tmp_path, epochs=1)
    bad = tmp_path / "evil.pt"
    ckpt = load_checkpoint(tmp_path / "epoch-0001.pt")
    ckpt["extra"] = Payload()
    torch.save(ckpt, bad)
    with pytest.raises(CheckpointError, match=r"evil\.pt.*weights_only=True"):
        load_checkpoint(bad)
    with pytest.raises(CheckpointError, match=r"refused to load .*evil\.pt"):
        train(tmp_path, epochs=2, resume=bad)


def test_checkpoint_of_another_model_or_schedule(tmp_path: Path) -> None:
    train(tmp_path, epochs=1)
    path = tmp_path / "epoch-0001.pt"
    other = make_model()
    other.head = nn.Linear(16, 5)
    start = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"epoch-0001\.pt.*another model.*head\.weight"):
        train(tmp_path, epochs=2, resume=path, model=other)
    assert all(torch.equal(v, start[k]) for k, v in other.state_dict().items())
    sched = ff.Schedule([ff.Stage("head", lr=1e-2), ff.Stage("conv", lr=1e-3, start=1)])
    with pytest.raises(CheckpointError, match=r"epoch-0001\.pt.*another schedule"):
        train(tmp_path, epochs=2, resume=path, schedule=sched)


# --------------------------------------------------------------------------- across processes


def worker(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(WORKER), str(directory), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )


def final(out: Path) -> tuple[dict[str, torch.Tensor], History]:
    data = torch.load(out, weights_only=True)
    return data["model"], History.from_json(data["history"])


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def untimed(history: History) -> list[dict[str, Any]]:
    """The records without wall-clock fields."""
    return [
        {k: v for k, v in r.items() if k not in ("seconds", "images_per_s")}
        for r in history.records
    ]


@pytest.mark.slow
def test_resume_in_a_new_process_is_bit_exact(tmp_path: Path) -> None:
    ref = worker(tmp_path / "ref", "--epochs", "4", "--out", str(tmp_path / "ref.pt"))
    assert ref.returncode == 0, ref.stderr
    first = worker(tmp_path / "run", "--epochs", "4", "--stop-after", "2")
    assert first.returncode == 0, first.stderr
    assert find_checkpoint(True, tmp_path / "run") == tmp_path / "run" / "epoch-0002.pt"
    second = worker(tmp_path / "run", "--epochs", "4", "--resume", "--out", str(tmp_path / "b.pt"))
    assert second.returncode == 0, second.stderr
    ref_model, ref_history = final(tmp_path / "ref.pt")
    model, history = final(tmp_path / "b.pt")
    assert_same(ref_model, model)
    assert untimed(history) == untimed(ref_history)


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume(tmp_path: Path) -> None:
    epochs = ["--epochs", "12", "--train-size", "64"]  # many short epochs: saves are frequent
    ref = worker(tmp_path / "ref", *epochs, "--out", str(tmp_path / "ref.pt"))
    assert ref.returncode == 0, ref.stderr
    directory = tmp_path / "run"
    rng = random.Random(1234)
    killed = mid_save = 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # three kills at random moments, two at a moment the worker says it is mid-save
    for trial in range(5):
        proc = subprocess.Popen(
            [sys.executable, str(WORKER), str(directory), *epochs, "--resume", "--slow-saves"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "TRAINING"
        if trial % 2:
            while proc.stdout.readline().strip() not in ("SAVING", ""):
                pass
        else:
            time.sleep(rng.uniform(0.05, 0.6))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed += 1
        proc.wait()
        mid_save += bool(list(directory.glob(".*.tmp")))  # killed while writing a checkpoint
        latest = find_checkpoint(True, directory)
        if latest is not None:
            load_checkpoint(latest)  # always a complete, valid file
    assert killed >= 3
    assert mid_save >= 2  # at least the two kills made during a save
    done = worker(directory, *epochs, "--resume", "--out", str(tmp_path / "run.pt"))
    assert done.returncode == 0, done.stderr
    assert not list(directory.glob(".*.tmp"))
    ref_model, _ = final(tmp_path / "ref.pt")
    model, history = final(tmp_path / "run.pt")
    assert [r["epoch"] for r in history.epochs] == list(range(12))
    assert_same(ref_model, model)
