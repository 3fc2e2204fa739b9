"""Drop-in replacements for other libraries' APIs, backed by segpost."""


def __getattr__(name):
    # segpost.compat.pydensecrf on first use, as `import segpost.compat.pydensecrf` would.
    if name == "pydensecrf":
        import importlib

        return importlib.import_module(".pydensecrf", __name__)
    raise AttributeError(f"module 'segpost.compat' has no attribute {name!r}")
