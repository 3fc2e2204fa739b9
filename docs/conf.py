"""Sphinx configuration: the API reference built from segpost's numpydoc docstrings (`make docs`)."""
import segpost

project = "segpost"
release = segpost.__version__
extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.autosummary"]
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
napoleon_use_ivar = True  # "Attributes" as fields: no second description of dataclass fields and properties
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "undoc-members": False, "show-inheritance": False}
autosummary_generate = False
exclude_patterns = ["_build", "*.md"]
html_theme = "alabaster"
html_static_path = []
nitpicky = False
# Attribute names shared by several result classes (miou, width) make some cross-references ambiguous.
suppress_warnings = ["ref.python"]
# segpost.metrics.lightning subclasses torchmetrics.Metric; the docs build without the optional dependency.
autodoc_mock_imports = ["torchmetrics"]
