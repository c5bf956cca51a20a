"""Every result number the docs show, read from the benchmark outputs committed beside the
benchmarks (``benchmarks/results/``), never typed into a page.

``substitutions()`` is what docs/conf.py gives MyST (``myst_substitutions``): a page writes
``{{ auto.lite0.auto.test }}`` and the build puts ``85.9%`` there, or ``{{ table.auto }}`` on a
line of its own for a whole table. ``tests/e2e/test_docs_numbers.py`` checks that the result
pages type no accuracy or time of their own, and that every key they use exists.

The sources:

- ``benchmarks/results/demo/``: one run of the demo (``freezeflow demo``, the same as
  ``nox -s demo``): ``output.txt`` is what it printed, ``offline_transfer.json`` and
  ``offline_transfer.png`` what it saved, ``run.json`` where and when it ran;
- ``benchmarks/results/bench_auto.json``: the rows ``nox -s bench -- auto`` writes
  (``benchmarks/bench_auto.py``), one per task and method;
- ``benchmarks/results/engines.json``: ``python benchmarks/bench_engines.py``, the cost of
  the transition check and of soft freezing;
- ``benchmarks/results/auto/<task>/*.json``: one file per run of ``benchmarks/bench_auto.py``
  (task, method, setting, seed), the rows of the run-by-run table.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DEMO = RESULTS / "demo"

TASKS = ("lite0", "lite1", "noise")  # the order bench_auto.py runs and describes them
METHODS = ("auto", "tuned", "fastai", "full", "classic")


def load(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def secs(x: float) -> str:
    return f"{x:,.0f} s" if x >= 1000 else f"{x:.0f} s"


def points(a: float, b: float) -> str:
    """``a - b`` in percentage points of accuracy (both fractions), one decimal."""
    return f"{100 * a - 100 * b:.1f}"


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}"


def _table(header: list[str], align: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------- the demo


def demo() -> dict[str, str]:
    run = load(DEMO / "run.json")
    recipes = {r["name"]: r for r in load(DEMO / "offline_transfer.json")}
    out: dict[str, str] = {
        "demo.date": run["date"],
        "demo.machine": run["machine"],
        "demo.commit": run["commit"][:7],
        "demo.command": run["command"],
        "demo.total": secs(run["total_seconds"]),
        "demo.minutes": f"{run['total_seconds'] / 60:.0f}",
        "demo.note": run.get("note", ""),
    }
    rows = []
    for name, r in recipes.items():
        final = r["stages"][-1]["test_accuracy"]
        out[f"demo.{name}.final"] = pct(final)
        out[f"demo.{name}.seconds"] = secs(r["seconds"])
        for s in r["stages"]:
            out[f"demo.{name}.{s['stage']}"] = pct(s["test_accuracy"])
            rows.append(
                [name, s["stage"], s["epochs"], f"{s['trainable']:,}", pct(s["test_accuracy"])]
            )
    if {"classic", "freezeflow"} <= recipes.keys():
        c, f = recipes["classic"], recipes["freezeflow"]
        out["demo.gain"] = points(
            f["stages"][-1]["test_accuracy"], c["stages"][-1]["test_accuracy"]
        )
        out["demo.ratio"] = ratio(f["seconds"], c["seconds"])
    out["table.demo.stages"] = _table(
        ["recipe", "stage", "epochs", "trainable parameters", "test accuracy"],
        ["---", "---", "---", "---:", "---:"],
        rows,
    )
    out["table.demo.final"] = _table(
        ["recipe", "final test accuracy", "wall time"],
        ["---", "---:", "---:"],
        [
            [n, pct(r["stages"][-1]["test_accuracy"]), secs(r["seconds"])]
            for n, r in recipes.items()
        ],
    )
    return out


# --------------------------------------------------------------------------- ff.auto


def bench_auto() -> dict[str, str]:
    rows = load(RESULTS / "bench_auto.json")
    by = {(r["task"], r["method"]): r for r in rows}
    out: dict[str, str] = {"auto.date": rows[0]["date"], "auto.machine": rows[0]["machine"]}
    table = []
    for task in TASKS:
        for method in METHODS:
            r = by.get((task, method))
            if r is None:
                continue
            key = f"auto.{task}.{method}"
            out[f"{key}.val"] = pct(r["val_accuracy"])
            out[f"{key}.test"] = pct(r["test_accuracy"])
            out[f"{key}.seconds"] = secs(r["seconds"])
            label = "tuned (last k)" if method == "tuned" and task != "lite0" else method
            busy = "*" if "busy" in r else ""
            table.append(
                [
                    task,
                    f"**{label}**" if method == "auto" else label,
                    pct(r["val_accuracy"]),
                    f"**{pct(r['test_accuracy'])}**"
                    if method == "auto"
                    else pct(r["test_accuracy"]),
                    secs(r["seconds"]) + busy,
                ]
            )
            if method != "auto" and (task, "auto") in by:
                a = by[(task, "auto")]
                out[f"{key}.behind"] = points(a["test_accuracy"], r["test_accuracy"])
                out[f"{key}.time_ratio"] = ratio(a["seconds"], r["seconds"])
    out["table.auto"] = _table(
        ["task", "method", "validation accuracy", "test accuracy", "wall time"],
        ["---", "---", "---:", "---:", "---:"],
        table,
    )
    out["auto.busy"] = "; ".join(
        f"{r['task']} {r['method']}: {r['busy']}" for r in rows if "busy" in r
    )
    return out


# --------------------------------------------------------------------------- engines


def engines() -> dict[str, str]:
    """What the transition check and soft freezing cost (``benchmarks/bench_engines.py``)."""
    r = load(RESULTS / "engines.json")
    c, s = r["check"], r["soft"]
    h, o = s["hard"], s["soft"]
    out = {
        "engines.date": r["date"],
        "engines.machine": r["machine"],
        "engines.torch": r["torch"],
        "engines.check_ratio": f"{c['ratio']:.3f}",
        "engines.soft_ratio": f"{s['step_ratio']:.2f}",
        "engines.note": r.get("note") or "nothing else ran",
    }

    def mb(x: float) -> str:
        return f"{x:.2f} MiB"

    out["table.engines_check"] = _table(
        ["what", "with", "without", "ratio"],
        ["---", "---:", "---:", "---:"],
        [
            [
                "step time through a 3-stage run, transition check on (`verify=True`, the "
                f"default) vs off; 4-layer transformer, medians of {c['steps']} steps each",
                f"{c['step_ms_verify']:.2f} ms",
                f"{c['step_ms_no_verify']:.2f} ms",
                f"**{c['ratio']:.3f}**",
            ],
            [
                "the check itself, at the first step after a change "
                f"({c['check_tensors']} newly trainable tensors)",
                f"{c['check_ms']:.3f} ms",
                "",
                "",
            ],
        ],
    )
    out["table.engines_soft"] = _table(
        ["", "hard", "soft", "soft / hard"],
        ["---", "---:", "---:", "---:"],
        [
            ["step time (median)", f"{h['step_ms']:.1f} ms", f"{o['step_ms']:.1f} ms",
             f"**{s['step_ratio']:.2f}**"],
            ["saved for the backward (activations)", mb(h["saved_for_backward_mb"]),
             mb(o["saved_for_backward_mb"]), ""],
            ["gradients alive after backward", mb(h["gradients_mb"]), mb(o["gradients_mb"]), ""],
            ["optimizer state after the step", mb(h["optimizer_state_mb"]),
             mb(o["optimizer_state_mb"]), ""],
        ],
    )  # fmt: skip
    return out


# --------------------------------------------------------------------------- ff.auto, run by run


def _mean_sd(values: list[float]) -> str:
    mean = sum(values) / len(values)
    if len(values) == 1:
        return pct(mean)
    sd = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
    return f"{pct(mean)} ± {100 * sd:.1f}"


def _avg(runs: list[dict[str, Any]], field: str) -> float:
    """The mean of ``field`` over ``runs`` (seeds of one run of the benchmark)."""
    return float(sum(r[field] for r in runs) / len(runs))


HEADLINE = "default"
"""The ``ff.auto`` setting of ``benchmarks/bench_auto.py`` that is ``ff.auto(7)`` as shipped."""

Key = tuple[str, str, str]
"""A run of ``benchmarks/bench_auto.py`` without its seed: (task, method, setting)."""


class AutoRuns:
    """The run files of ``benchmarks/bench_auto.py`` grouped by (task, method, setting),
    each group by seed; the setting of each sweep chosen on validation and each task's best
    baseline. The results page's tables and prose and its figure (docs/gen_figures.py) read
    them through this one class."""

    def __init__(self) -> None:
        files = sorted((RESULTS / "auto").glob("*/*.json"))
        self.runs = sorted((load(f) for f in files), key=lambda r: r["seed"])
        self.groups: dict[Key, list[dict[str, Any]]] = {}
        for r in self.runs:
            self.groups.setdefault((r["task"], r["method"], r["setting"]), []).append(r)
        self.chosen: dict[tuple[str, str], Key] = {}
        """Each (task, method): its setting with the best mean validation accuracy."""
        for task, method, _ in self.groups:
            keys = [k for k in self.groups if k[:2] == (task, method)]
            self.chosen[(task, method)] = max(keys, key=self.val)

    def val(self, key: Key) -> float:
        """The mean validation accuracy of ``key`` over its seeds."""
        return _avg(self.groups[key], "val_accuracy")

    def best_baseline(self, task: str) -> Key | None:
        """The task's best method other than ``ff.auto``, at its chosen setting."""
        picks = [k for (t, m), k in self.chosen.items() if t == task and m != "auto"]
        return max(picks, key=self.val) if picks else None


