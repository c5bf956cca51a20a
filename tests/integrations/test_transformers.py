"""FreezeflowTrainer / FreezeflowTrainerCallback with a real Hugging Face Trainer on CPU.

The model is a tiny randomly initialised BERT built from a config (no download)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from models import Ticking, snapshot
from paths import TESTS
from snapshot import Snapshot

pytest.importorskip("transformers")
pytest.importorskip("accelerate")

import transformers

import freezeflow as ff
from freezeflow.errors import CheckpointError, TrainingError
from freezeflow.integrations.transformers import (
    STATE_NAME,
    FreezeflowTrainer,
    FreezeflowTrainerCallback,
)

STEPS_PER_EPOCH = 2
WARMUP = 2
HEAD = ["classifier", "bert.pooler"]


def bert() -> Any:
    cfg = transformers.BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=16,
        num_labels=2,  # type: ignore[call-arg]  # a PretrainedConfig keyword
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    torch.manual_seed(0)
    return transformers.BertForSequenceClassification(cfg)


class Data(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
    def __init__(self, n: int = 8 * STEPS_PER_EPOCH, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randint(0, 100, (n, 8), generator=g)
        self.y = torch.randint(0, 2, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.x[i], "labels": self.y[i]}


def arguments(tmp_path: Path, epochs: int, **kw: Any) -> Any:
    defaults: dict[str, Any] = {
        "output_dir": str(tmp_path),
        "num_train_epochs": epochs,
        "per_device_train_batch_size": 8,
        "per_device_eval_batch_size": 8,
        "learning_rate": 0.5,  # superseded by the schedule's stage LRs
        "weight_decay": 0.01,
        "lr_scheduler_type": "linear",
        "warmup_steps": WARMUP,
        "report_to": [],
        "use_cpu": True,
        "save_strategy": "no",
        "logging_strategy": "no",
        "disable_tqdm": True,
        "seed": 0,
        "dataloader_num_workers": 0,
    }
    defaults.update(kw)
    return transformers.TrainingArguments(**defaults)


def linear(step: int, total: int) -> float:
    """transformers' get_linear_schedule_with_warmup factor."""
    if step < WARMUP:
        return step / WARMUP
    return max(0.0, (total - step) / (total - WARMUP))


class Recorder(transformers.TrainerCallback):
    def __init__(self) -> None:
        self.lrs: list[tuple[int, float, list[float]]] = []
        self.trainable: dict[int, set[str]] = {}
        self.at_train_begin: set[str] = set()
        self.at_epoch_end: dict[int, dict[str, torch.Tensor]] = {}
        self.groups: list[str] = []

    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        model = kw["model"]
        self.at_train_begin = {n for n, p in model.named_parameters() if p.requires_grad}
        self.groups = [g["name"] for g in kw["optimizer"].param_groups]

    def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        opt, model = kw["optimizer"], kw["model"]
        self.lrs.append((state.global_step, state.epoch, [g["lr"] for g in opt.param_groups]))
        epoch = state.global_step // STEPS_PER_EPOCH
        self.trainable[epoch] = {n for n, p in model.named_parameters() if p.requires_grad}

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self.at_epoch_end[round(state.epoch) - 1] = snapshot(kw["model"], buffers=True)


def changed(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], prefix: str) -> bool:
    keys = [k for k in a if k.startswith(prefix)]
    assert keys, prefix
    return any(not torch.equal(a[k], b[k]) for k in keys)


