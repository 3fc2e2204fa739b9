"""The README's Python snippets run as written."""
import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
# The migration snippet shows an edit of the user's own code (their width, probs, image).
RUNNABLE = [b for b in BLOCKS if "DenseCRF2D(width, height" not in b]


def test_readme_has_snippets():
    assert len(RUNNABLE) >= 3


@pytest.mark.parametrize("snippet", RUNNABLE, ids=[f"block{i}" for i in range(len(RUNNABLE))])
def test_readme_snippet_runs(snippet, capsys):
    exec(compile(snippet, str(README), "exec"), {"__name__": "readme"})
