"""Frozen-prefix feature caching: same results as the uncached run, and refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from cache_models import Flaky, Net, Skip, data, hflip
from torch import nn
from torch.utils.data import DataLoader

import freezeflow as ff
from freezeflow.errors import CacheRefused
from freezeflow.training.cache import FeatureCache


def train(cached: bool, *, disk: bool = False, tmp: str | None = None) -> tuple[list[float], Net]:
    torch.manual_seed(0)
    model = Net()
    ff.freeze(model, ff.first(3))  # stem and the first two blocks
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05, momentum=0.9)
    loader = DataLoader(
        data(), batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(1)
    )
    model.train()
    losses: list[float] = []
    cache = None
    if cached:
        cache = FeatureCache(model, loader, max_bytes=0 if disk else 2 << 30, disk_dir=tmp)
        cache.check()
        cache.build()
    for _ in range(3):
        if cache is not None:
            with cache.replaying() as handle:
                for f, y in cache.batches():
                    handle.features = f
                    opt.zero_grad()
                    loss = nn.functional.cross_entropy(model(f), y)
                    loss.backward()  # type: ignore[no-untyped-call]
                    opt.step()
                    losses.append(loss.item())
        else:
            for x, y in loader:
                opt.zero_grad()
                loss = nn.functional.cross_entropy(model(x), y)
                loss.backward()  # type: ignore[no-untyped-call]
                opt.step()
                losses.append(loss.item())
    if cache is not None:
        cache.close()
    return losses, model


@pytest.mark.parametrize("disk", [False, True], ids=["memory", "memmap"])
def test_cached_training_equals_uncached(disk: bool, tmp_path: Path) -> None:
    plain, m1 = train(cached=False)
    cached, m2 = train(cached=True, disk=disk, tmp=str(tmp_path))
    assert len(plain) == len(cached) == 18
    torch.testing.assert_close(torch.tensor(cached), torch.tensor(plain), rtol=1e-5, atol=1e-6)
    for (name, a), b in zip(m1.named_parameters(), m2.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    if disk:
        assert not list(tmp_path.iterdir()), "close() must delete the memory-mapped file"


def test_refuses_without_frozen_prefix() -> None:
    loader = DataLoader(data(), batch_size=8)
    with pytest.raises(CacheRefused, match="no frozen prefix"):
        FeatureCache(Net(), loader)


def test_refuses_plain_iterables() -> None:
    model = Net()
    ff.freeze(model, ff.first(2))
    with pytest.raises(CacheRefused, match="DataLoader"):
        FeatureCache(model, [(torch.zeros(2, 3, 8, 8), torch.zeros(2))])


def test_refuses_a_cut_crossed_by_a_skip_connection() -> None:
    model = Skip()
    ff.freeze(model, ff.first(2))
    cache = FeatureCache(model, DataLoader(data(), batch_size=8))
    with pytest.raises(CacheRefused, match="cannot be cut"):
        cache.check()


def test_refuses_random_frozen_blocks_unless_eval_frozen() -> None:
    model = Net(block_dropout=0.5)
    ff.freeze(model, ff.first(3))
    model.train()
    state = torch.get_rng_state()
    with pytest.raises(CacheRefused, match="random numbers"):
        FeatureCache(model, DataLoader(data(), batch_size=8)).check()
    assert torch.equal(state, torch.get_rng_state()), "a refused check must not consume RNG"
    ff.freeze(model, ff.first(3), eval_frozen=True)
    model.train()
    assert not model.blocks[0].training and model.blocks[2].training
    FeatureCache(model, DataLoader(data(), batch_size=8)).check()


def test_cache_is_invalid_once_the_prefix_changes() -> None:
    model = Net()
    ff.freeze(model, ff.first(3))
    cache = FeatureCache(model, DataLoader(data(), batch_size=8))
    assert cache.still_valid()
    ff.unfreeze(model, ff.blocks(2, 3))
    assert not cache.still_valid()


def training(module: nn.Module) -> bool:
    """``module.training``, read through a call (mypy keeps no narrowing across mode changes)."""
    return module.training


def test_eval_frozen_releases_modules_that_gain_trainable_parameters() -> None:
    model = Net(block_dropout=0.5)
    ff.freeze(model, ff.everything(), eval_frozen=True)
    model.train()
    assert not any(b.training for b in model.blocks)
    ff.unfreeze(model, "blocks.1")
    model.train()
    block0, block1 = model.blocks[0], model.blocks[1]
    assert isinstance(block1, nn.Sequential)
    assert training(block1)
    assert not training(block0)
    assert not training(block1[1]) or ff.core.norm_mode(block1[1]) is None
    with ff.frozen(model, "blocks.1"):
        assert not training(block1)
    assert training(block1)


def test_refuses_batchnorm_in_train_mode_in_the_prefix() -> None:
    model = Net()
    ff.freeze(model, ff.first(2), norm="ignore")  # as a hand-written requires_grad loop
    model.train()
    with pytest.raises(CacheRefused, match="BatchNorm2d in the frozen prefix is in train mode"):
        FeatureCache(model, DataLoader(data(), batch_size=8)).check()


def freed(cache: FeatureCache) -> bool:
    return cache.features is None and cache.targets is None


@pytest.mark.parametrize("disk", [False, True], ids=["memory", "memmap"])
def test_a_cache_built_on_a_shorter_cache_equals_one_built_from_the_inputs(
    disk: bool,
    tmp_path: Path,
) -> None:
    model = Net()
    ff.freeze(model, ff.first(3), eval_frozen=True)
    model.train()
    loader = DataLoader(data(20), batch_size=8, shuffle=True)
    direct = FeatureCache(model, loader).build()  # blocks 0-2 from the images
    base = FeatureCache(model, loader, boundary=1).build()  # the stem only
    chained = FeatureCache(
        model, loader, source=base, max_bytes=0 if disk else 2 << 30, disk_dir=str(tmp_path)
    )
    stem_inputs: list[int] = []
    model.stem.register_forward_hook(lambda m, a, o: stem_inputs.append(a[0].shape[1]))
    chained.build()
    assert 3 not in stem_inputs, "the chained build must not run the stem on images again"
    assert direct.features is not None and chained.features is not None
    torch.testing.assert_close(chained.features, direct.features, rtol=1e-6, atol=1e-6)
    assert chained.targets is not None and direct.targets is not None
    assert torch.equal(chained.targets, direct.targets)
    chained.close()
    base.close()
    assert freed(base) and freed(chained)
    if disk:
        assert not list(tmp_path.iterdir())


def test_a_source_cache_must_cover_the_same_data_and_a_shorter_prefix() -> None:
    model = Net()
    ff.freeze(model, ff.first(3))
    loader = DataLoader(data(16), batch_size=8)
    base = FeatureCache(model, loader, boundary=2)
    with pytest.raises(CacheRefused, match="build"):
        FeatureCache(model, loader, source=base)
    base.build()
    with pytest.raises(CacheRefused, match="another dataset"):
        FeatureCache(model, DataLoader(data(16), batch_size=8), source=base)
    with pytest.raises(CacheRefused, match="use the source itself"):
        FeatureCache(model, loader, boundary=2, source=base)
    chained = FeatureCache(model, loader, source=base)
    ff.unfreeze(model, "stem")  # the base's prefix changes: it cannot feed a build
    with pytest.raises(CacheRefused, match="prefix changed"):
        chained.build()


# --------------------------------------------------------------------------- Views


def test_a_views_cache_holds_every_view_and_replays_the_drawn_one() -> None:
    model = Net()
    ff.freeze(model, ff.first(3), eval_frozen=True)
    model.train()
    flips = ff.Views(data(10), [lambda x: x, hflip])
    loader = DataLoader(flips, batch_size=4, shuffle=True)
    cache = FeatureCache(model, loader).build()
    assert cache.features is not None and len(cache.features) == 20  # 2 views x 10 samples
    for v in (0, 1):
        inputs = torch.stack([flips.view(i, v)[0] for i in range(10)])
        torch.testing.assert_close(cache.features[10 * v : 10 * v + 10], cache.prefix(inputs))
    # replay: each sample's features are those of one of its two views
    all_views = {v: cache.features[10 * v : 10 * v + 10] for v in (0, 1)}
    seen: set[int] = set()
    for f, y in cache.batches():
        for row, target in zip(f, y):
            hits = [
                (i, v)
                for v in (0, 1)
                for i in range(10)
                if torch.equal(row, all_views[v][i]) and flips.dataset[i][1] == target
            ]
            assert hits
            seen.add(hits[0][1])
    assert seen == {0, 1}


@pytest.mark.parametrize("error", [OSError("disk gone"), KeyboardInterrupt()], ids=repr)
def test_a_failed_build_frees_its_memory_mapped_file(error: BaseException, tmp_path: Path) -> None:
    model = Net()
    ff.freeze(model, ff.first(3))
    cache = FeatureCache(
        model, DataLoader(Flaky(24, 17, error), batch_size=8), max_bytes=0, disk_dir=tmp_path
    )
    with pytest.raises(type(error)):
        cache.build()
    assert cache.features is None
    assert not list(tmp_path.iterdir())


def test_a_dataset_that_draws_random_numbers_is_refused_and_its_rng_left_alone() -> None:
    class Jitter(torch.utils.data.Dataset):  # type: ignore[type-arg]
        def __len__(self) -> int:
            return 8

        def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
            return torch.randn(3, 8, 8), torch.tensor(i % 4)  # random augmentation

    model = Net()
    ff.freeze(model, ff.first(3))
    state = torch.get_rng_state()
    cache = FeatureCache(model, DataLoader(Jitter(), batch_size=4))
    with pytest.raises(CacheRefused, match="draws random numbers"):
        cache.check()
    assert torch.equal(state, torch.get_rng_state()), "the checks must not move the RNG"
    # a Views nested in another dataset draws when read: refused too
    nested = torch.utils.data.Subset(ff.Views(data(8), [lambda x: x, hflip]), range(8))
    with pytest.raises(CacheRefused, match="draws random numbers"):
        FeatureCache(model, DataLoader(nested, batch_size=4)).check()
