import importlib.util
import os
import sys
import types

from hypothesis import HealthCheck, settings


def _import_torchvision_without_its_c_ops():
    """Let torchvision's pure-Python models import next to a CPU torch.

    The registry's torchvision wheel is CUDA-linked: its C extension does not
    load next to the CPU torch, and its meta/autograd registrations for the C
    ops (nms, roi_align, ...) then fail at import, taking torchmetrics and
    segmentation_models_pytorch (which import torchvision) down with them.
    Skipping those two registration modules leaves everything but the C ops
    working. Done once, here, before any test imports torchvision.
    """
    if importlib.util.find_spec("torchvision") is None:
        return
    try:
        import torchvision  # noqa: F401
    except RuntimeError as exc:
        if "torchvision::" not in str(exc):
            raise
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
        for name in ("torchvision._meta_registrations", "torchvision._autograd_registrations"):
            sys.modules[name] = types.ModuleType(name)
        import torchvision  # noqa: F401,F811


_import_torchvision_without_its_c_ops()

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
