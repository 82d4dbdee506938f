"""`GET /api/v1/device/benchmarks` (this device's pending signed benchmark requests)
and `POST /api/v1/device/benchmarks/<id>/results` (`ota.benchmarks`). Identity comes
only from the bearer credential: a device sees and reports its own runs only."""

from __future__ import annotations

from fleet.device_api.schema import BENCHMARK_RESULTS_DOC, BENCHMARKS_DOC
from fleet.device_api.toolkit import answer, endpoint
from ota import benchmarks


@endpoint("GET", doc=BENCHMARKS_DOC)
def pending(request):
    return answer({"requests": benchmarks.pending_envelopes(request.device.device)})


@endpoint("POST", body=True, doc=BENCHMARK_RESULTS_DOC)
def results(request, pk: int):
    run = benchmarks.record(request.device.device, pk, request.data)
    return answer({"benchmark": run.pk, "state": run.state})
