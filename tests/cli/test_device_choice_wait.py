"""`edgefleet compress --wait --choose-by-devices` follows the job until its devices'
results decided (a release made right after must not take the estimate's choice)."""

from __future__ import annotations

from fleet.cli import MISSED, OK, registry

OPTION = {"device_benchmark": {"target": {"devices": ["pi"]}, "choose": True}}


def _job(device_choice: str, chosen: str | None, reason: str = "") -> dict:
    return {
        "id": 7,
        "status": "succeeded",
        "progress": 1.0,
        "options": OPTION,
        "device_choice": device_choice,
        "result": {"device_choice": {"reason": reason}} if reason else {},
        "candidates": [
            {"recipe": r, "version": i, "meets_kpis": True, "chosen": r == chosen, "metrics": {}}
            for i, r in enumerate(("fp16", "int8"))
        ],
    }


class Server:
    def __init__(self, answers):
        self.answers = list(answers)

    def get(self, path, *args, **kwargs):
        return self.answers.pop(0)


def test_wait_follows_the_job_until_the_devices_decided(monkeypatch, capsys):
    monkeypatch.setattr(registry.time, "sleep", lambda s: None)
    later = [
        _job("waiting", "fp16"),
        _job("measured", "int8", "int8 meets every KPI with the lowest p50"),
    ]
    job = registry.follow_job(Server(later), _job("", "fp16"), 60, quiet=True)
    assert job["device_choice"] == "measured"
    assert registry.report_job(job, {}, as_json=False) == OK
    assert "on devices: int8 meets every KPI" in capsys.readouterr().err


def test_none_chosen_on_devices_is_a_miss(monkeypatch):
    job = _job("measured", None, "No variant meets the KPIs on the devices: ...")
    assert registry.report_job(job, {}, as_json=True) == MISSED


def test_a_job_not_choosing_by_devices_is_not_followed_further():
    job = {**_job("requested", "fp16"), "options": {}}
    assert registry.follow_job(Server([]), job, 60, quiet=True) is job
