"""The examples: the ResNet18 notebook and the Keras ResNet50 recipe run offline, say what they
claim, and select exactly what the seed tutorial's code makes trainable."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import runpy
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import paths
import pytest
import torch
import torchvision
from models import CLASSIC_PYTORCH
from torch import nn

import freezeflow as ff

EXAMPLES = paths.EXAMPLES
NOTEBOOK_PY = EXAMPLES / "resnet18_cifar10.py"
NOTEBOOK = EXAMPLES / "resnet18_cifar10.ipynb"
KERAS = EXAMPLES / "keras_resnet50_recipe.py"
DRIFT = re.compile(
    r"BatchNorm drift after the head-only phase .*: seed loop (\S+), freezeflow norm='eval' (\S+)"
)
KERAS_LAST_6 = ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3")


def _seed_head(in_features: int) -> nn.Sequential:
    """The head both seed listings add (Keras: Dense(128, relu), Dropout(0.5), Dense(10))."""
    return nn.Sequential(
        nn.Linear(in_features, 128), nn.ReLU(), nn.Dropout(0.5), nn.Linear(128, 10)
    )


def _trainable_ids(model: nn.Module) -> set[int]:
    return {id(p) for p in model.parameters() if p.requires_grad}


def _trainable_names(model: nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


# --------------------------------------------------------------------------- the notebook


def test_notebook_is_in_sync_with_its_script_and_has_no_outputs() -> None:
    jupytext = pytest.importorskip("jupytext")
    py, nb = jupytext.read(NOTEBOOK_PY), jupytext.read(NOTEBOOK)
    assert [(c.cell_type, c.source) for c in nb.cells] == [
        (c.cell_type, c.source) for c in py.cells
    ], "run: jupytext --sync examples/resnet18_cifar10.py"
    tags = [c.metadata.get("tags", []) for c in nb.cells]
    assert tags == [c.metadata.get("tags", []) for c in py.cells]
    (params,) = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert 'MODE = "offline"' in params.source
    raw = json.loads(NOTEBOOK.read_text(encoding="utf-8"))  # as committed: outputs stripped
    for cell in raw["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None


def _run_with_nbclient(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Execute the .ipynb in a kernel named python3 that runs this interpreter; its text."""
    nbclient = pytest.importorskip("nbclient")
    nbformat = pytest.importorskip("nbformat")
    # a private kernelspec dir first on JUPYTER_PATH: "python3" is this interpreter,
    # whatever kernels the user or the environment have installed
    spec = tmp_path / "kernels" / "python3"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    kernel = {"argv": argv, "display_name": "Python 3", "language": "python"}
    (spec / "kernel.json").write_text(json.dumps(kernel), encoding="utf-8")
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(EXAMPLES)}}
    )
    client.execute()
    text = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out["output_type"] == "stream":
                text.append(out["text"])
    return "".join(text)


def _run_with_runpy(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> str:
    """Fallback without a Jupyter kernel: run the jupytext script as a program."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    monkeypatch.chdir(EXAMPLES)
    monkeypatch.syspath_prepend(str(EXAMPLES))
    try:
        runpy.run_path(str(NOTEBOOK_PY), run_name="__main__")
    finally:
        plt.close("all")
    return capsys.readouterr().out


def test_notebook_runs_offline_and_shows_the_seed_bugs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        import ipykernel  # noqa: F401
        import nbclient  # noqa: F401
    except ImportError:
        out = _run_with_runpy(monkeypatch, capsys)
    else:
        out = _run_with_nbclient(tmp_path, monkeypatch)
    assert "mode offline: 32 px" in out
    match = DRIFT.search(out)
    assert match, out
    seed_drift, ff_drift = float(match.group(1)), float(match.group(2))
    assert seed_drift > 0.0
    assert ff_drift == 0.0
    assert "the seed loop printed losses [0.0, 0.0]" in out
    losses = re.search(r"fit\(\) reported train losses \[(.*)\]", out)
    assert losses, out
    values = [float(v) for v in losses.group(1).split(",")]
    assert len(values) == 3 and all(v > 0.0 for v in values)
    assert "drift of the never-unfrozen blocks after all stages: 0\n" in out


def test_the_notebooks_head_is_the_seeds() -> None:
    """ff.replace_head(model, 10, hidden=128, dropout=0.5) builds the seed's nn.Sequential."""
    model = torchvision.models.resnet18(weights=None)
    head = ff.replace_head(model, 10, hidden=128, dropout=0.5)
    assert isinstance(head, nn.Sequential)
    seed = _seed_head(512)
    assert [type(m) for m in head] == [type(m) for m in seed]
    assert [p.shape for p in head.parameters()] == [p.shape for p in seed.parameters()]
    assert head[2].p == 0.5


def test_classic_pytorch_recipe_trains_what_the_tutorial_code_trains() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None)
    # the seed's PyTorch listing, on the same model object
    for param in model.parameters():
        param.requires_grad = False
    num_features = model.fc.in_features
    model.fc = _seed_head(num_features)
    seed_optimizer = torch.optim.Adam(model.fc.parameters(), lr=0.001)
    seed_stages = [_trainable_ids(model)]
    assert {id(p) for g in seed_optimizer.param_groups for p in g["params"]} == seed_stages[0]
    for param in model.layer4.parameters():
        param.requires_grad = True
    seed_stages.append(_trainable_ids(model))

    # freezeflow, from everything trainable again
    for param in model.parameters():
        param.requires_grad = True
    uf = ff.GradualUnfreezer(model, CLASSIC_PYTORCH(), torch.optim.Adam(model.parameters()))
    ours = [_trainable_ids(model)]
    assert set(uf.history[-1].lrs.values()) == {1e-3}
    (t,) = uf.on_epoch_start(5)
    assert t.name == "finetune"
    ours.append(_trainable_ids(model))
    assert set(uf.history[-1].lrs.values()) == {1e-5}
    assert ours == seed_stages
    names = {n for n, _ in model.named_parameters()}
    assert _trainable_names(model) == {n for n in names if n.startswith(("fc.", "layer4."))}
    assert CLASSIC_PYTORCH()[1].reset_state  # the tutorial builds a new Adam for stage 2


