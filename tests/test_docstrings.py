"""Every public name has a numpydoc docstring with an example (the doctests run them: `--pyargs segpost`)."""
import inspect

import pytest

import segpost
import segpost.lattice
import segpost.metrics
import segpost.metrics.lightning
import segpost.nn
import segpost.upsample
import segpost.viz

NAMESPACES = {
    "segpost": segpost, "segpost.metrics": segpost.metrics, "segpost.upsample": segpost.upsample,
    "segpost.viz": segpost.viz, "segpost.nn": segpost.nn, "segpost.lattice": segpost.lattice,
    "segpost.metrics.lightning": segpost.metrics.lightning,
}
CONSTANTS = {"MAX_LATTICE_DIM", "IMAGENET_MEAN", "IMAGENET_STD", "__version__", "metrics"}
PUBLIC = sorted({(space, name) for space, module in NAMESPACES.items() for name in module.__all__
                 if name not in CONSTANTS})


def _parameters(obj):
    target = obj.__init__ if inspect.isclass(obj) else obj
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):
        return []
    return [p for p in signature.parameters.values() if p.name not in ("self", "cls")]


@pytest.mark.parametrize("space, name", PUBLIC, ids=[f"{s}.{n}" for s, n in PUBLIC])
def test_public_name_has_a_numpydoc_docstring_with_an_example(space, name):
    obj = getattr(NAMESPACES[space], name)
    doc = inspect.getdoc(obj) or ""
    assert len(doc.splitlines()) >= 3, f"{space}.{name} has a one-line docstring"
    assert "Examples\n--------\n>>> " in doc, f"{space}.{name} has no runnable example"
    if _parameters(obj):
        # Records (results) document their fields as Attributes: those are their constructor's parameters.
        sections = ("Parameters\n----------", "Attributes\n----------") if inspect.isclass(obj) else (
            "Parameters\n----------",)
        assert any(section in doc for section in sections), f"{space}.{name} documents no parameters"
    if inspect.isfunction(obj) and inspect.signature(obj).return_annotation not in (None, "None"):
        assert "Returns\n-------" in doc or "Yields\n------" in doc, f"{space}.{name} documents no return value"