def test_encoder_unfrozen_at_epoch_2_and_linear_schedule_drives_every_group(
    tmp_path: Path,
) -> None:
    stages = [
        ff.Stage(HEAD, lr=1e-2, name="head"),
        ff.Stage("bert.encoder.layer", lr=2e-3, start=2, name="encoder"),
    ]
    model = bert()
    initial = snapshot(model, buffers=True)
    rec = Recorder()
    epochs = 4
    trainer = FreezeflowTrainer(
        model=model,
        args=arguments(tmp_path, epochs),
        train_dataset=Data(),
        callbacks=[rec],
        schedule=stages,
    )
    trainer.train()
    uf = trainer.freezeflow_callback().unfreezer
    assert uf is not None
    assert [(t.name, t.epoch, t.step) for t in uf.history] == [
        ("head", 0, 0),
        ("encoder", 2, 2 * STEPS_PER_EPOCH),
    ]
    # the optimizer held the encoder from the start: one group per stage, none added later
    assert rec.groups == uf.group_names
    assert {g.stage_index for g in uf.layout.groups} == {0, 1}
    head_only = {n for n, _ in model.named_parameters() if n.startswith(tuple(HEAD))}
    assert rec.trainable[0] == rec.trainable[1] == head_only
    assert any(n.startswith("bert.encoder.layer.") for n in rec.trainable[2])
    # the encoder is bit-identical through epochs 0-1 and changes in epochs 2 and 3
    for e in (0, 1):
        assert not changed(initial, rec.at_epoch_end[e], "bert.encoder.")
        assert changed(
            initial if e == 0 else rec.at_epoch_end[e - 1], rec.at_epoch_end[e], "classifier."
        )
    assert changed(rec.at_epoch_end[1], rec.at_epoch_end[2], "bert.encoder.layer.0.")
    assert changed(rec.at_epoch_end[2], rec.at_epoch_end[3], "bert.encoder.layer.1.")
    assert not changed(initial, rec.at_epoch_end[3], "bert.embeddings.")
    # every step, every trainable group runs at stage LR x the linear warmup/decay factor
    total = epochs * STEPS_PER_EPOCH
    stage_of = {g.name: g.stage_index for g in uf.layout.groups}
    assert [s for s, _, _ in rec.lrs] == list(range(total))
    for step, _, lrs in rec.lrs:
        stage = 1 if step >= 2 * STEPS_PER_EPOCH else 0
        for name, lr in zip(uf.group_names, lrs):
            if stage_of[name] <= stage:
                expected = stages[stage].lr * linear(step, total)
                assert math.isclose(lr, expected, rel_tol=1e-9, abs_tol=1e-15), (step, name)
    # TrainingArguments.weight_decay applies to the decay groups only
    assert trainer.optimizer is not None
    decays = {g["name"]: g["weight_decay"] for g in trainer.optimizer.param_groups}
    assert all(v == (0.01 if n.endswith("/decay") else 0.0) for n, v in decays.items())


def test_resume_restores_trainable_layers_and_matches_uninterrupted(tmp_path: Path) -> None:
    stages = [
        ff.Stage(HEAD, lr=1e-2, name="head"),
        ff.Stage("bert.encoder.layer", lr=2e-3, start=1, name="encoder"),
    ]

    def run(out: Path, resume: Path | None, plain: bool) -> tuple[Any, Recorder, Any]:
        model = bert()
        cb = FreezeflowTrainerCallback(stages)
        rec = Recorder()
        args = arguments(out, 3, save_strategy="epoch")
        common: dict[str, Any] = {
            "model": model,
            "args": args,
            "train_dataset": Data(),
            "callbacks": [cb, rec],
        }
        if plain:  # a plain Trainer, given the optimizer; state found in output_dir
            opt = cb.create_optimizer(model, args)
            trainer = transformers.Trainer(optimizers=(opt, None), **common)
        else:
            trainer = FreezeflowTrainer(**common)
        trainer.train(resume_from_checkpoint=None if resume is None else str(resume))
        return model, rec, cb

    full_model, full_rec, full_cb = run(tmp_path / "full", None, plain=False)
    ckpt = tmp_path / "full" / f"checkpoint-{2 * STEPS_PER_EPOCH}"
    saved = json.loads((ckpt / STATE_NAME).read_text())
    assert saved["stage_index"] == 1
    assert any(n.startswith("bert.encoder.layer.") for n in saved["trainable_names"])

    for plain in (False, True):
        out = tmp_path / f"resumed-{plain}"
        if plain:  # the plain Trainer looks for the state in output_dir/checkpoint-N
            import shutil

            shutil.copytree(ckpt, out / ckpt.name)
        model, rec, cb = run(out, out / ckpt.name if plain else ckpt, plain=plain)
        assert rec.at_train_begin == full_rec.trainable[2]
        assert rec.groups == full_rec.groups
        assert cb.unfreezer.history == full_cb.unfreezer.history
        assert rec.lrs == full_rec.lrs[2 * STEPS_PER_EPOCH :]
        final, expected = snapshot(model, buffers=True), snapshot(full_model, buffers=True)
        for k, v in expected.items():
            assert torch.equal(v, final[k]), (plain, k)


