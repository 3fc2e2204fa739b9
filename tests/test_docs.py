"""The guides' code runs as written (docs/guides/*.md).

Each guide's ```python and ```bash blocks run in order, in a temporary folder, the Python blocks in
one namespace: like a reader pasting them into one session and one shell (the `segpost` command is
the one installed beside this Python). A block whose first line is ``# needs: cuda`` runs only where
torch sees a GPU; one whose first line is ``# not run: <reason>`` never runs (docs/developers.md).
"""
import os
import pathlib
import re
import subprocess
import sys

import pytest

GUIDES = pathlib.Path(__file__).resolve().parent.parent / "docs" / "guides"
PAGES = sorted(p for p in GUIDES.glob("*.md") if p.name != "index.md")
BLOCK = re.compile(r"^```(python|bash)\n(.*?)^```", re.S | re.M)


def blocks(page):
    """(language, code) of every Python and shell block, in the page's order."""
    return BLOCK.findall(page.read_text())


def _skip(code):
    first = code.lstrip().splitlines()[0] if code.strip() else ""
    if first.startswith("# not run:"):
        return True
    if first.startswith("# needs: cuda"):
        import torch

        return not torch.cuda.is_available()
    return False


def test_every_guide_has_python_code():
    assert len(PAGES) >= 6
    for page in PAGES:
        assert any(language == "python" for language, _ in blocks(page)), f"{page.name} has no Python block"


@pytest.mark.parametrize("page", PAGES, ids=[p.stem for p in PAGES])
def test_guide_code_runs(page, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    namespace = {"__name__": f"guide_{page.stem}"}
    for number, (language, code) in enumerate(blocks(page)):
        if _skip(code):
            continue
        where = f"{page}: block {number}"
        if language == "python":
            exec(compile(code, where, "exec"), namespace)
        else:
            run = subprocess.run(["bash", "-euo", "pipefail", "-c", code], env=env, capture_output=True, text=True)
            assert run.returncode == 0, f"{where} failed:\n{code}\n{run.stdout}\n{run.stderr}"
