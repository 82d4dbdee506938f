"""End-to-end tests enroll many agents from 127.0.0.1 through a live server.

The live server thread keeps the cache connection it opened first, so the
per-test cache prefix does not reset its throttle counters: lift the
per-IP enrollment limit here (its own test sets it explicitly).
"""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _generous_enrollment_rate(settings):
    from rest_framework.settings import api_settings
    from rest_framework.throttling import SimpleRateThrottle

    rates = {**settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"], "enroll": "100000/min"}
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": rates}
    previous = SimpleRateThrottle.THROTTLE_RATES
    SimpleRateThrottle.THROTTLE_RATES = api_settings.DEFAULT_THROTTLE_RATES
    yield
    SimpleRateThrottle.THROTTLE_RATES = previous
