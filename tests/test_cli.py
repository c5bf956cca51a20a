"""The command line: `freezeflow inspect | plan | demo`, in-process and as `python -m`."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from models import RESNET18_BLOCKS

import freezeflow as ff
from freezeflow import cli

SCHEDULE = """\
stages:
  - trainable: fc
    lr: 1.0e-3
    name: head
  - trainable: layer4
    lr: 1.0e-5
    start: 5
    name: finetune
"""


@pytest.fixture
def schedule_file(tmp_path: Path) -> Path:
    path = tmp_path / "schedule.yaml"
    path.write_text(SCHEDULE, encoding="utf-8")
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_inspect_prints_the_block_table(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "inspect", "torchvision:resnet18")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == "ResNet: 11,689,512 of 11,689,512 parameters trainable (0 frozen)"
    assert lines[1].split() == ["#", "block", "params", "trainable", "status", "norm"]
    assert lines[3].split()[:3] == ["0", "conv1+bn1", "9,536"]
    assert [line.split()[1] for line in lines[3:-2]][-2:] == ["layer4.1", "fc"]
    # the same table as the library prints
    assert out.rstrip("\n") == str(ff.summary(cli.build_model("torchvision:resnet18")))


@pytest.mark.parametrize(
    ("argv", "first_line", "row"),
    [
        (
            ["resnet18", "--num-classes", "10"],
            "ResNet: 11,181,642 of 11,181,642 parameters trainable (0 frozen)",
            ["fc", "5,130"],
        ),
        (
            ["torchvision:resnet18", "--by", "layers"],
            "ResNet: 11,689,512 of 11,689,512 parameters trainable (0 frozen)",
            ["bn1", "128"],
        ),
    ],
    ids=["bare-name-num-classes", "by-layers"],
)
def test_inspect_options(
    capsys: pytest.CaptureFixture[str], argv: list[str], first_line: str, row: list[str]
) -> None:
    code, out, _ = run(capsys, "inspect", *argv)
    assert code == 0
    assert out.splitlines()[0] == first_line
    assert any(line.split()[1:3] == row for line in out.splitlines()[3:-2])


def test_plan_prints_each_stage(capsys: pytest.CaptureFixture[str], schedule_file: Path) -> None:
    code, out, err = run(capsys, "plan", "torchvision:resnet18", str(schedule_file))
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == "Plan for ResNet: 2 stage(s)"
    assert "[0] head: starts at epoch 0" in lines
    assert "[1] finetune: starts at epoch 5" in lines
    assert "    trainable parameters: 513,000 of 11,689,512 (4.4%)" in lines
    assert "    trainable parameters: 8,906,728 of 11,689,512 (76.2%)" in lines
    model = cli.build_model("torchvision:resnet18")
    expected = ff.plan(model, ff.Schedule.from_yaml(schedule_file))
    assert out.rstrip("\n") == str(expected)


def test_plan_with_num_classes(capsys: pytest.CaptureFixture[str], schedule_file: Path) -> None:
    code, out, _ = run(capsys, "plan", "resnet18", str(schedule_file), "--num-classes", "3")
    assert code == 0
    assert "    trainable parameters: 1,539 of 11,178,051 (0.0%)" in out.splitlines()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["inspect", "torchvision:resnet99"], "unknown torchvision model 'resnet99'; nearest:"),
        (["inspect", "keras:resnet50"], "is not of the form SOURCE:NAME"),
        (["inspect", "torchvision:resnet18", "--num-classes", "0"], "--num-classes must be"),
        (["plan", "torchvision:nope", "SCHEDULE"], "unknown torchvision model 'nope'"),
        (["plan", "resnet18", "missing.yaml"], "does not exist"),
        (["plan", "resnet18", "BAD_YAML"], "not valid YAML"),
        (["plan", "resnet18", "BAD_KEY"], "stage 0: unknown key 'learning_rate'"),
        (["plan", "resnet18", "BAD_POLICY"], "stage 1 ('stage1') cannot be bound to ResNet"),
    ],
    ids=[
        "unknown-model",
        "unknown-source",
        "bad-num-classes",
        "plan-unknown-model",
        "missing-file",
        "bad-yaml",
        "unknown-key",
        "policy-selects-nothing",
    ],
)
def test_user_errors_are_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    schedule_file: Path,
    argv: list[str],
    message: str,
) -> None:
    files = {
        "SCHEDULE": SCHEDULE,
        "BAD_YAML": "stages:\n  - trainable: fc\n    lr: [1e-3\n",
        "BAD_KEY": "stages:\n  - trainable: fc\n    learning_rate: 0.001\n",
        "BAD_POLICY": "stages:\n  - {trainable: fc, lr: 0.001}\n"
        "  - {trainable: encoder, lr: 0.0001, start: 2}\n",
    }
    argv = [str(tmp_path / "missing.yaml") if a == "missing.yaml" else a for a in argv]
    for i, a in enumerate(argv):
        if a in files:
            path = tmp_path / f"{a.lower()}.yaml"
            path.write_text(files[a], encoding="utf-8")
            argv[i] = str(path)
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert out == ""
    assert err.startswith("freezeflow: error: ")
    assert err.endswith("\n")
    assert err.count("\n") == 1, err
    assert message in err
    assert "Traceback" not in err


def test_missing_timm_is_one_clear_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # None in sys.modules makes every import of timm fail, however it is imported and
    # whether or not an earlier test imported the real one
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(ImportError):
        importlib.import_module("timm")
    code, _, err = run(capsys, "inspect", "timm:vit_small_patch16_224")
    assert code == 2
    assert err == (
        "freezeflow: error: timm is not installed, so timm:vit_small_patch16_224 cannot be "
        "built; hint: pip install timm\n"
    )


def test_timm_model_when_installed(capsys: pytest.CaptureFixture[str]) -> None:
    # timm is in the test dependencies; the guard skips only where it is not installed
    timm = pytest.importorskip("timm")
    code, out, err = run(capsys, "inspect", "timm:resnet18", "--num-classes", "10")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == "ResNet: 11,181,642 of 11,181,642 parameters trainable (0 frozen)"
    assert tuple(line.split()[1] for line in lines[3:-2]) == RESNET18_BLOCKS
    assert lines[-3].split()[1:3] == ["fc", "5,130"]
    # the model is timm's, built without weights
    model = timm.create_model("resnet18", pretrained=False, num_classes=10)
    assert out.rstrip("\n") == str(ff.summary(model))


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in ([], ["inspect"], ["inspect", "resnet18", "--bogus"], ["fly"]):
        with pytest.raises(SystemExit) as exc:
            cli.main(argv)
        assert exc.value.code == 2
        assert "usage: freezeflow" in capsys.readouterr().err


def test_demo_without_script_is_a_clear_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli, "demo_script", lambda: None)
    code, out, err = run(capsys, "demo", "--epochs", "1")
    assert (code, out) == (2, "")
    assert err.startswith(
        "freezeflow: error: the demo script examples/offline_transfer.py was not found"
    )
    assert err.count("\n") == 1


def test_demo_passes_every_argument_through(
    capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    script = tmp_path / "offline_transfer.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys
            print("demo got", sys.argv[1:])
            sys.exit(3)
            """
        ),
        encoding="utf-8",
    )
    monkeypatch.setattr(cli, "demo_script", lambda: script)
    assert cli.main(["demo", "--help", "--epochs", "2", "extra"]) == 3
    assert capfd.readouterr().out == "demo got ['--help', '--epochs', '2', 'extra']\n"