def test_plateau_trigger_reads_evaluation_metrics(tmp_path: Path) -> None:
    scores = iter([0.5, 0.6, 0.55, 0.5])

    def metrics(_: Any) -> dict[str, float]:
        return {"score": next(scores)}

    stages = [
        ff.Stage(HEAD, lr=1e-2, name="head"),
        ff.Stage(
            "bert.encoder.layer",
            lr=2e-3,
            start=ff.on_plateau(1, mode="max", metric="score"),
            name="encoder",
        ),
    ]
    rec = Recorder()
    trainer = FreezeflowTrainer(
        model=bert(),
        args=arguments(tmp_path, 4, eval_strategy="epoch"),
        train_dataset=Data(),
        eval_dataset=Data(8, seed=1),
        compute_metrics=metrics,
        callbacks=[rec],
        schedule=stages,
    )
    trainer.train()
    uf = trainer.freezeflow_callback().unfreezer
    assert uf is not None
    last = uf.history[-1]
    assert (last.name, last.epoch, last.reason) == ("encoder", 3, "plateau of score")
    assert not any(n.startswith("bert.encoder.") for n in rec.trainable[2])
    assert any(n.startswith("bert.encoder.") for n in rec.trainable[3])


def test_plain_trainer_optimizer_is_refused(tmp_path: Path) -> None:
    stages = [ff.Stage(HEAD, lr=1e-2), ff.Stage("bert.encoder.layer", lr=2e-3, start=1)]
    trainer = transformers.Trainer(
        model=bert(),
        args=arguments(tmp_path, 1),
        train_dataset=Data(),
        callbacks=[FreezeflowTrainerCallback(stages)],
    )
    with pytest.raises(TrainingError, match="never train"):
        trainer.train()
    with pytest.raises(TrainingError, match="exactly one FreezeflowTrainerCallback"):
        FreezeflowTrainer(model=bert(), args=arguments(tmp_path, 1), train_dataset=Data())


def test_plain_trainer_resuming_a_checkpoint_outside_output_dir(tmp_path: Path) -> None:
    """A plain Trainer does not tell callbacks where it resumes from: the callback finds the
    folder through TrainingArguments(resume_from_checkpoint=...), and otherwise says where it
    looked and how to point it at the right folder (it does not claim the checkpoint holds no
    freezeflow state)."""
    stages = [
        ff.Stage(HEAD, lr=1e-2, name="head"),
        ff.Stage("bert.encoder.layer", lr=2e-3, start=1, name="encoder"),
    ]

    def run(out: Path, resume: Path | None, **kw: Any) -> tuple[Any, FreezeflowTrainerCallback]:
        model = bert()
        cb = FreezeflowTrainerCallback(stages)
        args = arguments(out, 3, save_strategy="epoch", **kw)
        opt = cb.create_optimizer(model, args)
        trainer = transformers.Trainer(
            model=model, args=args, train_dataset=Data(), callbacks=[cb],
            optimizers=(opt, None),
        )  # fmt: skip
        trainer.train(resume_from_checkpoint=None if resume is None else str(resume))
        return model, cb

    full_model, full_cb = run(tmp_path / "full", None)
    ckpt = tmp_path / "full" / f"checkpoint-{2 * STEPS_PER_EPOCH}"
    assert (ckpt / STATE_NAME).is_file()
    # resuming /…/full/checkpoint-4 with output_dir elsewhere: the error names both places
    # it looked and the three ways to point it at the folder
    with pytest.raises(CheckpointError) as info:
        run(tmp_path / "other", ckpt)
    msg = str(info.value)
    where = str(tmp_path / "other" / f"checkpoint-{2 * STEPS_PER_EPOCH}")
    assert f"resumed at global step {2 * STEPS_PER_EPOCH}" in msg
    assert f"no {STATE_NAME} of that step in {where!r}" in msg
    assert "does not tell callbacks which folder" in msg
    assert "use FreezeflowTrainer" in msg
    assert "callback.resume_from(folder) before trainer.train(...)" in msg
    assert "TrainingArguments(resume_from_checkpoint=folder)" in msg
    assert "was not saved with FreezeflowTrainerCallback" not in msg
    assert not (tmp_path / "other" / f"checkpoint-{3 * STEPS_PER_EPOCH}").exists()
    # told through TrainingArguments, the same resume restores the stage and matches the
    # uninterrupted run bit for bit
    model, cb = run(tmp_path / "told", ckpt, resume_from_checkpoint=str(ckpt))
    assert cb.unfreezer is not None and full_cb.unfreezer is not None
    assert cb.unfreezer.history == full_cb.unfreezer.history
    final, expected = snapshot(model, buffers=True), snapshot(full_model, buffers=True)
    for k, v in expected.items():
        assert torch.equal(v, final[k]), k


