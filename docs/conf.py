"""Sphinx configuration (`make docs`): the guides and notes (MyST Markdown), the API reference from
segpost's numpydoc docstrings, and what `_ext/segpost_docs.py` generates at build time (the demo's
pictures, the command-line reference)."""
import sys
from pathlib import Path

import segpost

sys.path.insert(0, str(Path(__file__).resolve().parent / "_ext"))

project = "segpost"
release = segpost.__version__
extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.autosummary", "myst_parser", "segpost_docs"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
napoleon_use_ivar = True  # "Attributes" as fields: no second description of dataclass fields and properties
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "undoc-members": False, "show-inheritance": False}
autosummary_generate = False
# _generated: the pictures segpost_docs renders (embedded by the guides, not pages themselves).
exclude_patterns = ["_build", "_generated", "_ext"]
myst_heading_anchors = 3
# Options and code stay as typed: no "--" turned into a dash, no curly quotes.
smartquotes = False
html_theme = "alabaster"
html_static_path = []
nitpicky = False
# Attribute names shared by several result classes (miou, width) make some cross-references ambiguous.
suppress_warnings = ["ref.python"]
# segpost.metrics.lightning subclasses torchmetrics.Metric; the docs build without the optional dependency.
autodoc_mock_imports = ["torchmetrics"]
