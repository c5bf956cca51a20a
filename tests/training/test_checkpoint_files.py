"""freezeflow.training.checkpoint_files: atomic writes (the old content or the new, never a
partial file, no temporary left), safe loads (weights only; a corrupt file called corrupt, a
file with pickled objects refused, another file not taken for a checkpoint), checkpoint names
in order, the ``latest.json`` manifest, and finding the file to resume from. (The Checkpoint
callback that uses them: tests/training/test_checkpoint.py.)"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from snapshot import unchanged

from freezeflow.errors import CheckpointError
from freezeflow.training.checkpoint_files import (
    FORMAT,
    MANIFEST,
    atomic_save,
    atomic_write,
    checkpoint_files,
    checkpoint_name,
    find_checkpoint,
    load_checkpoint,
    read_manifest,
    remove_temporaries,
    write_manifest,
)

# --------------------------------------------------------------------------- atomic writes


def test_atomic_save_loads_weights_only_and_leaves_no_temp_file(tmp_path: Path) -> None:
    path = atomic_save({"x": torch.arange(3), "meta": [1, "a", None]}, tmp_path / "a.pt")
    assert torch.load(path, weights_only=True)["meta"] == [1, "a", None]
    assert [p.name for p in tmp_path.iterdir()] == ["a.pt"]


def test_failed_atomic_save_keeps_the_old_file(tmp_path: Path) -> None:
    path = atomic_save({"v": 1}, tmp_path / "a.pt")
    old = path.read_bytes()
    with pytest.raises(Exception, match=r"pickle|lambda"):
        atomic_save({"v": lambda: 0}, path)  # cannot be pickled: fails mid-write
    assert path.read_bytes() == old
    assert [p.name for p in tmp_path.iterdir()] == ["a.pt"]


def test_an_interrupted_write_leaves_the_old_content_and_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    atomic_write(path, lambda f: f.write(b"old"))

    def dies_half_way(f: object) -> None:
        f.write(b"ne")  # type: ignore[attr-defined]
        raise KeyboardInterrupt

    with unchanged(folder=tmp_path), pytest.raises(KeyboardInterrupt):
        atomic_write(path, dies_half_way)
    assert path.read_bytes() == b"old"


def test_temporaries_of_a_killed_save_are_removed_and_nothing_else(tmp_path: Path) -> None:
    keep = ["epoch-0001.pt", MANIFEST, "notes.txt", ".hidden"]
    stale = [".epoch-0002.pt.abc.tmp", f".{MANIFEST}.xyz.tmp"]
    for name in keep + stale:
        (tmp_path / name).write_bytes(b"")
    remove_temporaries(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(keep)


# --------------------------------------------------------------------------- loading


def test_a_checkpoint_loads_with_its_tensors(tmp_path: Path) -> None:
    path = atomic_save({"format": FORMAT, "w": torch.ones(2)}, tmp_path / "epoch-0001.pt")
    assert torch.equal(load_checkpoint(path)["w"], torch.ones(2))


def test_not_a_checkpoint(tmp_path: Path) -> None:
    torch.save({"weights": torch.zeros(2)}, tmp_path / "w.pt")
    with pytest.raises(CheckpointError, match=r"w\.pt.*not a freezeflow checkpoint"):
        load_checkpoint(tmp_path / "w.pt")


class Payload:
    """Not a tensor or plain container: unpickling it could run code."""


def test_pickled_objects_are_refused_as_such(tmp_path: Path) -> None:
    torch.save({"format": FORMAT, "extra": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match=r"refused to load .*evil\.pt.*arbitrary code"):
        load_checkpoint(tmp_path / "evil.pt")


@pytest.mark.parametrize("seed", range(8))
def test_random_bytes_are_called_corrupt_not_unsafe(tmp_path: Path, seed: int) -> None:
    """Issue 22: random bytes were once reported as "pickled objects that would run arbitrary
    code"; they are a corrupt file."""
    gen = torch.Generator().manual_seed(seed)
    size = int(torch.randint(0, 5000, (1,), generator=gen))
    path = tmp_path / "epoch-0001.pt"
    path.write_bytes(bytes(torch.randint(0, 256, (size,), generator=gen, dtype=torch.uint8)))
    with pytest.raises(CheckpointError, match=rf"epoch-0001\.pt' \({size} bytes\).*corrupt"):
        load_checkpoint(path)


