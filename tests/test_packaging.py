"""The package under test is the one users get.

``make test`` (and so CI) installs segpost from its wheel and sets
``SEGPOST_TEST_INSTALLED=1``: then the tests must be running against that
installed copy, and it must hold every module and data file of the checkout.
"""
import importlib
import importlib.metadata
import os
import pathlib
import subprocess
import sys

import pytest

import segpost

ROOT = pathlib.Path(__file__).resolve().parent.parent
SOURCE_PACKAGE = ROOT / "segpost"
INSTALLED_PACKAGE = pathlib.Path(segpost.__file__).resolve().parent
# What the code reads at run time besides its modules.
PACKAGE_DATA = {"py.typed"}


def _package_files(root):
    return {
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and (p.suffix == ".py" or p.name in PACKAGE_DATA)
    }


def _installed_from_wheel():
    return os.environ.get("SEGPOST_TEST_INSTALLED") == "1"


@pytest.mark.skipif(not _installed_from_wheel(), reason="an editable or in-tree run (make dev-test)")
def test_tests_run_against_the_installed_package():
    assert not INSTALLED_PACKAGE.is_relative_to(ROOT), f"segpost imported from the source tree: {INSTALLED_PACKAGE}"


def test_ci_tests_the_installed_package():
    # CI must never fall back to the source tree: .ci/run goes through `make test`.
    if os.environ.get("CI"):
        assert _installed_from_wheel(), "CI runs the suite against the installed wheel (make test)"


def test_every_module_of_the_checkout_is_installed():
    missing = _package_files(SOURCE_PACKAGE) - _package_files(INSTALLED_PACKAGE)
    assert not missing, f"not in the installed package: {sorted(missing)}"


def test_every_module_imports():
    for name in sorted(_package_files(INSTALLED_PACKAGE)):
        if not name.endswith(".py") or name.endswith("__main__.py"):
            continue
        module = ("segpost." + name[: -len(".py")].replace("/", ".")).removesuffix(".__init__")
        importlib.import_module(module)


def test_compiled_extension_is_installed_with_the_package():
    from segpost import _C

    assert pathlib.Path(_C.__file__).resolve().parent == INSTALLED_PACKAGE


def test_version_is_written_once():
    assert importlib.metadata.version("segpost") == segpost.__version__


@pytest.mark.skipif(not _installed_from_wheel(), reason="an editable install carries no LICENSE file")
def test_license_ships_with_the_distribution():
    files = importlib.metadata.files("segpost") or []
    licenses = [f for f in files if f.name == "LICENSE"]
    assert licenses, "LICENSE is not in the installed distribution"
    assert "BSD 3-Clause" in licenses[0].read_text()


def test_import_loads_no_heavy_dependency():
    # `import segpost` stays fast: scipy, torch, numba, scikit-image and
    # matplotlib are imported where they are used, not at import time.
    code = "import sys, segpost; print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in %r)))"
    heavy = ("scipy", "torch", "numba", "skimage", "matplotlib")
    out = subprocess.run([sys.executable, "-P", "-c", code % (heavy,)], capture_output=True, text=True, check=True)
    assert out.stdout.split() == []
