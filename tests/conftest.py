"""Settings shared by every test package."""

from __future__ import annotations

from hypothesis import HealthCheck, settings

# Property tests judge results, never speed: Hypothesis's default 200 ms deadline per example, and
# its check that data is generated quickly, turn a loaded CI machine into failures (timed
# assertions in disguise).
settings.register_profile("freshline", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("freshline")
