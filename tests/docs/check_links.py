#!/usr/bin/env python3
"""Every relative link in README.md and docs/*.md resolves.

A link is `[text](target)`, `![alt](target)`, or `[text]: target`; links with a scheme (https:, mailto:...) and
autolinks (`<https://...>`, which always have one) are not checked.
The target's file (relative to the linking file) must exist; an
`#anchor` must name a heading of the target Markdown file (GitHub's
slugs: lower case, punctuation dropped, spaces to hyphens, `-1`, `-2`...
for repeats) or of the linking file itself for `#anchor` alone.
Code blocks and inline code are skipped.

Run from anywhere: `python3 tests/docs/check_links.py [FILE.md ...]`
(default: README.md and docs/*.md). Exits 1 and lists every broken link.
"""

import re
import sys
from pathlib import Path
from urllib.parse import unquote

ROOT = Path(__file__).resolve().parents[2]

FENCE = re.compile(r"^\s*(```|~~~)")
INLINE_CODE = re.compile(r"(`+)(.+?)\1")
# [text](target "title") and ![alt](target); text may hold one level of [..].
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
HTML_ANCHOR = re.compile(r"<a\s+(?:name|id)=\"([^\"]+)\"")


def prose_lines(text):
    """(line number, line) outside fenced code blocks."""
    fenced = None
    for number, line in enumerate(text.splitlines(), 1):
        match = FENCE.match(line)
        if match:
            if fenced is None:
                fenced = match.group(1)
            elif match.group(1) == fenced:
                fenced = None
            continue
        if fenced is None:
            yield number, line


def slug(heading):
    """GitHub's anchor for a heading's text."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links: their text
    text = text.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


_anchors = {}


def anchors(path):
    if path not in _anchors:
        found = set()
        seen = {}
        for _, line in prose_lines(path.read_text(encoding="utf-8")):
            found.update(HTML_ANCHOR.findall(line))
            match = HEADING.match(line)
            if not match:
                continue
            base = slug(match.group(2))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
        _anchors[path] = found
    return _anchors[path]


def links(line):
    line = INLINE_CODE.sub("", line)
    targets = INLINE_LINK.findall(line)
    targets += REFERENCE.findall(line)
    return targets


def check(path):
    problems = []
    text = path.read_text(encoding="utf-8")
    for number, line in prose_lines(text):
        for target in links(line):
            if not target or SCHEME.match(target) or target.startswith("//"):
                continue
            file_part, _, anchor = target.partition("#")
            file_part = unquote(file_part)
            where = f"{path.relative_to(ROOT)}:{number}: {target}"
            dest = (path.parent / file_part).resolve() if file_part else path
            if not dest.exists():
                problems.append(f"{where}: no such file {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest}")
                continue
            if anchor and dest.suffix == ".md" and dest.is_file():
                if unquote(anchor) not in anchors(dest):
                    problems.append(f"{where}: no heading #{anchor} in {dest.relative_to(ROOT)}")
    return problems


def main(argv):
    if argv:
        files = [Path(a).resolve() for a in argv]
    else:
        files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    problems = []
    count = 0
    for path in files:
        found = check(path)
        problems += found
        count += 1
    if problems:
        print("\n".join(problems))
        print(f"check_links: {len(problems)} broken link(s) in {count} file(s)")
        return 1
    print(f"check_links: every relative link of {count} file(s) resolves")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
