"""The real agent against the real server: a poison item (NaN, Infinity, a lone
surrogate) is refused alone; the rest is stored and the agent's buffer empties,
so nothing is resent forever (issue 15, item 10)."""

from __future__ import annotations

import time

import pytest

from devices.agent.agent import Agent
from tests.e2e.test_agent_e2e import enrolled_state, enrollment_token  # noqa: F401 - fixture

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def test_poison_items_are_dropped_and_the_rest_delivered(
    live_server,
    enrollment_token,  # noqa: F811
    tmp_path,
):
    from devices.models import Device, LogLine, TelemetryPoint

    state = enrolled_state(live_server, enrollment_token, tmp_path / "agent")
    device = Device.objects.get(uid=state.uid)
    agent = Agent(state)
    try:
        good = [
            agent.outbox.add("telemetry", {"ts": time.time(), "latency_ms": 5.0 + i})
            for i in range(3)
        ]
        poison = [
            agent.outbox.add("telemetry", {"ts": time.time(), "extra": {"p95": float("nan")}}),
            agent.outbox.add("telemetry", {"ts": time.time(), "extra": {"p95": float("inf")}}),
            agent.outbox.add("telemetry", {"ts": time.time(), "model_version": "digits\ud800"}),
        ]
        good.append(agent.outbox.add("telemetry", {"ts": time.time(), "latency_ms": 9.0}))
        agent.outbox.add("logs", {"ts": time.time(), "level": "info", "message": "ok"})
        agent.outbox.add("logs", {"ts": time.time(), "level": "info", "message": "bad \udc80"})
        for _ in range(2):  # a second round sends nothing again
            agent.deliver_after = 0
            agent.deliver(kinds=("telemetry", "logs"))
        assert agent.buffer.count("telemetry") == 0 and agent.buffer.count("logs") == 0
        stored = sorted(TelemetryPoint.objects.filter(device=device).values_list("seq", flat=True))
        assert stored == sorted(good) and not set(poison) & set(stored)
        messages = list(LogLine.objects.filter(device=device).values_list("message", flat=True))
        assert "ok" in messages and not any("bad" in m for m in messages)
    finally:
        agent.close()
