"""Open every page of the built site in headless Chromium, as a reader would, and fail on what
a reader would see go wrong:

- **overflow**: content of the main column that sticks out past its right edge without being
  inside a box of its own that scrolls (a wide table or code block may scroll inside its
  box; the page itself must not be wider than the window, and nothing may be cut off);
- **images** that did not load;
- **console errors** (a script error, a stylesheet or script that failed to load).

Usage: ``python docs/browser_check.py BUILD_DIR [--width 1280] [--screenshots DIR PAGE...]``.
``nox -s docs`` runs it on ``build/docs`` after the build, and installs Debian's ``chromium``
first when no Chromium is on the PATH (``docs/install_chromium.sh``).

How: each page is copied with a small probe script added (first in ``<head>``: it records
console errors and failed resources; on ``load`` it measures the layout) and opened with
``chromium --headless --dump-dom``; the probe writes its findings into the DOM as JSON, which
this script reads back. Nothing but Chromium and the standard library is needed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

PROBE_HEAD = """<script>
window.__ff = {errors: []};
(function () {
  var err = console.error;
  console.error = function () {
    window.__ff.errors.push("console.error: " + Array.prototype.join.call(arguments, " "));
    return err.apply(console, arguments);
  };
  window.addEventListener("error", function (e) {
    var t = e.target;
    if (t && t !== window && (t.src || t.href)) {
      window.__ff.errors.push("failed to load " + (t.src || t.href));
    } else {
      window.__ff.errors.push("script error: " + e.message);
    }
  }, true);
  window.addEventListener("unhandledrejection", function (e) {
    window.__ff.errors.push("unhandled rejection: " + e.reason);
  });
})();
</script>"""

PROBE_BODY = """<script>
window.addEventListener("load", function () {
  setTimeout(function () {
    var out = {errors: window.__ff.errors, overflow: [], images: [], width: window.innerWidth,
               pageWidth: document.documentElement.scrollWidth};
    var main = document.querySelector("article[role=main]") || document.querySelector("main");
    if (main) {
      var column = main.closest(".content") || main;  // furo: the column around the article
      var edge = column.getBoundingClientRect().right;
      var scrolls = function (el) {
        for (var a = el.parentElement; a && a !== main; a = a.parentElement) {
          var ox = getComputedStyle(a).overflowX;
          if ((ox === "auto" || ox === "scroll") && a.getBoundingClientRect().right <= edge + 1) {
            return true;
          }
        }
        return false;
      };
      main.querySelectorAll("*").forEach(function (el) {
        var r = el.getBoundingClientRect();
        if (r.width === 0 || r.right <= edge + 1 || scrolls(el)) return;
        var parent = el.parentElement;
        if (parent && parent !== main && parent.getBoundingClientRect().right > edge + 1 &&
            !scrolls(parent)) return;  // report the outermost element only
        var text = (el.textContent || "").trim().replace(/\\s+/g, " ").slice(0, 80);
        out.overflow.push(el.tagName.toLowerCase() + (el.className ? "." + el.className : "") +
                          " sticks out by " + Math.round(r.right - edge) + " px: " + text);
      });
    } else {
      out.errors.push("no main column (article[role=main]) on the page");
    }
    document.querySelectorAll("article pre").forEach(function (pre) {
      if (pre.scrollWidth > pre.clientWidth + 1) {
        out.overflow.push("a code line is cut off (the block is " + pre.scrollWidth +
                          " px wide in a " + pre.clientWidth + " px box): " +
                          pre.textContent.split("\\n").reduce(function (a, b) {
                            return b.length > a.length ? b : a; }, "").slice(0, 80));
      }
    });
    if (out.pageWidth > out.width + 1) {
      out.overflow.push("the page is " + out.pageWidth + " px wide in a " + out.width +
                        " px window");
    }
    document.querySelectorAll("img").forEach(function (img) {
      if (!img.complete || img.naturalWidth === 0) out.images.push(img.getAttribute("src"));
    });
    var pre = document.createElement("pre");
    pre.id = "ff-probe";
    pre.textContent = JSON.stringify(out);
    document.body.appendChild(pre);
  }, 50);
});
</script>"""


def chromium() -> str:
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    raise SystemExit(
        "no Chromium on the PATH (looked for " + ", ".join(CANDIDATES) + "); hint: "
        "sudo apt-get install chromium, or let nox -s docs install it (docs/install_chromium.sh)"
    )


def _flags(width: int) -> list[str]:
    return [
        "--headless",
        "--no-sandbox",  # CI and containers run as root
        "--disable-gpu",
        "--hide-scrollbars",
        "--allow-file-access-from-files",
        f"--window-size={width},1000",
        "--virtual-time-budget=5000",
    ]


def with_probe(html: str) -> str:
    html = re.sub(r"<head>", "<head>" + PROBE_HEAD, html, count=1)
    return html.replace("</body>", PROBE_BODY + "</body>", 1)


def check_page(browser: str, page: Path, width: int) -> list[str]:
    """Problems of one (probed) page, as lines."""
    done = subprocess.run(
        [browser, *_flags(width), "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    found = re.search(r'<pre id="ff-probe">(.*?)</pre>', done.stdout, re.S)
    if not found:
        return [f"the probe did not report (chromium exit status {done.returncode})"]
    report = json.loads(found[1].replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&"))
    return (
        [f"overflow: {o}" for o in report["overflow"]]
        + [f"image not loaded: {src}" for src in report["images"]]
        + [f"console: {e}" for e in report["errors"]]
    )


def screenshot(browser: str, page: Path, width: int, height: int, out: Path) -> None:
    flags = [f for f in _flags(width) if not f.startswith("--window-size")]
    subprocess.run(
        [browser, *flags, f"--window-size={width},{height}", f"--screenshot={out}", page.as_uri()],
        capture_output=True,
        timeout=120,
        check=True,
    )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("build", type=Path, help="the built HTML site (build/docs)")
    parser.add_argument("--width", type=int, default=1280, help="window width in px")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--pages", nargs="+", help="check only these pages (relative paths)")
    parser.add_argument("--height", type=int, default=1000, help="screenshot height in px")
    parser.add_argument(
        "--screenshots",
        nargs="+",
        metavar=("DIR", "PAGE"),
        help="write PNG screenshots of these pages (paths relative to the build) into DIR",
    )
    args = parser.parse_args(argv)
    browser = chromium()
    build = args.build.resolve()
    pages = sorted(p.relative_to(build) for p in build.rglob("*.html"))
    if args.pages:
        pages = [Path(p) for p in args.pages]
    if not pages:
        raise SystemExit(f"no HTML pages under {build}; build the site first")
    with tempfile.TemporaryDirectory(prefix="ff-browser-") as tmp:
        site = Path(tmp) / "site"
        shutil.copytree(build, site)
        for rel in pages:
            path = site / rel
            path.write_text(with_probe(path.read_text(encoding="utf-8")), encoding="utf-8")
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            results = list(pool.map(lambda r: check_page(browser, site / r, args.width), pages))
        # the source listings (viewcode) show the code as it is: its long lines may scroll
        results = [
            [p for p in found if not (rel.parts[0] == "_modules" and "code line" in p)]
            for rel, found in zip(pages, results)
        ]
        if args.screenshots:
            out_dir, *shots = args.screenshots
            Path(out_dir).mkdir(parents=True, exist_ok=True)
            for rel in shots:
                name = rel.replace("/", "_").removesuffix(".html") + f"-{args.width}.png"
                screenshot(browser, build / rel, args.width, args.height, Path(out_dir) / name)
                print(f"screenshot {Path(out_dir) / name}")
    failed = 0
    for rel, problems in zip(pages, results):
        if problems:
            failed += 1
            print(f"FAIL {rel}")
            for p in problems:
                print(f"     {p}")
    print(f"{len(pages) - failed} of {len(pages)} pages clean at {args.width} px")
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("LANG", "C.UTF-8")
    raise SystemExit(main(sys.argv[1:]))
