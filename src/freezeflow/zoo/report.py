"""The measurement as a result file (JSON) and as the generated part of docs/model-zoo.md.

A result file holds the run (date, torch, timm and transformers versions, whether every
architecture was measured or a sample) and one record per architecture
(:mod:`freezeflow.zoo.measure`). :func:`render` turns the result files into markdown: the
totals per zoo and every disagreement with its reason; :func:`write_page` puts it between the
markers of the page, so that the page always shows what the committed results say.
"""

from __future__ import annotations

import datetime
import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from freezeflow.zoo.measure import Record, share

__all__ = ["BEGIN", "END", "load", "render", "result", "write_page"]

BEGIN, END = "<!-- zoo-sweep: begin -->", "<!-- zoo-sweep: end -->"
"""The markers of the generated part of the page."""

TARGET = 0.97
"""The share of architectures whose blocks must agree with their zoo's own grouping."""


def result(zoo: str, records: list[Record], *, sample: bool) -> dict[str, Any]:
    """A result file's content: the run and its records, sorted by name."""
    import torch

    versions = {"torch": str(torch.__version__)}
    for package in ("timm", "transformers"):
        try:
            versions[package] = __import__(package).__version__
        except ImportError:  # pragma: no cover - the zoo measured needs its package
            versions[package] = "not installed"
    return {
        "zoo": zoo,
        "date": datetime.date.today().isoformat(),
        "versions": versions,
        "sample": sample,
        "records": sorted(records, key=lambda r: str(r["name"])),
    }


def load(path: Path) -> dict[str, Any]:
    """A result file, read."""
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _totals(data: dict[str, Any]) -> list[str]:
    records: list[Record] = data["records"]
    zoo = data["zoo"]
    agree, measured = share(records, zoo)
    counts = Counter(r["status"] for r in records)
    pct = 100 * agree / measured if measured else 0.0
    met = "meets" if measured and agree / measured >= TARGET else "misses"
    what = "model names" if zoo == "timm" else "model types"
    sampled = f" of {data.get('of', '?')}, an evenly spread sample" if data["sample"] else ""
    lines = [
        f"- **{zoo}** ({len(records)} {what}{sampled}): "
        f"{agree} of {measured} measured agree (**{pct:.1f}%**, {met} the {TARGET:.0%} target); "
        f"{counts['no_reference']} without a reference, {counts['build_error']} do not build "
        "on the meta device from their defaults."
    ]
    agreeing = [r for r in records if r["status"] == "agree"]
    accepted = 0
    for key, what in _NOTED[zoo]:
        noted = [r for r in agreeing if key in r]
        accepted += len(noted)
        if noted:
            lines.append(f"  Of the agreements, {len(noted)} {what} (`{key}`, listed below).")
    if accepted and measured:
        accepted = sum(1 for r in agreeing if any(key in r for key, _ in _NOTED[zoo]))
        strict = agree - accepted
        lines.append(
            f"  Counted strictly, with those {accepted} as disagreements: {strict} of "
            f"{measured} ({100 * strict / measured:.1f}%)."
        )
    if zoo == "transformers":
        heads = [r for r in records if "head_ok" in r]
        good = sum(bool(r["head_ok"]) for r in heads)
        lines.append(
            f"- **transformers heads**: the head block holds every layer the classification "
            f"model adds to its base model on {good} of {len(heads)} "
            "`*ForSequenceClassification` / `*ForImageClassification` classes that build."
        )
    return lines


_NOTED: dict[str, list[tuple[str, str]]] = {
    "timm": [
        (
            "boundary",
            "place a pretrained layer between the last unit and the classifier otherwise "
            "than timm (with the last unit where timm puts it with the classifier or in a "
            "group of its own, or the other way round)",
        ),
        (
            "unnamed",
            "have parameters before their units that timm's matcher names in no group "
            "(not compared)",
        ),
    ],
    "transformers": [
        (
            "goes_on",
            "have a `last(2)` other than the last two layers of their last layer list, "
            "after which the model goes on with more than one layer's worth of parameters "
            "or with layers of its own (not counted: no reference there)",
        )
    ],
}
"""Record keys under which an agreement says what the comparison did not hold against it."""


def _noted(data: dict[str, Any]) -> list[str]:
    """Every agreement that holds a :data:`_NOTED` key, with what the key says."""
    lines: list[str] = []
    for key, _ in _NOTED[data["zoo"]]:
        rows = [r for r in data["records"] if r["status"] == "agree" and key in r]
        if not rows:
            continue
        lines += ["", f"<details><summary>Agreements with `{key}`: {data['zoo']} "
                  f"({len(rows)})</summary>", ""]  # fmt: skip
        lines += [f"- `{r['name']}` ({r.get('model', '')}): `{r[key]}`" for r in rows]
        lines += ["", "</details>"]
    return lines


def _disagreements(data: dict[str, Any]) -> list[str]:
    rows = [r for r in data["records"] if r["status"] == "disagree"]
    if not rows:
        return []
    lines = [
        "",
        f"### Disagreements: {data['zoo']} ({len(rows)})",
        "",
        "| model | class | blocks | reference | reason |",
        "|---|---|---:|---:|---|",
    ]
    for r in rows:
        ref = r.get("reference")
        ref_text = len(ref) if isinstance(ref, list) else (ref if ref is not None else "")
        reason = str(r.get("reason", "")).replace("|", "\\|")
        lines.append(
            f"| `{r['name']}` | {r.get('model', '')} | {r.get('blocks', '')} | {ref_text} "
            f"| {reason} |"
        )
    return lines


def _others(data: dict[str, Any]) -> list[str]:
    rows = [r for r in data["records"] if r["status"] in ("no_reference", "build_error")]
    if not rows:
        return []
    lines = ["", f"<details><summary>Not measured: {data['zoo']} ({len(rows)})</summary>", ""]
    lines += [
        f"- `{r['name']}`: {r['status'].replace('_', ' ')}: {r.get('reason', '')}" for r in rows
    ]
    return [*lines, "", "</details>"]


def render(results: Sequence[dict[str, Any]]) -> str:
    """The generated markdown: run, totals and every disagreement of each result file."""
    if not results:
        return "\n(no measurement yet: run `python -m freezeflow.zoo`)\n"
    first = results[0]
    versions = ", ".join(f"{k} {v}" for k, v in first["versions"].items())
    lines = [
        "",
        f"Measured on {first['date']} with {versions} by `python -m freezeflow.zoo` "
        "(results in `docs/zoo/`).",
        "",
    ]
    for data in results:
        lines += _totals(data)
    for data in results:
        lines += _disagreements(data)
        lines += _noted(data)
        lines += _others(data)
    return "\n".join(lines) + "\n"


def write_page(page: Path, results: Sequence[dict[str, Any]]) -> None:
    """Put :func:`render`'s markdown between the markers of ``page``."""
    text = page.read_text()
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    page.write_text(text[:start] + render(results) + text[end:])
