"""Every ```python block of the README, docs/ (subfolders too) and the layers' READMEs runs, so
the docs cannot drift from the code. The blocks of one file run in order in one namespace (a
later block may use what an earlier one built), in a temporary working folder."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = sorted(
    [ROOT / "README.md", *ROOT.glob("docs/**/*.md"), *ROOT.glob("packages/*/README.md")]
)
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def python_blocks(path: Path) -> list[str]:
    return PYTHON_BLOCK.findall(path.read_text(encoding="utf-8"))


@pytest.mark.parametrize(
    "document",
    [d for d in DOCUMENTS if python_blocks(d)],
    ids=lambda d: str(d.relative_to(ROOT)),
)
def test_code_blocks_run(document, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__docs__"}
    for index, block in enumerate(python_blocks(document)):
        code = compile(block, f"{document.name}, python block {index + 1}", "exec")
        exec(code, namespace)  # the documentation's own examples
