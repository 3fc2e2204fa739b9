"""segpost's version: written here once, read by pyproject.toml (setuptools' ``attr:``)."""
__version__ = "0.1.0"
