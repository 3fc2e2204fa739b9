import os

from hypothesis import HealthCheck, settings

# CI machines are slow and shared: no deadlines, a fixed example budget.
settings.register_profile(
    "ci", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
settings.register_profile("dev", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# A long run for re-measuring the documented bounds: HYPOTHESIS_PROFILE=stress.
settings.register_profile("stress", max_examples=2000, deadline=None, suppress_health_check=list(HealthCheck))
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


def pytest_addoption(parser):
    parser.addoption("--fuzz-long", action="store_true", default=False,
                     help="run the fuzz suite (tests/test_fuzz.py) with 50x more examples per entry point")


def pytest_configure(config):
    if config.getoption("--fuzz-long"):
        os.environ["SEGPOST_FUZZ_LONG"] = "1"