# --------------------------------------------------------------------------- DDP, 2 ranks

WORKER = TESTS / "_hf_ddp_worker.py"


@pytest.mark.slow
def test_ddp_under_torchrun_all_reduces_only_what_trains(tmp_path: Path) -> None:
    """2 gloo ranks as torchrun starts them, different data per rank. FreezeflowTrainer
    trains through a DDP module rebuilt at each stage change: ranks bit-identical after
    every step, exactly the trainable parameters all-reduced, the same weights as DDP built
    over every parameter with find_unused_parameters=True (which all-reduces them all at
    every step). The Trainer's own DDP module, built once after the first stage froze the
    model (what freezeflow did before), never all-reduces the later stages: the ranks drift
    apart. A plain Trainer with the callback is refused. A run resumed on both ranks
    mid-schedule ends as the uninterrupted one; gradient accumulation all-reduces once per
    optimizer step. 10-20 s (six Trainers)."""
    from _two_ranks import check_stages_and_bytes, run_scenarios

    scenarios = "ff,once,find_unused,plain,resume,accumulate"
    ranks = run_scenarios(WORKER, tmp_path, scenarios, "HF Trainer DDP", 300)
    ff_, once, unused = (ranks[0][s] for s in ("ff", "once", "find_unused"))
    assert ff_["history"] == [("head", 0, 0), ("top", 1, 2), ("low", 2, 5)]
    steps = list(range(8))
    assert sorted(ff_["states"]) == steps

    def differ(scenario: str, step: int) -> list[str]:
        a, b = (r[scenario]["states"][step] for r in ranks)
        return sorted(k for k in a if not torch.equal(a[k], b[k]))

    for step in steps:
        assert differ("ff", step) == [] and differ("find_unused", step) == [], step
        for k, v in ff_["states"][step].items():
            assert torch.equal(v, unused["states"][step][k]), (step, k)
    assert (ff_["ddp_modules"], once["ddp_modules"], unused["ddp_modules"]) == (3, 1, 1)
    # each stage trained exactly its parameters, and only they were all-reduced
    check_stages_and_bytes(ff_, unused, steps)
    everything = 4 * sum(ff_["numel"].values())
    assert [ff_["bytes"][s] for s in (0, 2, 5)] == [1224, 10120, 19016]
    assert everything == 22984
    # the DDP module built once all-reduces only the head; the ranks would drift apart from
    # the first unfreeze on, but the transition check compares the new gradients across the
    # ranks and stops the first step after the change, on both ranks, before it moves anything
    assert set(once["bytes"].values()) == {1224}
    assert differ("once", 1) == []
    assert sorted(once["states"]) == [0, 1]  # step 2, the first of stage 'top', was refused
    for r in ranks:
        msg = r["once"]["error"]
        assert msg.startswith("stage 1 ('top') made 'bert.encoder.layer.1.")
        assert "their gradients differ between the ranks" in msg
        assert "hint: ff.distributed.wrap_ddp" in msg
    # resumed on both ranks from the end of epoch 1 (FreezeflowTrainer.train): the wrapper is
    # built over the restored stage, the rest of the run is the uninterrupted one, bit for bit
    resumed = ranks[0]["resume"]
    assert resumed["history"] == ff_["history"] and resumed["ddp_modules"] == 2
    assert sorted(resumed["states"]) == [4, 5, 6, 7]
    for step in (4, 5, 6, 7):
        assert resumed["bytes"][step] == ff_["bytes"][step], step
        for r in ranks:
            for k, v in ff_["states"][step].items():
                assert torch.equal(v, r["resume"]["states"][step][k]), (step, k)
    # 2 micro-batches per optimizer step: one all-reduce per step (the Trainer's no_sync()
    # reaches freezeflow's DDP module), ranks bit-identical
    accumulated = ranks[0]["accumulate"]
    assert accumulated["bytes"] == ff_["bytes"]
    assert all(differ("accumulate", step) == [] for step in steps)
    for r in ranks:
        msg = r["plain"]["error"]
        assert msg.startswith("a plain Trainer under DDP (world size 2) wraps the model")
        assert "hint: FreezeflowTrainer(..., schedule=...)" in msg


