"""mkdocs hook: the layers' READMEs become the site's layer guides.

A page line `--8<-- "packages/<layer>/README.md"` is replaced by that README (its links into
`../../docs/` made site links), and a page's links to a README (`../packages/<layer>/README.md`,
which work when browsing the repository) point at that layer's guide page instead.
"""

from __future__ import annotations

import re
from pathlib import Path

INCLUDE = re.compile(r'^--8<-- "([^"]+)"$', re.MULTILINE)
README_DOCS_LINK = re.compile(r"\]\(\.\./\.\./docs/")
README_LINK = re.compile(r"\]\(((?:\.\./)+)packages/(\w+)/README\.md\)")


def _included(match: re.Match, root: Path) -> str:
    text = (root / match.group(1)).read_text(encoding="utf-8")
    return README_DOCS_LINK.sub("](../", text)


def _guide_link(match: re.Match) -> str:
    up = match.group(1)[3:]  # one "../" fewer: docs/ is the site's root
    return f"]({up}layers/{match.group(2)}.md)"


def on_page_markdown(markdown: str, page, config, files) -> str:
    """Inline the READMEs a page names (paths relative to mkdocs.yml) and relink README links."""
    root = Path(config.config_file_path).parent
    markdown = INCLUDE.sub(lambda match: _included(match, root), markdown)
    return README_LINK.sub(_guide_link, markdown)
