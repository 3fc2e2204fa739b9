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
