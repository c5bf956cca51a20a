"""Render the pictures the docs show, from a real schedule on a real model.

Writes into ``docs/img/`` (or the folder given as the first argument):

- ``resnet18_summary.txt``: ``freezeflow.summary`` of torchvision's ResNet18 after the first
  stage of the example schedule has frozen everything else;
- ``resnet18_plan.txt``: ``print(freezeflow.plan(...))`` of that schedule;
- ``resnet18_plan.png``: ``freezeflow.plan(...).plot(...)``, each param group's base LR and
  the trainable-parameter count over the run;
- ``auto_time_to_accuracy.png``: from the run files of ``benchmarks/bench_auto.py``
  (``benchmarks/results/auto/<task>/*.json``), the validation accuracy after each epoch
  against the wall-clock seconds, one curve each for ``ff.auto`` as shipped, in speed mode
  (one window per stage) and with 0.1.0's three windows, and one per baseline
  (a swept one at the setting chosen on validation; the lowest seed recorded), one panel
  per task.

The model is ``torchvision.models.resnet18(weights=None)`` (random weights: nothing is
downloaded; the plan only depends on the architecture). Run it with
``python docs/gen_figures.py``; ``nox -s docs`` runs it before building.
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import torchvision

import freezeflow as ff

HERE = Path(__file__).resolve().parent
TOTAL_EPOCHS = 10


def example_schedule() -> ff.Schedule:
    """The schedule the docs use: head, then layer4, then layer3, with per-block LR decay."""
    return ff.Schedule(
        [
            ff.Stage("fc", lr=1e-3, weight_decay=0.01, name="head"),
            ff.Stage("layer4", lr=3e-4, start=3, lr_decay=0.5, name="layer4"),
            ff.Stage("layer3", lr=1e-4, start=6, lr_decay=0.5, name="layer3"),
        ]
    )


def time_to_accuracy(out: Path) -> Path:
    """The time-to-accuracy figure of the ``ff.auto`` benchmark's run files."""
    import matplotlib.pyplot as plt

    if str(HERE) not in sys.path:  # docs/sources.py reads the run files as the page does
        sys.path.insert(0, str(HERE))
    from sources import AutoRuns

    a = AutoRuns()
    runs = a.runs
    # ff.auto as shipped, in speed mode and with 0.1.0's three windows (the variations that
    # test one cause each are in the table); of a swept baseline, the setting chosen on
    # validation
    shown = ("default", "default_refreeze=1", "trials")
    chosen = {k for k in a.groups if k[1] == "auto" and k[2] in shown} | {
        k for k in a.chosen.values() if k[1] != "auto"
    }
    first = {k: rs[0] for k, rs in a.groups.items() if k in chosen}
    tasks = sorted({t for t, _, _ in first}) or ["(none)"]
    labels = sorted({m + (f" ({st})" if st else "") for _, m, st in first})
    palette = plt.get_cmap("tab10" if len(labels) <= 10 else "tab20")
    colour = {label: palette(i % palette.N) for i, label in enumerate(labels)}
    figure, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        ax.set_title(task)
        ax.set_xlabel("wall-clock seconds")
        ax.set_ylabel("validation accuracy")
        for (t, method, setting), r in sorted(first.items()):
            if t != task or not r["curve"]:
                continue
            xs, ys = zip(*r["curve"])
            label = method + (f" ({setting})" if setting else "")
            style = "-" if method == "auto" else "--"
            ax.plot(xs, ys, style, marker="o", markersize=3, label=label, color=colour[label])
        if not runs:
            ax.text(0.5, 0.5, "no run recorded yet", ha="center", transform=ax.transAxes)
        elif ax.lines:
            ax.legend(fontsize="x-small")
    figure.set_layout_engine("constrained")
    path = out / "auto_time_to_accuracy.png"
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def render(out: Path) -> list[Path]:
    """Write the figures into ``out``; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    schedule = example_schedule()
    model = torchvision.models.resnet18(weights=None)

    plan = ff.plan(model, schedule)
    plan_txt = out / "resnet18_plan.txt"
    plan_txt.write_text(str(plan) + "\n", encoding="utf-8")

    figure = plan.plot(TOTAL_EPOCHS)
    # the legend beside the plot, not over the last stage's lines
    lr_axes = figure.axes[0]
    handles, labels = lr_axes.get_legend_handles_labels()
    if lr_axes.get_legend() is not None:
        lr_axes.get_legend().remove()
    figure.set_layout_engine("constrained")
    figure.set_size_inches(10, 4)
    figure.legend(handles, labels, loc="outside right upper", fontsize="x-small")
    plan_png = out / "resnet18_plan.png"
    figure.savefig(plan_png, dpi=110)

    ff.freeze(model, ~schedule[0].trainable)  # what stage 0 leaves trainable
    summary_txt = out / "resnet18_summary.txt"
    summary_txt.write_text(str(ff.summary(model)) + "\n", encoding="utf-8")
    return [plan_txt, plan_png, summary_txt, time_to_accuracy(out)]


def main(argv: list[str]) -> int:
    out = Path(argv[0]) if argv else HERE / "img"
    for path in render(out):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
