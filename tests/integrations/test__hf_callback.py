"""freezeflow.integrations._hf_callback: FreezeflowTrainerCallback on its own, without a
training run: the optimizer it builds from TrainingArguments (weight decay included, for
fixed and ff.auto schedules alike), the folder it resumes from, and its public home."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("accelerate")

import transformers

import freezeflow as ff
from freezeflow.errors import CheckpointError
from freezeflow.integrations.transformers import STATE_NAME, FreezeflowTrainerCallback


def model() -> Any:
    cfg = transformers.BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=8,
        num_labels=2,  # type: ignore[call-arg]  # a PretrainedConfig keyword
    )
    torch.manual_seed(0)
    return transformers.BertForSequenceClassification(cfg)


def args(tmp_path: Path, decay: float, epochs: int = 4) -> Any:
    return transformers.TrainingArguments(
        output_dir=str(tmp_path),
        weight_decay=decay,
        num_train_epochs=epochs,
        report_to=[],
        use_cpu=True,
    )


@pytest.mark.parametrize("decay", [0.0, 0.05])
@pytest.mark.parametrize("kind", ["fixed", "auto"])
def test_training_arguments_weight_decay_is_the_optimizers_own(
    tmp_path: Path, decay: float, kind: str
) -> None:
    sched = (
        ff.Schedule([ff.Stage(["classifier", "bert.pooler"], lr=1e-2, name="head")])
        if kind == "fixed"
        else ff.auto(4)
    )
    cb = FreezeflowTrainerCallback(sched)
    optimizer = cb.create_optimizer(model(), args(tmp_path, decay))
    assert optimizer.defaults["weight_decay"] == decay
    assert cb.unfreezer is not None and cb.unfreezer.schedule == sched  # not rewritten
    decays = {g["name"]: g["weight_decay"] for g in optimizer.param_groups}
    assert any(n.endswith("/decay") for n in decays)
    assert all(v == (decay if n.endswith("/decay") else 0.0) for n, v in decays.items())


def test_an_auto_budget_other_than_the_trainers_epochs_is_refused(tmp_path: Path) -> None:
    cb = FreezeflowTrainerCallback(ff.auto(4))
    net = model()
    with pytest.raises(ff.ScheduleError, match=r"run lasts 3 epochs.*budget of 4"):
        cb.create_optimizer(net, args(tmp_path, 0.0, epochs=3))
    assert cb.unfreezer is None and all(p.requires_grad for p in net.parameters())


def test_resuming_from_a_folder_without_its_state_is_refused(tmp_path: Path) -> None:
    cb = FreezeflowTrainerCallback([ff.Stage("classifier", lr=1e-2)])
    with pytest.raises(CheckpointError, match=rf"holds no {STATE_NAME}.*which layers"):
        cb.resume_from(tmp_path)


def test_the_callback_lives_publicly_in_integrations_transformers() -> None:
    assert FreezeflowTrainerCallback.__module__ == "freezeflow.integrations.transformers"
    cb = FreezeflowTrainerCallback([ff.Stage("classifier", lr=1e-2)])
    again = pickle.loads(pickle.dumps(cb))
    assert type(again) is FreezeflowTrainerCallback
