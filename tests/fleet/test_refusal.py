"""One refusal type, mapped to an answer once per stack (operator API, device API)."""

from __future__ import annotations

import json

import pytest

from fleet.refusal import Refusal


def test_the_app_refusals_are_one_type():
    from compression.jobs import JobRejected
    from compression.services import UploadRejected
    from devices.services import DeviceError
    from ota.services import OtaError

    for kind in (UploadRejected, JobRejected, DeviceError, OtaError):
        assert issubclass(kind, Refusal)
    assert JobRejected("bad_kpi", "no", "kpis").field == "kpis"  # its call sites stay short


@pytest.mark.parametrize("stack", ["operator", "device"])
def test_both_stacks_answer_a_refusal_the_same_way(stack):
    from fleet.api import exception_handler
    from fleet.device_api.toolkit import refuse

    exc = Refusal(
        "slow_down", "Wait.", 429, field="phases", retry_after=7, extra={"status": "paused"}
    )
    if stack == "operator":
        response = exception_handler(exc, {})
        body = response.data
    else:
        response = refuse(exc)
        body = json.loads(response.content)
    assert response.status_code == 429 and response["Retry-After"] == "7"
    assert body == {"detail": "Wait.", "code": "slow_down", "field": "phases", "status": "paused"}