def test_under_ddp_a_plain_trainer_and_other_wrappers_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The refusals of the 2-rank test, in one process made to look like rank 0 of 2."""
    stages = [ff.Stage(HEAD, lr=1e-2), ff.Stage("bert.encoder.layer", lr=2e-3, start=1)]
    model = bert()
    args = arguments(tmp_path, 1)
    cb = FreezeflowTrainerCallback(stages)
    opt = cb.create_optimizer(model, args)
    other = bert()
    trainer = FreezeflowTrainer(model=other, args=args, train_dataset=Data(), schedule=stages)
    trainer.create_optimizer()
    snaps = [Snapshot.take(model, opt), Snapshot.take(other, trainer.optimizer)]
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda group=None: 2)
    state, control = transformers.TrainerState(), transformers.TrainerControl()
    with pytest.raises(TrainingError) as info:
        cb.on_train_begin(args, state, control, optimizer=opt)
    assert str(info.value).startswith(
        "a plain Trainer under DDP (world size 2) wraps the model in DistributedDataParallel "
        "once, after freezeflow froze it for the first stage"
    )
    with pytest.raises(TrainingError) as info:
        trainer.training_step(other, Data()[0])  # the model, not DDP over it
    msg = str(info.value)
    assert "the Trainer wrapped the model in BertForSequenceClassification, not " in msg
    assert "hint: leave those options out with FreezeflowTrainer" in msg
    for snap in snaps:  # both models and optimizers as they were (tests/snapshot.py)
        snap.assert_unchanged()
    assert trainer.freezeflow_ddp is None


@pytest.mark.parametrize("decay", [0.0, 0.05])
def test_training_arguments_weight_decay_applies_zero_included(
    tmp_path: Path, decay: float
) -> None:
    # TrainingArguments.weight_decay (0.0 is Hugging Face's default) is the decay groups'
    # weight decay when no stage gives one; it is not replaced by the optimizer's own default
    trainer = FreezeflowTrainer(
        model=bert(),
        args=arguments(tmp_path, 1, weight_decay=decay),
        train_dataset=Data(),
        schedule=[ff.Stage(HEAD, lr=1e-2, name="head")],
    )
    optimizer = trainer.create_optimizer()
    decays = {g["name"]: g["weight_decay"] for g in optimizer.param_groups}
    assert any(n.endswith("/decay") for n in decays)
    assert all(v == (decay if n.endswith("/decay") else 0.0) for n, v in decays.items())


@pytest.mark.parametrize("decay", [0.0, 0.05])
def test_auto_schedule_decides_from_the_models_loss(tmp_path: Path, decay: float) -> None:
    # BERT's blocks: embeddings, layer.0, layer.1+pooler, classifier: two windows, two stages
    trainer = FreezeflowTrainer(
        model=bert(),
        args=arguments(tmp_path, 4, weight_decay=decay, learning_rate=1e-3),
        train_dataset=Data(),
        schedule=ff.auto(4, windows=2),
    )
    trainer.train()
    uf = trainer.freezeflow_callback().unfreezer
    assert uf is not None and isinstance(uf.schedule, ff.schedules.AutoSchedule)
    assert [d.stage_index for d in uf.decisions] == [1, 2]
    first, second = uf.decisions
    assert "trial took the probe loss" in first.text  # two windows: a trial each
    assert "the only window left, so no trial" in second.text
    assert {first.window, second.window} == {0, 1}  # every block trains by the end
    decays = {g["name"]: g["weight_decay"] for g in uf.optimizer.param_groups}
    assert all(v == (decay if n.endswith("/decay") else 0.0) for n, v in decays.items())


def test_a_time_budget_stops_the_trainer_after_the_last_epoch_that_fits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ff.unfreezer.clock, "time", Ticking())
    trainer = FreezeflowTrainer(
        model=bert(),
        args=arguments(tmp_path, 4, learning_rate=1e-3),
        train_dataset=Data(),
        schedule=ff.auto(4, windows=2, minutes=1e-6),
    )
    trainer.train()
    uf = trainer.freezeflow_callback().unfreezer
    assert uf is not None and uf.epoch == 0  # one epoch of four, then the deadline
    assert trainer.state.epoch == 1.0