def test_a_truncated_checkpoint_is_called_corrupt(tmp_path: Path) -> None:
    path = atomic_save({"format": FORMAT, "w": torch.ones(1000)}, tmp_path / "epoch-0001.pt")
    path.write_bytes(path.read_bytes()[:1500])
    with pytest.raises(CheckpointError, match=r"truncated or corrupt"):
        load_checkpoint(path)


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"nope\.pt' does not exist"):
        load_checkpoint(tmp_path / "nope.pt")


# --------------------------------------------------------------------------- the directory


@given(st.lists(st.tuples(st.integers(0, 9999), st.integers(0, 999999)), max_size=8))
def test_checkpoint_files_lists_ours_oldest_first(positions: list[tuple[int, int]]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        directory = Path(folder)
        for epoch, batch in positions:
            (directory / checkpoint_name(epoch, batch)).write_bytes(b"")
        (directory / "epoch-x.pt").write_bytes(b"")  # not one of ours
        (directory / "notes.pt").write_bytes(b"")
        expected = [checkpoint_name(e, b) for e, b in sorted(set(positions))]
        assert checkpoint_files(directory) == expected


def test_the_manifest_round_trips(tmp_path: Path) -> None:
    files = [{"name": "epoch-0001.pt", "value": 0.5}, {"name": "epoch-0002.pt", "value": 0.4}]
    write_manifest(tmp_path, "epoch-0002.pt", "epoch-0002.pt", ["val_loss", "min"], files)
    data = read_manifest(tmp_path)
    assert data is not None
    assert (data["latest"], data["best"], data["metric"], data["files"]) == (
        "epoch-0002.pt",
        "epoch-0002.pt",
        ["val_loss", "min"],
        files,
    )
    assert [p.name for p in tmp_path.iterdir()] == [MANIFEST]
    assert read_manifest(tmp_path / "elsewhere") is None


@pytest.mark.parametrize("text", ["{", "[]", '{"latest": "a"}', '{"format": "other/1"}'])
def test_a_corrupt_manifest_is_named_with_a_hint(tmp_path: Path, text: str) -> None:
    (tmp_path / MANIFEST).write_text(text)
    with pytest.raises(CheckpointError, match=rf"{MANIFEST}' is corrupt.*hint: delete it"):
        read_manifest(tmp_path)


def test_find_checkpoint_follows_the_manifest_then_the_newest_file(tmp_path: Path) -> None:
    for name in ("epoch-0001.pt", "epoch-0002.pt", "epoch-0002-batch-000005.pt"):
        (tmp_path / name).write_bytes(b"")
    assert find_checkpoint(False, tmp_path) is None
    assert find_checkpoint(True, tmp_path) == tmp_path / "epoch-0002-batch-000005.pt"
    write_manifest(tmp_path, "epoch-0001.pt", None, None, [])
    assert find_checkpoint(True, tmp_path) == tmp_path / "epoch-0001.pt"
    assert find_checkpoint(tmp_path, None) == tmp_path / "epoch-0001.pt"
    assert find_checkpoint(tmp_path / "epoch-0002.pt", None) == tmp_path / "epoch-0002.pt"
    os.remove(tmp_path / "epoch-0001.pt")
    with pytest.raises(CheckpointError, match=r"names .*epoch-0001\.pt', which does not exist"):
        find_checkpoint(True, tmp_path)


def test_find_checkpoint_in_an_empty_or_missing_place(tmp_path: Path) -> None:
    assert find_checkpoint(True, tmp_path) is None  # a fresh start
    with pytest.raises(CheckpointError, match=r"no checkpoint in"):
        find_checkpoint(tmp_path, None)
    with pytest.raises(CheckpointError, match=r"nope' does not exist"):
        find_checkpoint(tmp_path / "nope", None)
    with pytest.raises(CheckpointError, match=r"resume=True needs"):
        find_checkpoint(True, None)
