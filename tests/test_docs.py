"""The guides' Python code blocks run as written (docs/guides/*.md).

Each guide's ```python blocks run in order in one namespace, in a temporary folder, like a reader
pasting them into one session. A block whose first line is ``# needs: cuda`` runs only where torch
sees a GPU; one whose first line is ``# not run: <reason>`` never runs (docs/developers.md).
"""
import pathlib
import re

import pytest

GUIDES = pathlib.Path(__file__).resolve().parent.parent / "docs" / "guides"
PAGES = sorted(p for p in GUIDES.glob("*.md") if p.name != "index.md")
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def blocks(page):
    return BLOCK.findall(page.read_text())


def _cuda():
    import torch

    return torch.cuda.is_available()


def test_every_guide_has_code():
    assert len(PAGES) >= 6
    for page in PAGES:
        assert blocks(page), f"{page.name} has no Python block"


@pytest.mark.parametrize("page", PAGES, ids=[p.stem for p in PAGES])
def test_guide_code_runs(page, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": f"guide_{page.stem}"}
    for number, code in enumerate(blocks(page)):
        first = code.splitlines()[0] if code.strip() else ""
        if first.startswith("# not run:"):
            continue
        if first.startswith("# needs: cuda") and not _cuda():
            continue
        exec(compile(code, f"{page}:block{number}", "exec"), namespace)
