"""The ``freezeflow`` command line: look at a model's blocks and a schedule's plan.

Usage::

    freezeflow inspect torchvision:resnet50            # block table (freezeflow.summary)
    freezeflow inspect timm:vit_small_patch16_224 --by layers
    freezeflow inspect transformers:bert                # a default BertConfig
    freezeflow inspect transformers:llama               # 7B parameters, on the meta device
    freezeflow plan torchvision:resnet18 schedule.yaml --num-classes 10
    freezeflow demo [ARGS...]                          # runs examples/offline_transfer.py

Models are built without downloading weights (``weights=None`` for torchvision,
``pretrained=False`` for timm, a configuration for transformers: its model type's defaults,
or a local directory's ``config.json``): block tables and plans only need the architecture.
``inspect`` builds on the meta device (no memory for weights, no initialisation), so it reads
any timm model name or transformers model type in about a second, however large.
User errors (an unknown model, a bad schedule file) print one line on stderr and exit with
status 2.
``python -m freezeflow`` is the same program.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import importlib
import inspect as pyinspect
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from freezeflow.errors import CliError, FreezeflowError, FreezeflowTypeError

__all__ = ["build_model", "demo_script", "main"]

SOURCES = ("torchvision", "timm", "transformers")
"""Model sources ``MODEL`` may name, as in ``torchvision:resnet50``."""

DEMO = Path("examples") / "offline_transfer.py"
"""The demo script, relative to the current directory or to the source checkout."""


# --------------------------------------------------------------------------- models


def _split(spec: str) -> tuple[str, str]:
    source, sep, arch = spec.partition(":")
    if not sep:
        source, arch = "torchvision", spec
    if source not in SOURCES or not arch:
        raise CliError(
            f"model {spec!r} is not of the form SOURCE:NAME with SOURCE one of "
            f"{', '.join(SOURCES)}; hint: torchvision:resnet50, timm:vit_small_patch16_224 "
            "or transformers:bert"
        )
    return source, arch


def _suggest(arch: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(arch, known, n=3, cutoff=0.5)
    return f"; nearest: {', '.join(close)}" if close else ""


def _torchvision(arch: str, num_classes: int | None) -> nn.Module:
    try:
        tv_models: Any = importlib.import_module("torchvision.models")
    except ImportError as exc:
        raise CliError(
            "torchvision is not installed; hint: pip install 'freezeflow[vision]'"
        ) from exc
    known = sorted(tv_models.list_models())
    if arch not in known:
        raise CliError(f"unknown torchvision model {arch!r}{_suggest(arch, known)}")
    builder = tv_models.get_model_builder(arch)
    kwargs: dict[str, Any] = {"weights": None}
    params = pyinspect.signature(builder).parameters
    if "weights_backbone" in params:  # detection/segmentation: no backbone download either
        kwargs["weights_backbone"] = None
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    try:
        model = builder(**kwargs)
    except (TypeError, ValueError) as exc:
        raise CliError(f"cannot build torchvision:{arch}: {exc}") from exc
    if not isinstance(model, nn.Module):  # pragma: no cover - torchvision builds modules
        raise FreezeflowTypeError(
            f"torchvision:{arch} built {type(model).__name__}, not an nn.Module; hint: pick a "
            "classification model (torchvision.models.list_models())"
        )
    return model


def _zoo(source: str, arch: str) -> Any:
    """Import the package ``source`` (timm, transformers), or say how to install it."""
    try:
        return importlib.import_module(source)
    except ImportError as exc:
        raise CliError(
            f"{source} is not installed, so {source}:{arch} cannot be built; "
            f"hint: pip install {source}"
        ) from exc


def _timm(arch: str, num_classes: int | None) -> nn.Module:
    timm = _zoo("timm", arch)
    if not timm.is_model(arch):
        raise CliError(f"unknown timm model {arch!r}{_suggest(arch, timm.list_models())}")
    kwargs: dict[str, Any] = {"pretrained": False}
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    try:
        model = timm.create_model(arch, **kwargs)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise CliError(f"cannot build timm:{arch}: {exc}") from exc
    if not isinstance(model, nn.Module):  # pragma: no cover - timm builds modules
        raise FreezeflowTypeError(
            f"timm:{arch} built {type(model).__name__}, not an nn.Module; hint: pick a model "
            "from timm.list_models()"
        )
    return model


def _transformers(arch: str, num_classes: int | None) -> nn.Module:
    tr = _zoo("transformers", arch)
    known = sorted(tr.CONFIG_MAPPING.keys())
    if not Path(arch).is_dir() and arch not in known:
        raise CliError(
            f"unknown transformers model type {arch!r}{_suggest(arch, known)}; hint: a "
            "model type such as bert, gpt2, vit, t5, or a local directory with a config.json"
        )
    try:
        if Path(arch).is_dir():
            config = tr.AutoConfig.from_pretrained(arch, local_files_only=True)
        else:
            config = tr.AutoConfig.for_model(arch)
        if num_classes is None:
            return tr.AutoModel.from_config(config)  # type: ignore[no-any-return]
        config.num_labels = num_classes
        for auto in ("AutoModelForSequenceClassification", "AutoModelForImageClassification"):
            with contextlib.suppress(ValueError):
                return getattr(tr, auto).from_config(config)  # type: ignore[no-any-return]
    except (OSError, TypeError, ValueError, KeyError) as exc:
        raise CliError(f"cannot build transformers:{arch}: {exc}") from exc
    raise CliError(
        f"transformers:{arch} has no sequence or image classification model to give "
        f"{num_classes} outputs; hint: leave out --num-classes"
    )


def build_model(spec: str, num_classes: int | None = None, *, meta: bool = False) -> nn.Module:
    """Build ``torchvision:NAME``, ``timm:NAME`` or ``transformers:TYPE`` (a bare ``NAME``
    means torchvision) with random weights; nothing is downloaded. ``TYPE`` is a transformers
    model type (``bert``, ``gpt2``, ``vit``, ``t5``: its default configuration) or a local
    directory holding a ``config.json``.

    Args:
        spec: the model, as on the command line.
        num_classes: passed to the model's constructor, which builds the head with that many
            outputs (the same as replacing the head of a pretrained model).
        meta: build on the meta device, without initialising the weights
            (:func:`freezeflow.core.on_meta_device`): names, shapes and blocks only, in a
            fraction of the time and with no memory for the weights, whatever the model's
            size.

    Raises:
        CliError: unknown source or model name, timm or transformers not installed, or the
            constructor refused the arguments.
    """
    source, arch = _split(spec)
    if num_classes is not None and num_classes < 1:
        raise CliError(
            f"--num-classes must be a positive integer, got {num_classes}; hint: --num-classes "
            "10, or leave it out to keep the model's head"
        )
    build = {"timm": _timm, "transformers": _transformers}.get(source, _torchvision)
    if not meta:
        return build(arch, num_classes)
    from freezeflow.core.meta import on_meta_device

    with on_meta_device():
        return build(arch, num_classes)


# --------------------------------------------------------------------------- commands


def _inspect(args: argparse.Namespace) -> int:
    from freezeflow.core.summary import summary

    model = build_model(args.model, args.num_classes, meta=True)  # the structure is enough
    print(summary(model, by=args.by))
    return 0


def _plan(args: argparse.Namespace) -> int:
    from freezeflow.schedules.schedule import Schedule
    from freezeflow.unfreezer.plan import plan

    path = Path(args.schedule)
    if not path.is_file():
        raise CliError(
            f"schedule file {str(path)!r} does not exist; expected the path of a YAML schedule; "
            "hint: Schedule.to_yaml() writes one"
        )
    schedule = Schedule.from_yaml(path)  # ScheduleError on bad YAML or keys
    model = build_model(args.model, args.num_classes)
    print(plan(model, schedule))
    return 0


def demo_script() -> Path | None:
    """The demo script: ``examples/offline_transfer.py`` under the current directory, else
    under the source checkout freezeflow is installed from (editable installs); None if
    neither exists."""
    checkout = Path(__file__).resolve().parents[2]
    for root in (Path.cwd(), checkout):
        candidate = root / DEMO
        if candidate.is_file():
            return candidate
    return None


def _demo(args: argparse.Namespace, rest: list[str]) -> int:
    script = demo_script()
    if script is None:
        raise CliError(
            f"the demo script {DEMO.as_posix()} was not found (it ships with the source "
            "checkout, not the wheel); hint: run from a clone of the freezeflow repository"
        )
    return subprocess.call([sys.executable, str(script), *rest])


def _parser() -> argparse.ArgumentParser:
    from freezeflow import __version__

    parser = argparse.ArgumentParser(
        prog="freezeflow",
        description="Inspect the blocks of a model and the plan of a fine-tuning schedule.",
    )
    parser.add_argument("--version", action="version", version=f"freezeflow {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    model_help = (
        "torchvision:NAME, timm:NAME or transformers:TYPE (built with random weights, "
        "nothing downloaded)"
    )
    classes_help = "build the model with a head of N outputs"

    p = sub.add_parser("inspect", help="print the block table of a model (freezeflow.summary)")
    p.add_argument("model", metavar="MODEL", help=model_help)
    p.add_argument("--by", choices=("blocks", "layers"), default="blocks", help="table rows")
    p.add_argument("--num-classes", type=int, metavar="N", help=classes_help)

    p = sub.add_parser("plan", help="print what a YAML schedule does to a model, per stage")
    p.add_argument("model", metavar="MODEL", help=model_help)
    p.add_argument("schedule", metavar="SCHEDULE.yaml", help="a schedule file (YAML or JSON)")
    p.add_argument("--num-classes", type=int, metavar="N", help=classes_help)

    sub.add_parser(
        "demo",
        add_help=False,  # --help goes to the script
        help="run examples/offline_transfer.py; every further argument goes to it",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); returns the exit
    status: 0 on success, 2 on a user error (one line on stderr), or the demo's own status."""
    parser = _parser()
    args, rest = parser.parse_known_args(list(sys.argv[1:] if argv is None else argv))
    if rest and args.command != "demo":
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        if args.command == "inspect":
            return _inspect(args)
        if args.command == "plan":
            return _plan(args)
        return _demo(args, rest)
    except FreezeflowError as exc:
        message = " ".join(str(exc).split())  # YAML errors span several lines
        print(f"freezeflow: error: {message}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `freezeflow inspect ... | head`: stop quietly
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
