"""Checkpoint files: atomic writes, safe loads, the ``latest.json`` manifest, and finding the
file to resume from.

Writes are atomic: a temporary file in the same directory is written, flushed and fsynced,
then renamed over the target with ``os.replace``, and the directory is fsynced, so a crash at
any moment leaves either the old or the new content. Loads use
``torch.load(weights_only=True)``: a checkpoint holds only tensors and plain containers, and
anything else is refused rather than unpickled.

File names: ``epoch-0003.pt`` after 3 epochs; ``epoch-0003-batch-000017.pt`` after 3 epochs
and 17 batches of the 4th (a Ctrl-C).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

from freezeflow.errors import CheckpointError

__all__ = [
    "FORMAT",
    "MANIFEST",
    "atomic_save",
    "atomic_write",
    "checkpoint_files",
    "checkpoint_name",
    "find_checkpoint",
    "load_checkpoint",
    "read_manifest",
    "remove_temporaries",
    "write_manifest",
]

FORMAT = "freezeflow.checkpoint/1"
"""The ``"format"`` of every checkpoint file."""
MANIFEST = "latest.json"
"""The manifest's file name: the latest checkpoint, every file kept with its metric, the best."""
_MANIFEST_FORMAT = "freezeflow.checkpoints/1"
_NAME = re.compile(r"epoch-(\d+)(?:-batch-(\d+))?\.pt")


# --------------------------------------------------------------------------- atomic files


def _fsync_dir(directory: Path) -> None:
    if os.name != "posix":  # pragma: no cover - Windows cannot open a directory
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """Call ``write(f)`` on a temporary file next to ``path``, then rename it over ``path``:
    ``path`` holds the old or the new content, never a partial file, even if the process
    dies. A failed write leaves no temporary file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save(obj, path)`` so that ``path`` holds either the old or the new content,
    never a partial file, even if the process dies."""
    path = Path(path)
    atomic_write(path, lambda f: torch.save(obj, f))
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a freezeflow checkpoint with ``weights_only=True``.

    Raises:
        CheckpointError: the file is missing, truncated or corrupt, holds something other
            than tensors and plain containers, or is not a freezeflow checkpoint; the message
            names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint file {str(path)!r} does not exist; hint: resume=True finds the newest "
            "checkpoint in the directory"
        )
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        # torch.save writes a zip archive; anything else (random bytes, a file cut short) is
        # corrupt, whatever the unpickler of torch's legacy format says about it
        archive = zipfile.is_zipfile(path)
        if archive and ("weights_only" in str(exc) or "Weights only" in str(exc)):
            raise CheckpointError(
                f"refused to load {str(path)!r}: it holds pickled objects other than tensors "
                "and plain containers, and loading it would run arbitrary code "
                "(torch.load(weights_only=True) refused it); hint: only resume from files "
                "that fit() wrote"
            ) from exc
        detail = (
            f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            if archive
            else "not the zip archive torch.save writes"
        )
        raise CheckpointError(
            f"cannot read checkpoint {str(path)!r} ({path.stat().st_size} bytes): it is "
            f"truncated or corrupt ({detail}); hint: resume from an older checkpoint with "
            "resume=<path>"
        ) from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise CheckpointError(
            f"{str(path)!r} is not a freezeflow checkpoint (format {found!r}, expected "
            f"{FORMAT!r}); hint: resume from a file that fit() wrote"
        )
    return data


# --------------------------------------------------------------------------- the directory


def checkpoint_name(epoch: int, batch: int = 0) -> str:
    """The file name of the checkpoint after ``epoch`` epochs and ``batch`` batches.

    Example:
        >>> checkpoint_name(3), checkpoint_name(3, 17)
        ('epoch-0003.pt', 'epoch-0003-batch-000017.pt')
    """
    return f"epoch-{epoch:04d}" + (f"-batch-{batch:06d}" if batch else "") + ".pt"


def _position(name: str) -> tuple[int, int] | None:
    m = _NAME.fullmatch(name)
    return (int(m[1]), int(m[2] or 0)) if m else None


def checkpoint_files(directory: Path) -> list[str]:
    """The names of the checkpoint files in ``directory``, oldest first."""
    found = {pos: p.name for p in directory.glob("epoch-*.pt") if (pos := _position(p.name))}
    return [found[pos] for pos in sorted(found)]


def remove_temporaries(directory: Path) -> None:
    """Delete the temporary files a killed save left in ``directory``."""
    for pattern in (".epoch-*.tmp", f".{MANIFEST}.*.tmp"):
        for stale in directory.glob(pattern):
            stale.unlink(missing_ok=True)


def write_manifest(
    directory: Path, latest: str, best: str | None, metric: list[str] | None, files: Any
) -> None:
    """Write ``latest.json`` atomically: the ``latest`` file, the ``best`` one by
    ``metric`` (``[name, mode]``), and ``files`` (``[{"name": ..., "value": ...}]``)."""
    manifest = {
        "format": _MANIFEST_FORMAT,
        "latest": latest,
        "best": best,
        "metric": metric,
        "files": files,
    }
    text = json.dumps(manifest, indent=1).encode()
    atomic_write(directory / MANIFEST, lambda f: f.write(text))


def read_manifest(directory: Path) -> dict[str, Any] | None:
    """``latest.json`` of ``directory`` (``None`` when there is none).

    Raises:
        CheckpointError: the manifest is corrupt.
    """
    path = directory / MANIFEST
    if not path.is_file():
        return None
    hint = "hint: delete it to resume from the newest epoch-*.pt file, or pass resume=<file>"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        found = data["format"]
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(
            f"the checkpoint manifest {str(path)!r} is corrupt ({exc}); {hint}"
        ) from exc
    if found != _MANIFEST_FORMAT:
        raise CheckpointError(
            f"the checkpoint manifest {str(path)!r} is corrupt (format {found!r}, expected "
            f"{_MANIFEST_FORMAT!r}); {hint}"
        )
    return dict(data)


def find_checkpoint(resume: bool | str | Path, directory: str | Path | None) -> Path | None:
    """The file to resume from: ``resume`` itself when it is a file; else the latest
    checkpoint of the directory (``resume`` when it is a directory, else ``directory``) as
    its manifest names it, or the newest ``epoch-*.pt`` file when there is no manifest.
    ``None`` when ``resume=True`` and the directory holds no checkpoint yet."""
    if resume is False:
        return None
    if resume is True:
        if directory is None:
            raise CheckpointError(
                "resume=True needs the checkpoint directory to look in; hint: "
                "Checkpoint(directory, resume=True), or resume=<checkpoint file>"
            )
        where = Path(directory)
    else:
        where = Path(resume)
        if where.is_file():
            return where
        if not where.is_dir():
            raise CheckpointError(
                f"cannot resume: {str(where)!r} does not exist; expected a checkpoint file or "
                "directory; hint: resume=True starts afresh when the directory holds none"
            )
    manifest = read_manifest(where) if where.is_dir() else None
    if manifest is not None:
        latest = where / str(manifest["latest"])
        if not latest.is_file():
            raise CheckpointError(
                f"the manifest {str(where / MANIFEST)!r} names {str(latest)!r}, which does "
                "not exist; hint: pass resume=<file> to pick a checkpoint"
            )
        return latest
    found = checkpoint_files(where)
    if found:
        return where / found[-1]
    if resume is True:
        return None
    raise CheckpointError(
        f"cannot resume: no checkpoint in {str(where)!r}; expected epoch-*.pt files there; "
        "hint: resume=True starts afresh when there is none"
    )
