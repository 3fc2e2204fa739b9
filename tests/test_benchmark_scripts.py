"""Every script in benchmarks/ imports: a helper renamed in _common.py or segpost breaks the script that
uses it at its first line, and no other test runs the scripts."""
import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
SCRIPTS = sorted(p for p in BENCHMARKS.glob("*.py"))


def test_the_scripts_are_found():
    assert len(SCRIPTS) >= 10 and BENCHMARKS / "bench_crf.py" in SCRIPTS


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_imports_without_running(script, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.setattr(sys, "argv", [str(script), "--help"])
    spec = importlib.util.spec_from_file_location(f"benchmark_{script.stem}", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # the scripts run main() only under __main__
    assert module.__name__ != "__main__"
