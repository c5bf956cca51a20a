"""The built site (``nox -s docs`` runs these after ``sphinx-build``, with
``FREEZEFLOW_DOCS_BUILD`` naming the build): the FAQ shows each message exactly as raised,
character for character (no curly quotes, no markup eaten), and every internal link and
anchor of every page leads somewhere. Elsewhere (``nox -s tests``) they are skipped: a site
left in build/docs may be older than the code."""

from __future__ import annotations

import html
import os
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import faq_messages
import pytest

if "FREEZEFLOW_DOCS_BUILD" not in os.environ:
    # a build left in build/docs may be older than the code; only the docs session, which has
    # just built it, says which build to check
    pytest.skip("nox -s docs runs these on the site it builds", allow_module_level=True)
BUILD = Path(os.environ["FREEZEFLOW_DOCS_BUILD"])
if not (BUILD / "index.html").exists():
    raise RuntimeError(f"FREEZEFLOW_DOCS_BUILD={BUILD} holds no built site")


class Page(HTMLParser):
    """The ids, the links and the text of the ``ff-message`` blocks of one HTML page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.ids: set[str] = set()
        self.links: list[str] = []
        self.messages: list[str] = []
        self._depth = 0  # inside a div.ff-message: the depth of open divs
        self._pre = False
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if a.get("id"):
            self.ids.add(a["id"] or "")
        for key in ("href", "src"):
            if a.get(key) and tag in ("a", "img", "link", "script"):
                self.links.append(a[key] or "")
        if tag == "div" and (self._depth or "ff-message" in (a.get("class") or "").split()):
            self._depth += 1
        if tag == "pre" and self._depth:
            self._pre, self._text = True, []

    def handle_endtag(self, tag: str) -> None:
        if tag == "pre" and self._pre:
            self._pre = False
            self.messages.append("".join(self._text))
        if tag == "div" and self._depth:
            self._depth -= 1

    def handle_data(self, data: str) -> None:
        if self._pre:
            self._text.append(data)


def parse(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def test_the_faq_shows_each_message_as_raised() -> None:
    shown = [m.rstrip("\n") for m in parse(BUILD / "faq.html").messages]
    for case, make in sorted(faq_messages.MESSAGES.items()):
        message = make()
        assert message in shown, f"{case}: the built FAQ does not show\n{message}"
    assert len(shown) == len(faq_messages.MESSAGES)


def test_internal_links_and_anchors_lead_somewhere() -> None:
    pages = {p: parse(p) for p in BUILD.rglob("*.html")}
    broken = []
    for path, page in pages.items():
        for link in page.links:
            parts = urlsplit(html.unescape(link))
            if parts.scheme or parts.netloc or link.startswith("mailto:"):
                continue
            target = (path.parent / unquote(parts.path)).resolve() if parts.path else path
            if target.is_dir():
                target = target / "index.html"
            if not target.exists():
                broken.append(f"{path.relative_to(BUILD)}: {link} (no such file)")
            elif parts.fragment and target.suffix == ".html":
                ids = pages[target].ids if target in pages else parse(target).ids
                if unquote(parts.fragment) not in ids:
                    broken.append(f"{path.relative_to(BUILD)}: {link} (no such anchor)")
    assert not broken, "\n".join(broken)
