"""The README is a front door and every page behind it is one click away, with no dead link.

Links are checked as GitHub renders them: a relative target must exist, and a ``#anchor``
must be the slug of a heading in the target page (GitHub's rule: lower case, punctuation
other than ``-`` and ``_`` dropped, spaces to ``-``, ``-1``, ``-2``... for repeats).
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
# docs/notes-*.md are engineers' working notes, not pages of the documentation: not checked.
DOCS = sorted(p for p in (ROOT / "docs").glob("*.md") if not p.name.startswith("notes-"))
PAGES = sorted([README, *DOCS, *(ROOT / "bench").glob("*.md")])

FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"\]\(([^()\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.M)


def _prose(text: str) -> str:
    """The text without code: a `](x)` inside code is not a link."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def slug(heading: str) -> str:
    s = heading.strip().lower()
    s = re.sub(r"[^\w\- ]", "", s)  # \w keeps letters, digits and "_" (unicode too), as GitHub does
    return s.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for heading in HEADING.findall(FENCE.sub("", page.read_text())):
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def links(page: Path) -> list[str]:
    return [t for t in LINK.findall(_prose(page.read_text())) if not re.match(r"[a-z][a-z0-9+.-]*:", t)]


def test_slug_follows_githubs_rule():
    assert slug("What `--overwrite` and `--resume` may remove") == "what---overwrite-and---resume-may-remove"
    assert slug("Scores file format (`slicer-scores/1`)") == "scores-file-format-slicer-scores1"
    assert slug("On a GPU machine: `bench/device_check.py`") == "on-a-gpu-machine-benchdevice_checkpy"


def test_a_broken_link_is_found(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("# Top\n[ok](#top) [bad](#nowhere) [gone](missing.md) `[code](x.md)` [web](https://x.org)\n")
    assert links(page) == ["#top", "#nowhere", "missing.md"]
    assert anchors(page) == {"top"}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    dead = []
    for target in links(page):
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            dead.append(f"{target}: no such file")
        elif anchor and (dest.suffix != ".md" or anchor not in anchors(dest)):
            dead.append(f"{target}: no heading with that anchor")
    assert not dead, f"{page.relative_to(ROOT)}: " + "; ".join(dead)


def test_readme_is_a_front_door():
    text = README.read_text()
    assert len(text.splitlines()) <= 150
    reached = {(README.parent / t.partition("#")[0]).resolve() for t in links(README)}
    unreached = [p.name for p in DOCS if p.resolve() not in reached]
    assert not unreached, f"docs pages the README does not link: {unreached}"
    assert (ROOT / "bench" / "RESULTS.md").resolve() in reached
