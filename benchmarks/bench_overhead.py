"""Overheads of freezeflow itself, each against a baseline measured in the same run.

1. Policy resolution on a 48-block transformer built on the meta device (~2,000 modules);
   baseline: a hand-written ``fnmatch`` loop over ``named_parameters()``. Goal: < 20 ms.
2. A stage transition on a ~100M-parameter model (requires_grad, norm modes, param-group LRs);
   baseline: the hand-written way (flip requires_grad, add a param group). Goal: < 50 ms.
3. Steady-state step time with the unfreezer attached vs without (same model, same data).
   Goal: within 1%.
4. Optimizer state memory of frozen parameters (AdamW): 0 bytes.

Medians of repeated runs. Usage::

    python benchmarks/bench_overhead.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import fnmatch
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

import freezeflow as ff


class Attention(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.drop = nn.Dropout(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.softmax(self.q(x) @ self.k(x).transpose(-1, -2) / x.shape[-1] ** 0.5, -1)
        return self.o(self.drop(a) @ self.v(x))


class Mlp(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d)
        self.drop = nn.Dropout(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.act(self.fc1(x))))


class Block(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.ln1, self.attn, self.ln2, self.mlp = (
            nn.LayerNorm(d),
            Attention(d),
            nn.LayerNorm(d),
            Mlp(d),
        )
        self.gate = nn.ModuleDict({"a": nn.Identity(), "b": nn.Identity(), "c": nn.Identity()})
        self.extra = nn.ModuleList([nn.Identity() for _ in range(20)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(self, d: int, n_blocks: int, vocab: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(Block(d) for _ in range(n_blocks))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.embed(idx)
        for b in self.blocks:
            x = b(x)
        return self.head(self.norm(x))


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - t))
    return statistics.median(times)


def policy_resolution(repeats: int) -> None:
    with torch.device("meta"):
        model = GPT(d=64, n_blocks=48, vocab=100)
    n_modules = sum(1 for _ in model.modules())
    policy = ff.name("blocks.*.attn") | ff.last(4)

    def by_hand() -> list[str]:
        names = [n for n, _ in model.named_parameters()]
        hit = [n for n in names if fnmatch.fnmatch(n, "blocks.*.attn.*")]
        return hit + [
            n for n in names if n.startswith(("blocks.46.", "blocks.47.", "norm.", "head."))
        ]

    ours = median_ms(lambda: policy.select(model), repeats)
    base = median_ms(by_hand, repeats)
    print(f"1. policy resolution, {n_modules:,} modules, {policy!r}")
    print(
        f"   freezeflow {ours:.2f} ms (goal < 20 ms) | hand-written fnmatch loop {base:.2f} ms"
        f" | ratio {ours / base:.1f}x (the loop finds no blocks, checks no names)"
    )


def transition(repeats: int) -> None:
    torch.manual_seed(0)
    model = GPT(d=768, n_blocks=12, vocab=32000)
    n_params = sum(p.numel() for p in model.parameters())
    sched = ff.Schedule([ff.Stage("head", lr=1e-3), ff.Stage(ff.last(7), lr=1e-4, start=1)])

    def ours() -> None:
        opt = torch.optim.AdamW(model.parameters())
        uf = ff.GradualUnfreezer(model, sched, opt)
        t = time.perf_counter()
        uf.on_epoch_start(1)
        times.append(1000 * (time.perf_counter() - t))

    def by_hand() -> None:
        for p in model.parameters():
            p.requires_grad_(False)
        model.head.weight.requires_grad_(True)
        opt = torch.optim.AdamW([model.head.weight], lr=1e-3)
        t = time.perf_counter()
        new = [p for b in model.blocks[-5:] for p in b.parameters()] + list(model.norm.parameters())
        for p in new:
            p.requires_grad_(True)
        opt.add_param_group({"params": new, "lr": 1e-4})
        base_times.append(1000 * (time.perf_counter() - t))

    times: list[float] = []
    base_times: list[float] = []
    for _ in range(repeats):
        ours()
        by_hand()
    a, b = statistics.median(times), statistics.median(base_times)
    print(f"2. stage transition, {n_params / 1e6:.0f}M parameters")
    print(
        f"   freezeflow {a:.1f} ms (goal < 50 ms) | hand-written loop + add_param_group "
        f"{b:.1f} ms | ratio {a / b:.1f}x"
    )


def steady_state(repeats: int) -> None:
    torch.manual_seed(0)
    x = torch.randint(0, 100, (8, 32))

    def run(attached: bool) -> float:
        torch.manual_seed(0)
        model = GPT(d=64, n_blocks=4, vocab=100)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        uf = None
        if attached:
            sched = ff.Schedule(
                [
                    ff.Stage(ff.everything(), lr=1e-3),
                    ff.Stage(ff.last(2), lr=1e-4, start=ff.at_step(10**9)),
                ]
            )
            uf = ff.GradualUnfreezer(model, sched, opt)
        t = time.perf_counter()
        for _ in range(30):
            opt.zero_grad()
            model(x).float().mean().backward()
            opt.step()
            if uf is not None:
                uf.step()
        return 1000 * (time.perf_counter() - t) / 30

    with_uf, without = [], []
    for _ in range(repeats):  # interleaved, so drifts in machine load hit both alike
        without.append(run(False))
        with_uf.append(run(True))
    a, b = statistics.median(with_uf), statistics.median(without)
    print("3. steady-state step, 4-block transformer, 30 steps per run, runs interleaved")
    print(
        f"   with unfreezer {a:.2f} ms/step | without {b:.2f} ms/step | ratio {a / b:.3f} "
        "(goal <= 1.01)"
    )


def optimizer_memory() -> None:
    torch.manual_seed(0)
    model = GPT(d=64, n_blocks=4, vocab=100)
    x = torch.randint(0, 100, (8, 32))

    def frozen_state_bytes(opt: torch.optim.Optimizer) -> int:
        return sum(
            t.numel() * t.element_size()
            for p, st in opt.state.items()
            if not p.requires_grad
            for t in st.values()
            if isinstance(t, torch.Tensor)
        )

    # baseline: the common hand-written loop: train everything for a while, then freeze the
    # lower blocks by flipping requires_grad on the same AdamW
    base = torch.optim.AdamW(model.parameters(), weight_decay=0.05)
    for _ in range(3):
        base.zero_grad()
        model(x).mean().backward()
        base.step()
    for b in model.blocks[:2]:
        for p in b.parameters():
            p.requires_grad_(False)
    for _ in range(3):
        base.zero_grad()
        model(x).mean().backward()
        base.step()
    hand = frozen_state_bytes(base)

    torch.manual_seed(0)
    model = GPT(d=64, n_blocks=4, vocab=100)
    opt = torch.optim.AdamW(model.parameters(), weight_decay=0.05)
    sched = ff.Schedule(
        [
            ff.Stage(ff.everything(), lr=1e-3),
            ff.Stage(ff.blocks(3), lr=1e-3, start=ff.at_step(3), exclusive=True),
        ]
    )
    uf = ff.GradualUnfreezer(model, sched, opt)
    for _ in range(6):
        opt.zero_grad()
        model(x).mean().backward()
        opt.step()
        uf.step()
    ours = frozen_state_bytes(opt)
    print("4. AdamW state held by frozen parameters after freezing the lower blocks mid-run")
    print(f"   freezeflow {ours:,} bytes | hand-written requires_grad flip {hand:,} bytes")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args()
    torch.set_num_threads(2)
    policy_resolution(args.repeats)
    transition(args.repeats)
    steady_state(args.repeats)
    optimizer_memory()


if __name__ == "__main__":
    main()