def _deciding(run: dict[str, Any]) -> float:
    """The seconds ``run`` spent deciding: in its decisions, less the winning trials' steps
    kept as training (``kept_seconds``; absent from runs whose trials were all rolled back)."""
    return float((run["decision_seconds"] or 0.0) - (run.get("kept_seconds") or 0.0))


def _share(runs: list[dict[str, Any]], field: str = "") -> float:
    """The mean share of its wall time each of ``runs`` spent deciding (or in ``field``)."""
    part = (lambda r: r.get(field) or 0.0) if field else _deciding
    return float(sum(part(r) / r["seconds"] for r in runs) / len(runs))


def _deciding_cell(runs: list[dict[str, Any]]) -> str:
    """The share deciding, and beside it the share kept as training where there was any."""
    kept = _share(runs, "kept_seconds")
    return pct(_share(runs)) + (f" (+{pct(kept)} kept)" if kept > 0 else "")


def _pairs(
    runs: list[dict[str, Any]], others: list[dict[str, Any]]
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """The runs of ``runs`` and of ``others`` with the same seed, as (run, other) pairs."""
    by_seed = {r["seed"]: r for r in others}
    return [(r, by_seed[r["seed"]]) for r in runs if r["seed"] in by_seed]


def _gains(prefix: str, pairs: list[tuple[dict[str, Any], dict[str, Any]]]) -> dict[str, str]:
    """``prefix.seeds``, ``.val_gain``, ``.test_gain`` (points, the first run of each pair
    over the second, means over the pairs) and ``.not_worse`` (seed-and-split pairs)."""
    mine, theirs = [m for m, _ in pairs], [t for _, t in pairs]
    out = {f"{prefix}.seeds": str(len(pairs))}
    for field, name in (("test_accuracy", "test"), ("val_accuracy", "val")):
        out[f"{prefix}.{name}_gain"] = f"{100 * (_avg(mine, field) - _avg(theirs, field)):+.1f}"
    wins = sum(m[f] >= t[f] for m, t in pairs for f in ("val_accuracy", "test_accuracy"))
    out[f"{prefix}.not_worse"] = f"{wins} of {2 * len(pairs)}"
    return out


def _windows(run: dict[str, Any]) -> list[str]:
    """The windows ``run``'s ``ff.auto`` decisions unfroze, in order (from its notes)."""
    found = (re.search(r"[;:] \+(.+?) at [0-9]", n) for n in run["notes"])
    return [m.group(1) for m in found if m]


def _late_epoch(run: dict[str, Any], epochs: int = 3) -> float:
    """The mean seconds of ``run``'s last ``epochs`` epochs (from its curve's times)."""
    times = [0.0] + [float(point[0]) for point in run["curve"]]
    return (times[-1] - times[-1 - epochs]) / epochs


def auto_runs() -> dict[str, str]:
    """The run files of ``benchmarks/bench_auto.py`` (``benchmarks/results/auto/<task>/``),
    one row per task, method and setting: the mean (and spread) over the seeds recorded; in
    a sweep, the setting with the best mean validation accuracy is marked; each task's best
    baseline (by validation accuracy) in bold."""
    a = AutoRuns()
    runs, groups, chosen = a.runs, a.groups, a.chosen
    out = {"auto_runs.count": str(len(runs)), "auto_runs.busy": "none"}
    if not runs:
        out["table.auto_runs"] = "No run recorded yet."
        return out
    rows = []
    for task in TASKS:
        best = a.best_baseline(task)
        for key in sorted((k for k in groups if k[0] == task), key=lambda k: (k[1], k[2])):
            rs = groups[key]
            label = key[1] + (f" ({key[2]})" if key[2] else "")
            swept = sum(1 for k in groups if k[:2] == key[:2]) > 1
            if key[1] != "auto" and swept and chosen[key[:2]] == key:
                label += ", chosen on validation"
            if key == best:
                label = f"**{label}: best baseline**"
            decided = [r for r in rs if r.get("decision_seconds")]
            rows.append(
                [
                    task,
                    label,
                    str(len(rs)),
                    _mean_sd([r["val_accuracy"] for r in rs]),
                    _mean_sd([r["test_accuracy"] for r in rs]),
                    secs(_avg(rs, "seconds")) + ("*" if any(r.get("note") for r in rs) else ""),
                    _deciding_cell(decided) if decided else "",
                ]
            )
    notes = sorted({r["note"] for r in runs if r.get("note")})
    out["auto_runs.busy"] = "; ".join(notes) if notes else "none"
    out["table.auto_targets"] = _targets(a)
    # speed mode's re-freezes, as its run printed them: with the default windows where
    # that ran, else 0.1.0's
    for key in sorted(groups, key=lambda k: k[2].startswith(HEADLINE)):
        if key[1] == "auto" and "refreeze" in key[2]:
            rs = groups[key]
            lines = [n for n in min(rs, key=lambda r: r["seed"])["notes"] if "froze again" in n]
            out[f"block.auto_refreezes.{key[0]}"] = "```text\n" + "\n".join(lines) + "\n```"
            out[f"auto_runs.{key[0]}.refreezes_setting"] = key[2]
    for task in TASKS:  # the hand-tuned schedule's time: against full fine-tuning's, and
        # where ff.auto's time goes against it
        tuned = groups.get((task, "tuned", ""))
        if not tuned:
            continue
        t = _avg(tuned, "seconds")
        if full := chosen.get((task, "full")):
            out[f"auto_runs.{task}.tuned_over_full"] = f"{t / _avg(groups[full], 'seconds'):.2f}x"
        if auto := groups.get((task, "auto", HEADLINE)):
            undecided = sum(r["seconds"] - _deciding(r) for r in auto) / len(auto)
            out[f"auto_runs.{task}.undecided_over_tuned"] = f"{undecided / t:.2f}x"
            late = [_late_epoch(r) for r in auto]  # the last 3 epochs: both decisions made
            tuned_late = sum(_late_epoch(r) for r in tuned) / len(tuned)
            out[f"auto_runs.{task}.late_epoch_over_tuned"] = (
                f"{sum(late) / len(late) / tuned_late:.2f}x"
            )
    for task in TASKS:  # ff.auto as shipped against the task's best baseline, for the prose
        best, auto = a.best_baseline(task), groups.get((task, "auto", HEADLINE))
        if best is None or not auto:
            continue
        b = groups[best]
        out[f"auto_runs.{task}.best"] = best[1] + (f" ({best[2]})" if best[2] else "")
        out[f"auto_runs.{task}.best_seeds"] = str(len(b))
        out[f"auto_runs.{task}.seeds"] = str(len(auto))
        out[f"auto_runs.{task}.deciding"] = pct(_share(auto))
        out[f"auto_runs.{task}.kept"] = pct(_share(auto, "kept_seconds"))
        out[f"auto_runs.{task}.deciding_all"] = pct(_share(auto, "decision_seconds"))
        for field, name in (("test_accuracy", "test"), ("val_accuracy", "val")):
            out[f"auto_runs.{task}.{name}"] = _mean_sd([r[field] for r in auto])
            lead = _avg(auto, field) - _avg(b, field)
            out[f"auto_runs.{task}.{name}_lead"] = f"{100 * lead:+.1f}"
        out[f"auto_runs.{task}.seconds"] = secs(_avg(auto, "seconds"))
        three = groups.get((task, "auto", "trials"))  # 0.1.0's default: three windows
        two = groups.get((task, "auto", "trials-windows=2"))  # two windows, every trial
        # rolled back, and a trial for the last window too
        if three:
            out.update(_gains(f"auto_runs.{task}.w3", _pairs(auto, three)))
        if speed := groups.get((task, "auto", HEADLINE + "_refreeze=1")):  # speed mode
            pairs = _pairs(speed, auto)
            out.update(_gains(f"auto_runs.{task}.speed", pairs))
            mine, theirs = [m for m, _ in pairs], [t for _, t in pairs]
            saved = 1 - _avg(mine, "seconds") / _avg(theirs, "seconds")
            out[f"auto_runs.{task}.speed.saved"] = f"{100 * saved:.0f}%"
            # runs that froze every window they unfroze again: the head trains alone after
            froze_all = sum(
                sum("froze again" in n for n in r["notes"]) >= len(_windows(r)) for r in speed
            )
            out[f"auto_runs.{task}.speed.froze_all"] = f"{froze_all} of {len(speed)}"
            out[f"auto_runs.{task}.speed.slower"] = _slower(pairs)
        if sig := groups.get((task, "auto", HEADLINE + "_decide=signals")):  # no trials
            pairs = _pairs(sig, auto)
            out.update(_gains(f"auto_runs.{task}.sig", pairs))
            out[f"auto_runs.{task}.sig.deciding"] = pct(_share(sig))
            same = sum(_windows(m) == _windows(t) for m, t in pairs)
            untried = sum("ahead by" in n for r in sig for n in r["notes"])
            out[f"auto_runs.{task}.sig.same"] = f"{same} of {len(pairs)}"
            out[f"auto_runs.{task}.sig.untried"] = f"{untried} of {len(sig)}"
        if high := groups.get((task, "auto", HEADLINE + "_lr=3e-3")):  # full's LR on noise
            mine = [m for _, m in _pairs(high, auto)]  # the default's rows, same seeds
            out[f"auto_runs.{task}.lr3.seeds"] = str(len(high))
            first = high[0]  # the lowest seed: its first stage change, as the run recorded it
            said = "the loss rose "
            rose = [n.split(said)[1].split("x")[0] for n in first["notes"] if said in n]
            if rose:  # the winning trial past measure.RAISED
                out[f"auto_runs.{task}.lr3.rose"] = f"{float(rose[0]):.2f}-fold"
            for n in first["notes"]:  # its trial again at a lower window LR, that passed
                if m := re.search(r"lower window LR (.*): the window trains at (1/\d+)", n):
                    last = m.group(1).split(", ")[-1]  # "1.13x at 2e-04"
                    out[f"auto_runs.{task}.lr3.lowered"] = m.group(2)
                    out[f"auto_runs.{task}.lr3.lowered_rose"] = f"{last.split('x')[0]}-fold"
            out[f"auto_runs.{task}.lr3.after_change"] = pct(first["curve"][2][1])
            for field, name in (("test_accuracy", "test"), ("val_accuracy", "val")):
                out[f"auto_runs.{task}.lr3.{name}"] = _mean_sd([r[field] for r in high])
                gain = _avg(high, field) - _avg(mine, field)
                out[f"auto_runs.{task}.lr3.{name}_gain"] = f"{100 * gain:+.1f}"
                lead = _avg(high, field) - _avg(b, field)
                out[f"auto_runs.{task}.lr3.{name}_lead"] = f"{100 * lead:+.1f}"
        if two:
            pairs = _pairs(auto, two)
            out.update(_gains(f"auto_runs.{task}.w2", pairs))
            out[f"auto_runs.{task}.w2.deciding"] = pct(_share(two))
            out[f"auto_runs.{task}.w2.slower"] = _slower(pairs)
            out[f"auto_runs.{task}.w2.seconds"] = secs(_avg(two, "seconds"))
    for key, rs in groups.items():  # the LR fastai's lr_find suggested
        if key[1:] == ("fastai", "lr_find"):
            found = [rs[0]["base_lr"]] if rs[0].get("base_lr") is not None else []
            if not found:  # a file recorded before the field: the run's note has it
                notes = rs[0]["notes"]
                found = [n.split("base_lr ")[1].split(";")[0] for n in notes if "base_lr" in n]
            if found:
                out[f"auto_runs.{key[0]}.lr_find"] = f"{float(found[0]):.2g}"
    out["table.auto_runs"] = _table(
        ["task", "method (setting)", "seeds", "validation", "test", "wall time", "deciding"],
        ["---", "---", "---:", "---:", "---:", "---:", "---:"],
        rows,
    )
    return out


def _slower(pairs: list[tuple[dict[str, Any], dict[str, Any]]]) -> str:
    """How much longer the head epoch took in the first run of each pair than in the
    second (the median): the same work in both (no decision yet, nothing but the head
    trains), so how much slower the machine ran one set of rows than the other, which their
    seconds carry."""
    slower = sorted(m["curve"][0][0] / t["curve"][0][0] for m, t in pairs)
    return f"{100 * (slower[len(slower) // 2] - 1):+.0f}%"


def _targets(a: AutoRuns) -> str:
    """Each ``ff.auto`` setting against the targets of the benchmark, from the same files:
    its mean wall time over the hand-tuned schedule's and over full fine-tuning's (the LR
    chosen on validation), its share deciding, and its test accuracy minus the best
    baseline's (by validation). A cell is empty where a run it needs is missing."""

    groups = a.groups

    def mean(key: Key | None, field: str) -> float | None:
        rs = groups.get(key) if key is not None else None
        return _avg(rs, field) if rs else None

    rows = []
    for task in TASKS:
        tuned = (task, "tuned", "")
        full = a.chosen.get((task, "full"))
        best = a.best_baseline(task)
        for key in sorted(k for k in groups if k[0] == task and k[1] == "auto"):
            secs_auto, test_auto = mean(key, "seconds"), mean(key, "test_accuracy")
            cells = []
            for other in (tuned, full):
                t = mean(other, "seconds")
                cells.append(f"{secs_auto / t:.2f}x" if t and secs_auto else "")
            cells.append(_deciding_cell(groups[key]))
            b = mean(best, "test_accuracy")
            lead = "" if b is None or test_auto is None else f"{100 * (test_auto - b):+.1f}"
            if lead and best is not None:
                lead += f" ({best[1]}{' ' + best[2] if best[2] else ''})"
            rows.append([task, key[2], str(len(groups[key])), *cells, lead])
    return _table(
        ["task", "ff.auto", "seeds", "time / tuned (target <= 1.2x)",
         "time / full (target <= 0.25x)", "deciding (target <= 5%)",
         "test - best baseline, points (target >= +1)"],
        ["---", "---", "---:", "---:", "---:", "---:", "---:"],
        rows,
    )  # fmt: skip


def substitutions() -> dict[str, str]:
    return {**demo(), **bench_auto(), **engines(), **auto_runs()}


if __name__ == "__main__":
    for key, value in substitutions().items():
        print(f"{key} = {value}")
