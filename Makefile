# The README's two commands: `make demo` and `make test`.
#
# Both build segpost's wheel from this checkout and install it into the active
# Python environment (use a virtualenv), as a user's `pip install .` would;
# `make test` then runs the whole suite against that installed package from
# outside the source tree, so a module missing from the wheel fails it.
# torch is pinned to the local CPU wheel through constraints.txt.
#
#   make demo                 the demo on its embedded default
#   make test                 the whole test suite (CI: `.ci/run`)
#   make test WHEEL=f.whl     the same against a wheel built elsewhere (CI builds it from the sdist)
#   make dev && make dev-test an editable install and an in-tree run, for quick edits
#   make docs                 the guides, notes and API reference (HTML in docs/_build/html), warnings are errors
#   make sanitize             the whole suite on an ASan + UBSan build (then `make test` reinstalls the normal one)
PYTHON ?= python3
PIP = $(PYTHON) -m pip
CONSTRAINTS = $(CURDIR)/constraints.txt
DIST = $(CURDIR)/dist
# A wheel to test instead of building one from the checkout.
WHEEL ?=
# The stamps live in the environment they describe: a new virtualenv reinstalls.
PREFIX := $(shell $(PYTHON) -c 'import sys; print(sys.prefix)')
SOURCES := setup.py pyproject.toml MANIFEST.in LICENSE README.md constraints.txt \
	$(shell find segpost csrc -type f \( -name '*.py' -o -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name py.typed \))

.PHONY: install install-test demo test docs dev dev-test sanitize bench clean

# The wheel, built in place: setuptools' build/ keeps the compiled extension
# until a C++ source or header changes.
$(PREFIX)/.segpost-wheel-stamp: $(if $(WHEEL),$(WHEEL),$(SOURCES))
	rm -rf $(DIST)
	$(if $(WHEEL),mkdir -p $(DIST) && cp $(WHEEL) $(DIST)/,$(PIP) wheel --no-deps -w $(DIST) .)
	$(PIP) install -c $(CONSTRAINTS) --force-reinstall --no-deps $(DIST)/segpost-*.whl
	$(PIP) install -c $(CONSTRAINTS) "$$(ls $(DIST)/segpost-*.whl)[viz]"
	touch $@

# What the tests need besides segpost: the test extras (the real architectures
# of tests/test_model_libraries.py among them), and pydensecrf (the
# reference the tests and benchmarks compare against), which needs Cython < 3.
$(PREFIX)/.segpost-test-stamp: pyproject.toml constraints.txt
	$(PIP) install -c $(CONSTRAINTS) pytest hypothesis scikit-learn torchmetrics matplotlib build \
		torchvision transformers segmentation-models-pytorch monai nibabel lightning
	$(PIP) install -c $(CONSTRAINTS) "cython<3" numpy setuptools wheel
	$(PIP) install -c $(CONSTRAINTS) --no-build-isolation pydensecrf2
	touch $@

install: $(PREFIX)/.segpost-wheel-stamp

install-test: install $(PREFIX)/.segpost-test-stamp

# PYTHONSAFEPATH=1 (python -P, inherited by the tests' subprocesses) leaves
# the current folder off sys.path: `import segpost` finds the installed
# package, never the source tree beside it.
demo: install
	PYTHONSAFEPATH=1 $(PYTHON) -m segpost demo

# The doctests run over the installed modules (--pyargs segpost), and a test
# checks that the package under test is the installed one.
test: install-test
	SEGPOST_TEST_INSTALLED=1 PYTHONSAFEPATH=1 $(PYTHON) -m pytest -q -p no:cacheprovider $(CURDIR)/tests --pyargs segpost

# The guides and notes (MyST Markdown), the API reference from the installed package's docstrings, the
# command-line reference and the demo's pictures made at build time (docs/_ext); any Sphinx warning fails it.
docs: install
	$(PIP) install -q -c $(CONSTRAINTS) sphinx myst-parser
	rm -rf $(CURDIR)/docs/_build
	PYTHONSAFEPATH=1 $(PYTHON) -m sphinx -W -q -b html $(CURDIR)/docs $(CURDIR)/docs/_build/html
	@echo "docs: $(CURDIR)/docs/_build/html/index.html"

dev: $(PREFIX)/.segpost-test-stamp
	$(PIP) install -c $(CONSTRAINTS) -e ".[test,viz]"
	rm -f $(PREFIX)/.segpost-wheel-stamp

dev-test:
	$(PYTHON) -m pytest -q

# An AddressSanitizer + UBSan wheel, built from the sdist in a folder of its
# own (so no object of the normal build is reused), installed over the normal
# one; the suite then runs with libasan preloaded into Python. Leak checking is
# off: CPython and numba keep memory until exit by design.
SANITIZE_DIST = $(CURDIR)/dist-sanitize
sanitize: $(PREFIX)/.segpost-test-stamp
	rm -rf $(SANITIZE_DIST) $(PREFIX)/.segpost-wheel-stamp
	$(PYTHON) -m build --sdist --outdir $(SANITIZE_DIST) .
	SEGPOST_SANITIZE=1 $(PIP) wheel --no-deps -w $(SANITIZE_DIST) $(SANITIZE_DIST)/segpost-*.tar.gz
	$(PIP) install -c $(CONSTRAINTS) --force-reinstall --no-deps $(SANITIZE_DIST)/segpost-*.whl
	LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libubsan.so)" \
	ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	SEGPOST_TEST_INSTALLED=1 SEGPOST_SANITIZED=1 PYTHONSAFEPATH=1 \
	$(PYTHON) -m pytest -q -p no:cacheprovider $(CURDIR)/tests --pyargs segpost

bench: install
	$(PYTHON) benchmarks/bench_crf.py

clean:
	rm -rf build dist dist-sanitize *.egg-info segpost/*.so $(PREFIX)/.segpost-wheel-stamp $(PREFIX)/.segpost-test-stamp
