"""The code blocks of the docs that show their output, executed.

A page opts in with a MyST comment line ``% output`` right before a ```` ```text ```` fence:
that fence shows what the code before it prints. Every ```` ```python ```` block of such a
page runs, in order, in one namespace (as a reader pasting them into one session would), and
each ``% output`` block must equal what the python blocks since the previous output block
printed. A python block that cannot run as shown (it needs the reader's own data) is preceded
by ``% not executed: <why>``; the stand-ins below (``train_loader``, ``val_loader``,
``evaluate``) let the usual ones run on a few random images instead.

A ```` ```text ```` block after ``% run`` holds shell commands (``$ freezeflow ...``) each
followed by what it prints (stdout and stderr); the command runs in the repository root.

Used by ``tests/e2e/test_docs_examples.py`` (``nox -s docs`` runs it). When the code's output
changes on purpose, ``python docs/examples.py --update`` rewrites the shown output from a
fresh run.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

FENCE = re.compile(r"^(`{3,})(.*)$")


@dataclass
class Block:
    """One fenced block: its info string, its body lines, where the body starts and ends (line
    indices, end exclusive) and the ``% ...`` comment right before its fence, if any."""

    info: str
    body: list[str]
    start: int
    end: int
    marker: str


def blocks(text: str) -> list[Block]:
    """The top-level fenced blocks of a MyST page."""
    lines = text.splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, info = m[1], m[2].strip()
        j = i + 1
        while j < len(lines) and lines[j].rstrip() != fence:
            j += 1
        k = i - 1
        while k >= 0 and not lines[k].strip():
            k -= 1
        marker = lines[k].strip()[1:].strip() if k >= 0 and lines[k].startswith("%") else ""
        found.append(Block(info, lines[i + 1 : j], i + 1, j, marker))
        i = j + 1
    return found


def executed_pages() -> list[Path]:
    """The pages with at least one ``% output`` or ``% run`` block."""
    return sorted(
        p
        for p in HERE.rglob("*.md")
        if any(b.marker in ("output", "run") for b in blocks(p.read_text(encoding="utf-8")))
    )


# --------------------------------------------------------------------------- stand-ins


def stand_ins() -> dict[str, object]:
    """What the pages' snippets take from the reader: a few random 64-px images of 10
    classes, in batches of 4."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 3, 64, 64, generator=g)
    y = torch.randint(0, 10, (16,), generator=g)
    train_loader = DataLoader(TensorDataset(x, y), batch_size=4, shuffle=True, generator=g)
    val_loader = DataLoader(TensorDataset(x[:8], y[:8]), batch_size=4)

    def evaluate(model: torch.nn.Module) -> float:
        model.eval()
        with torch.no_grad():
            return float(torch.nn.functional.cross_entropy(model(x[:8]), y[:8]))

    return {"train_loader": train_loader, "val_loader": val_loader, "evaluate": evaluate}


# --------------------------------------------------------------------------- running


@dataclass
class Shown:
    """An output block and what the code printed for it. A block whose first line is ``...``
    shows only the end of the output (what a library printed before it left out): the lines
    after ``...`` must be the printed output's last lines."""

    page: str
    line: int  # 1-based line of the block's first body line
    shown: str
    printed: str

    @property
    def elided(self) -> bool:
        return self.shown.startswith("...\n")

    @property
    def expected(self) -> str:
        """What the block should hold, given what the code printed."""
        if not self.elided:
            return self.printed
        keep = max(1, self.shown.count("\n") - 1)
        return "...\n" + "".join(self.printed.splitlines(keepends=True)[-keep:])

    @property
    def ok(self) -> bool:
        return self.shown == self.expected


def _run_python(source: str, namespace: dict[str, object], where: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            exec(compile(source, where, "exec"), namespace)
        except Exception as exc:
            raise AssertionError(f"{where} raised {type(exc).__name__}: {exc}") from exc
    return out.getvalue()


def _run_shell(body: list[str]) -> str:
    """The block again, each ``$ command`` followed by what it printed."""
    out: list[str] = []
    env = {**os.environ, "COLUMNS": "100"}
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    for line in body:
        if not line.startswith("$ "):
            continue
        command = line[2:].split("  #")[0].strip()
        done = subprocess.run(
            shlex.split(command), cwd=ROOT, env=env, capture_output=True, text=True, check=False
        )
        out.append(line)
        out.extend((done.stdout + done.stderr).rstrip("\n").splitlines())
    return "\n".join(out) + "\n"


def run_page(page: Path) -> list[Shown]:
    """Run the page's python blocks and its ``% run`` blocks; one ``Shown`` per output block."""
    import matplotlib

    matplotlib.use("Agg")
    rel = page.relative_to(HERE).as_posix() if page.is_relative_to(HERE) else page.name
    import freezeflow as ff  # every page assumes `import freezeflow as ff`

    namespace: dict[str, object] = {"__name__": "__docs__", "ff": ff, **stand_ins()}
    printed = ""
    shown: list[Shown] = []
    text = page.read_text(encoding="utf-8")
    here = Path.cwd()
    with tempfile.TemporaryDirectory(prefix="ff-docs-") as tmp:
        os.chdir(tmp)  # what the snippets write (runs/, checkpoints) goes here
        try:
            for b in blocks(text):
                body = "\n".join(b.body) + "\n"
                if b.info == "python" and not b.marker.startswith("not executed"):
                    printed += _run_python(body, namespace, f"docs/{rel}:{b.start + 1}")
                elif b.marker == "output":
                    shown.append(Shown(rel, b.start + 1, body, printed))
                    printed = ""
                elif b.marker == "run":
                    shown.append(Shown(rel, b.start + 1, body, _run_shell(b.body)))
        finally:
            os.chdir(here)
    return shown


def update(page: Path) -> bool:
    """Rewrite the page's output blocks with what the code prints now; True if it changed."""
    printed = {s.line: s.expected for s in run_page(page) if not s.ok}
    if not printed:
        return False
    lines = page.read_text(encoding="utf-8").splitlines()
    for b in reversed(blocks("\n".join(lines))):
        if b.start + 1 in printed:
            lines[b.start : b.end] = printed[b.start + 1].rstrip("\n").splitlines()
    page.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return True


def main(argv: list[str]) -> int:
    pages = executed_pages()
    if argv == ["--update"]:
        for page in pages:
            if update(page):
                print(f"updated {page.relative_to(ROOT)}")
        return 0
    bad = 0
    for page in pages:
        for s in run_page(page):
            bad += not s.ok
            print(f"{'ok  ' if s.ok else 'DIFF'} docs/{s.page}:{s.line}")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
