# The README's two commands: `make demo` and `make test`.
# Both install what they need into the active Python environment
# (use a virtualenv); torch is pinned to the local CPU wheel via constraints.txt.
PYTHON ?= python3
PIP = $(PYTHON) -m pip
CONSTRAINTS = constraints.txt
# The stamp lives in the environment it describes: a new virtualenv reinstalls.
STAMP := $(shell $(PYTHON) -c 'import sys; print(sys.prefix)')/.segpost-install-stamp

.PHONY: install install-test demo test bench clean

$(STAMP): setup.py pyproject.toml constraints.txt $(wildcard csrc/*.cpp csrc/*.h csrc/cpu/*.cpp csrc/cpu/*.h)
	$(PIP) install -c $(CONSTRAINTS) -e ".[test,viz]"
	# pydensecrf (the reference the tests and benchmarks compare against) needs Cython < 3.
	$(PIP) install -c $(CONSTRAINTS) "cython<3" numpy setuptools wheel
	$(PIP) install -c $(CONSTRAINTS) --no-build-isolation pydensecrf2
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(PYTHON) -m segpost demo

test: install
	$(PYTHON) -m pytest -q

bench: install
	$(PYTHON) benchmarks/bench_lattice.py

clean:
	rm -rf build *.egg-info segpost/*.so $(STAMP)