# --------------------------------------------------------------------------- the Keras recipe


@pytest.fixture
def keras_recipe(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(EXAMPLES))  # for `from common import ...`
    spec = importlib.util.spec_from_file_location("keras_resnet50_recipe", KERAS)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_keras_recipe_trains_keras_last_10_layers_with_keras_batchnorm(
    keras_recipe: ModuleType,
) -> None:
    torch.manual_seed(0)
    model = keras_recipe.keras_model(None)
    assert isinstance(model, torchvision.models.ResNet)
    assert [type(m) for m in model.fc] == [type(m) for m in _seed_head(2048)]
    sched = keras_recipe.keras_schedule(head_epochs=1)
    uf = ff.GradualUnfreezer(model, sched, keras_recipe.keras_adam)
    assert isinstance(uf.optimizer, torch.optim.Adam)
    assert uf.optimizer.defaults["eps"] == 1e-7
    head = {n for n, _ in model.named_parameters() if n.startswith("fc.")}
    assert _trainable_names(model) == head
    assert set(uf.history[-1].lrs.values()) == {1e-3}

    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 10, (2,))
    model.train()
    nn.functional.cross_entropy(model(x), y).backward()  # type: ignore[no-untyped-call]
    uf.optimizer.step()
    assert len(uf.optimizer.state) > 0

    uf.on_epoch_start(1)
    assert len(uf.optimizer.state) == 0  # Keras recompiles: a fresh optimizer
    assert set(uf.history[-1].lrs.values()) == {1e-5}
    last6 = {
        n
        for n, _ in model.named_parameters()
        if n.rsplit(".", 1)[0] in {f"layer4.2.{m}" for m in KERAS_LAST_6}
    }
    assert len(last6) == 9  # 3 convs (weight, no bias) + 3 BatchNorms (weight, bias)
    assert _trainable_names(model) == head | last6

    model.train()
    training = {n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d) and m.training}
    assert training == {"layer4.2.bn1", "layer4.2.bn2", "layer4.2.bn3"}
    model.eval()
    assert not any(m.training for m in model.modules())


def test_keras_recipe_runs_offline_by_default() -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "2", "MPLBACKEND": "Agg"}
    proc = subprocess.run(
        [sys.executable, str(KERAS)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "Plan for ResNet: 2 stage(s)" in out
    assert "[1] finetune: starts at epoch 1, optimizer state reset" in out
    assert "ResNet: 4,726,154 of 23,771,594 parameters trainable" in out  # ff.summary
    assert (
        "trainable in the backbone after stage 'finetune': layer4.2.conv1.weight, "
        "layer4.2.bn1.weight, layer4.2.bn1.bias, layer4.2.conv2.weight, layer4.2.bn2.weight, "
        "layer4.2.bn2.bias, layer4.2.conv3.weight, layer4.2.bn3.weight, layer4.2.bn3.bias\n"
    ) in out
    assert (
        "BatchNorm layers in training mode after model.train(): "
        "layer4.2.bn1, layer4.2.bn2, layer4.2.bn3\n"
    ) in out
    assert "max change of the frozen BatchNorm layers' running statistics: 0\n" in out
    assert "final test loss" in out
