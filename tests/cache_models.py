"""The small CNN the feature-cache, prefix and views tests share: a conv+bn stem, three conv
blocks and a head with dropout (:class:`Net`), a variant whose stem output skips to the head
(:class:`Skip`), a seeded dataset and a flip view."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import TensorDataset


class Net(nn.Module):
    """conv+bn stem, three conv blocks (one with dropout), a head with dropout."""

    def __init__(self, block_dropout: float = 0.0) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(8, 8, 3, padding=1),
                nn.BatchNorm2d(8),
                nn.ReLU(),
                nn.Dropout(block_dropout),
            )
            for _ in range(3)
        )
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(8, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.stem(x)))
        for block in self.blocks:
            x = block(x)
        y: torch.Tensor = self.head(x.mean((2, 3)))
        return y


class Skip(Net):
    """The stem's output reaches the head directly: it cannot be cut after block 1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.relu(self.bn(self.stem(x)))
        x = s
        for block in self.blocks:
            x = block(x)
        y: torch.Tensor = self.head((x + s).mean((2, 3)))
        return y


def data(n: int = 48) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(
        torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, 4, (n,), generator=g)
    )


def hflip(x: torch.Tensor) -> torch.Tensor:
    return x.flip(-1)


class Flaky(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """``data(n)`` whose sample ``fail_at`` raises ``error`` (a read error mid-build)."""

    def __init__(self, n: int, fail_at: int, error: BaseException) -> None:
        self.base, self.fail_at, self.error = data(n), fail_at, error

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if i == self.fail_at:
            raise self.error
        return self.base[i]  # type: ignore[no-any-return]