def test_demo_script_is_found_under_the_current_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "examples").mkdir()
    (tmp_path / "examples" / "offline_transfer.py").write_text("", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    assert cli.demo_script() == tmp_path / "examples" / "offline_transfer.py"


def test_python_dash_m(schedule_file: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ok = subprocess.run(
        [sys.executable, "-m", "freezeflow", "plan", "torchvision:resnet18", str(schedule_file)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("Plan for ResNet: 2 stage(s)\n")
    bad = subprocess.run(
        [sys.executable, "-m", "freezeflow", "inspect", "torchvision:resnet99"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert (bad.returncode, bad.stdout) == (2, "")
    assert bad.stderr.startswith("freezeflow: error: unknown torchvision model 'resnet99'")
    assert bad.stderr.count("\n") == 1


def test_transformers_model_type_when_installed(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    tr = pytest.importorskip("transformers")
    # a local directory's config.json (here a tiny BERT) is built without weights
    tr.BertConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=20, vocab_size=50).save_pretrained(tmp_path)  # fmt: skip
    code, out, err = run(capsys, "inspect", f"transformers:{tmp_path}", "--num-classes", "3")
    assert (code, err) == (0, "")
    rows = [line.split()[1] for line in out.splitlines()[3:-2]]
    assert rows == [
        "bert.embeddings",
        "bert.encoder.layer.0",
        "bert.encoder.layer.1+bert.pooler",
        "classifier",
    ]
    # a model type alone builds its default configuration
    code, out, err = run(capsys, "inspect", "transformers:gpt2")
    assert (code, err) == (0, "")
    rows = [line.split()[1] for line in out.splitlines()[3:-2]]
    # the base model has no head: its final norm goes with the last layer
    assert rows == ["wte+wpe", *(f"h.{i}" for i in range(11)), "h.11+ln_f"]


def test_transformers_unknown_type_is_one_clear_line(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("transformers")
    code, out, err = run(capsys, "inspect", "transformers:bertt")
    assert (code, out) == (2, "")
    assert err.startswith("freezeflow: error: unknown transformers model type 'bertt'; nearest: ")
    assert "bert" in err and err.count("\n") == 1


def test_inspect_builds_on_the_meta_device(capsys: pytest.CaptureFixture[str]) -> None:
    # no memory for the weights and no initialisation: a 631M-parameter ViT-H in a moment
    pytest.importorskip("timm")
    model = cli.build_model("timm:resnet18", meta=True)
    assert all(p.is_meta for p in model.parameters())
    assert not any(p.is_meta for p in cli.build_model("timm:resnet18").parameters())
    code, out, err = run(capsys, "inspect", "timm:vit_huge_patch14_224")
    assert code == 0 and not err
    assert "blocks.31+norm" in out and "630,764,800" in out
