"""One DeepSpeed run on CPU for tests/integrations/test_deepspeed.py, in a process of its own
(DeepSpeed initialises a process group and keeps it): started with MASTER_ADDR, MASTER_PORT,
RANK=0, LOCAL_RANK=0 and WORLD_SIZE=1 set.

Usage: python _deepspeed_worker.py OUT SCENARIO. Writes OUT (torch.save): the scenario's
result; OUT.rank<r> on each rank when started on 2 ranks (tests/_two_ranks.py), with the
ranks' data split by the Trainer's DistributedSampler.

Scenarios (a tiny random BERT, the schedule: the classifier for epoch 0, then the last
encoder layer and the pooler too, from epoch 1):
- hf-zero1, hf-zero2, hf-zero3: FreezeflowTrainer with DeepSpeed ZeRO stage 1, 2 or 3 in its
  TrainingArguments (freezing left at "auto": soft). Result: the weights at the start and
  after each epoch; after each epoch, the torch optimizer's state per group (stages 1 and 2,
  where ZeRO keeps one flat tensor per group).
- hf-hard: the same with freezing="hard": refused. Result: the error, and whether the
  model's requires_grad flags changed.
- direct: GradualUnfreezer(freezing="soft") built first, then deepspeed.initialize over its
  optimizer (ZeRO stage 2) and a hand-written loop. Result: as hf-zero2.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import torch
import transformers
from _hf_ddp_worker import bert  # the same tiny random BERT as the DDP runs
from torch import nn

import freezeflow as ff
from freezeflow.integrations.transformers import FreezeflowTrainer

EPOCHS = 2
BATCH = 4
STEPS_PER_EPOCH = 4


def data() -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 50, (BATCH * STEPS_PER_EPOCH, 8), generator=g)
    return [{"input_ids": x[i], "labels": x[i, 0] % 2} for i in range(len(x))]


def schedule() -> list[ff.Stage]:
    return [ff.Stage(ff.last(1), lr=1e-2), ff.Stage(ff.last(2), lr=1e-2, start=1)]


def config(stage: int) -> dict[str, Any]:
    return {
        "train_micro_batch_size_per_gpu": BATCH,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": stage},
        "zero_allow_untested_optimizer": True,
    }


def weights(model: nn.Module, stage: int) -> dict[str, torch.Tensor]:
    if stage == 3:  # ZeRO-3 partitions the parameters themselves: gather them
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(model.parameters())):
            return {n: p.detach().clone() for n, p in model.named_parameters()}
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def optimizer_state(opt: torch.optim.Optimizer) -> list[tuple[str, bool]]:
    """(group name, whether any of its tensors has optimizer state) per group."""
    return [
        (str(g.get("name")), any(bool(opt.state.get(p)) for p in g["params"]))
        for g in opt.param_groups
    ]


def hf(stage: int, freezing: str) -> dict[str, Any]:
    model = bert()
    out: dict[str, Any] = {"weights": [weights(model, 0)], "state": []}

    class Snap(transformers.TrainerCallback):
        def on_epoch_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            out["weights"].append(weights(model, stage))
            uf = trainer.freezeflow_callback().unfreezer
            if stage in (1, 2) and uf is not None:
                out["state"].append(optimizer_state(uf.optimizer))

    args = transformers.TrainingArguments(
        "unused", per_device_train_batch_size=BATCH, num_train_epochs=EPOCHS, use_cpu=True,
        deepspeed=config(stage), report_to=[], save_strategy="no", logging_strategy="no",
        learning_rate=1e-2, lr_scheduler_type="constant", disable_tqdm=True, weight_decay=0.1,
    )  # fmt: skip
    flags = [p.requires_grad for p in model.parameters()]
    trainer = FreezeflowTrainer(
        model=model, args=args, train_dataset=data(), schedule=schedule(),
        callbacks=[Snap()], freezing=freezing,  # type: ignore[arg-type]
    )  # fmt: skip
    try:
        trainer.train()
    except ff.errors.FreezeflowError as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
        out["flags_kept"] = [p.requires_grad for p in model.parameters()] == flags
        return out
    uf = trainer.freezeflow_callback().unfreezer
    assert uf is not None
    out["history"] = [(t.name, t.epoch) for t in uf.history]
    return out


def direct() -> dict[str, Any]:
    import deepspeed

    model = bert()
    uf = ff.GradualUnfreezer(model, schedule(), torch.optim.AdamW, freezing="soft")
    engine, *_ = deepspeed.initialize(model=model, optimizer=uf.optimizer, config=config(2))
    out: dict[str, Any] = {"weights": [weights(model, 2)], "state": []}
    batches = data()
    for epoch in range(EPOCHS):
        uf.on_epoch_start(epoch)
        for i in range(STEPS_PER_EPOCH):
            rows = batches[i * BATCH : (i + 1) * BATCH]
            x = torch.stack([r["input_ids"] for r in rows])
            y = torch.stack([r["labels"] for r in rows])
            loss = engine(input_ids=x, labels=y).loss
            engine.backward(loss)
            engine.step()
            uf.step()
        out["weights"].append(weights(model, 2))
        out["state"].append(optimizer_state(uf.optimizer))
    out["history"] = [(t.name, t.epoch) for t in uf.history]
    return out


def main(path: str, scenario: str) -> None:
    """Run ``scenario``; save its result to ``path`` (``path.rank<r>`` on several ranks)."""
    if scenario.startswith("hf-zero"):
        result = hf(int(scenario[-1]), "auto")
    elif scenario == "hf-hard":
        result = hf(2, "hard")
    elif scenario == "direct":
        result = direct()
    else:
        raise SystemExit(f"unknown scenario {scenario!r}")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    torch.save(result, path if world == 1 else f"{path}.rank{os.environ['RANK']}")
    # gloo in this torch sometimes aborts at interpreter exit (docs/distributed.md)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
