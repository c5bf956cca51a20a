"""``python -m freezeflow.zoo``: measure block discovery on every timm model name and every
transformers model type, write the results (docs/zoo/*.json) and the generated part of
docs/model-zoo.md.

Usage::

    python -m freezeflow.zoo                          # both zoos, every architecture
    python -m freezeflow.zoo --zoo timm --sample 50 --out /tmp/zoo --page /tmp/zoo/page.md
    python -m freezeflow.zoo --seconds 1800 --resume  # stop after 30 minutes; go on later
    python -m freezeflow.zoo --page-only              # the page again from the results
    python -m freezeflow.zoo --only 'dla*' --only hrnet_w18   # print these, write nothing

Everything is built on the meta device (no weights, no memory). Names are measured in an
order spread over the whole list, alternating between the zoos, and each measurement is
appended to ``<zoo>.progress.jsonl`` as it is made: a run stopped early (``--seconds``, or
interrupted) leaves an evenly spread sample, written as the result, and ``--resume`` goes
on from it; a complete run removes the progress file.
"""

from __future__ import annotations

import argparse
import fnmatch
import itertools
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from freezeflow.zoo.measure import Record, measure_timm, measure_transformers
from freezeflow.zoo.report import load, result, write_page

ZOOS: dict[str, Callable[[str], Record]] = {
    "timm": measure_timm,
    "transformers": measure_transformers,
}
_GOLDEN = 0.6180339887498949


def names(zoo: str) -> list[str]:
    """Every timm model name, or every transformers model type."""
    if zoo == "timm":
        import timm

        return list(timm.list_models())
    import transformers

    return sorted(transformers.CONFIG_MAPPING.keys())


def spread(all_names: list[str]) -> list[str]:
    """``all_names`` in an order whose every prefix is spread evenly over the sorted list
    (a low-discrepancy sequence), so that a run stopped early is a fair sample."""
    order = sorted(range(len(all_names)), key=lambda i: (i * _GOLDEN) % 1.0)
    return [all_names[i] for i in order]


def main(argv: Sequence[str] | None = None) -> int:
    root = Path.cwd()
    p = argparse.ArgumentParser(
        prog="python -m freezeflow.zoo", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--zoo", choices=sorted(ZOOS), action="append", help="default: both")
    p.add_argument("--sample", type=int, metavar="N", help="measure N names per zoo, not all")
    p.add_argument("--seconds", type=float, help="stop after this long (a spread sample)")
    p.add_argument("--resume", action="store_true", help="keep the progress files' records")
    p.add_argument("--out", type=Path, default=root / "docs" / "zoo", help="result folder")
    p.add_argument("--page", type=Path, default=root / "docs" / "model-zoo.md")
    p.add_argument("--page-only", action="store_true", help="rewrite the page from --out")
    p.add_argument(
        "--only",
        action="append",
        metavar="PATTERN",
        help="measure the names matching this shell pattern (repeatable) and print their "
        "records; writes nothing",
    )
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    zoos = sorted(args.zoo or ZOOS)
    if args.only:
        return only(zoos, args.only)
    if not args.page_only:
        measure(args, zoos)
    results = [
        load(args.out / f"{z}.json") for z in sorted(ZOOS) if (args.out / f"{z}.json").is_file()
    ]
    write_page(args.page, results)
    return 0


def only(zoos: list[str], patterns: list[str]) -> int:
    """Measure the names of ``zoos`` that match one of ``patterns`` and print each record
    (status, blocks, reason); 1 if a pattern matches no name."""
    import torch

    torch.set_num_threads(1)
    matched = 0
    for zoo in zoos:
        for name in names(zoo):
            if any(fnmatch.fnmatchcase(name, pat) for pat in patterns):
                matched += 1
                r = ZOOS[zoo](name)
                reason = f": {r['reason']}" if "reason" in r else ""
                print(f"{zoo}:{name} {r['status']} ({r.get('blocks', '?')} blocks){reason}")
    if not matched:
        print(f"no {' or '.join(zoos)} name matches {' or '.join(patterns)}", file=sys.stderr)
        return 1
    return 0


def measure(args: argparse.Namespace, zoos: list[str]) -> None:
    """Measure ``zoos`` (alternating), appending to the progress files, then write each
    zoo's result file."""
    import torch

    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    todo: dict[str, list[str]] = {}
    done: dict[str, list[Record]] = {}
    for zoo in zoos:
        chosen = spread(names(zoo))[: args.sample] if args.sample else spread(names(zoo))
        progress = args.out / f"{zoo}.progress.jsonl"
        done[zoo] = []
        if args.resume and progress.is_file():
            done[zoo] = [json.loads(line) for line in progress.read_text().splitlines() if line]
        elif progress.exists():
            progress.unlink()
        seen = {r["name"] for r in done[zoo]}
        todo[zoo] = [n for n in chosen if n not in seen]
    deadline = None if args.seconds is None else time.monotonic() + args.seconds
    total = sum(len(t) for t in todo.values())
    queue = [
        (zoo, name)
        for pair in itertools.zip_longest(*(todo[z] for z in zoos))
        for zoo, name in zip(zoos, pair, strict=True)
        if name is not None
    ]
    try:
        for i, (zoo, name) in enumerate(queue):
            if deadline is not None and time.monotonic() > deadline:
                break
            record = ZOOS[zoo](name)
            done[zoo].append(record)
            with (args.out / f"{zoo}.progress.jsonl").open("a") as f:
                f.write(json.dumps(record) + "\n")
            if not args.quiet:
                print(f"[{i + 1}/{total}] {zoo}:{name} {record['status']}", flush=True)
    except KeyboardInterrupt:  # keep what is measured
        pass
    for zoo in zoos:
        every = len(names(zoo))
        data = result(zoo, done[zoo], sample=len(done[zoo]) < every)
        data["of"] = every
        (args.out / f"{zoo}.json").write_text(json.dumps(data, indent=1) + "\n")
        if not data["sample"]:  # complete: nothing to resume
            (args.out / f"{zoo}.progress.jsonl").unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(main())
