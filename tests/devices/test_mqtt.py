"""MQTT through the real Mosquitto: bridge → the same ingestion as HTTP."""

from __future__ import annotations

import json
import queue
import threading
import uuid
from urllib.parse import urlparse

import paho.mqtt.client as mqtt
import pytest

from devices import services
from devices.models import LogLine, TelemetryPoint
from tests.devices.conftest import log_lines, points

pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def bridge(mqtt_url):
    from devices.mqtt import Bridge

    bridge = Bridge(mqtt_url, client_id=f"test-bridge-{uuid.uuid4().hex[:8]}", persistent=False)
    thread = threading.Thread(target=bridge.run, daemon=True)
    thread.start()
    assert bridge.subscribed.wait(10), "bridge did not subscribe"
    yield bridge
    bridge.stop()
    thread.join(10)


class Device:
    """A device-side MQTT client that publishes and waits for the bridge's ack."""

    def __init__(self, url: str, uid: str):
        parsed = urlparse(url)
        self.uid = uid
        self.acks: queue.Queue = queue.Queue()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-dev-{uuid.uuid4().hex[:8]}"
        )
        self.client.on_message = lambda c, u, m: self.acks.put(json.loads(m.payload))
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.connect(parsed.hostname, parsed.port or 1883)
        self.client.loop_start()
        self.client.subscribe(f"edgefleet/{uid}/ack/#", qos=1)
        assert subscribed.wait(10)

    def publish(self, kind: str, token: str, batch, *, topic_uid: str | None = None) -> dict:
        topic = f"edgefleet/{topic_uid or self.uid}/{kind}"
        info = self.client.publish(topic, json.dumps({"token": token, "batch": batch}), qos=1)
        info.wait_for_publish(10)
        return self.acks.get(timeout=15)

    def close(self):
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def mqtt_device(mqtt_url):
    created = []

    def make(uid):
        created.append(Device(mqtt_url, uid))
        return created[-1]

    yield make
    for device in created:
        device.close()


def mqtt_counted(kind: str, outcome: str) -> float:
    from fleet.prometheus import REGISTRY

    return (
        REGISTRY.get_sample_value(
            "edgefleet_mqtt_messages_total", {"kind": kind, "outcome": outcome}
        )
        or 0.0
    )


def test_telemetry_and_logs_through_mosquitto(bridge, mqtt_device, device_a):
    device, token = device_a
    client = mqtt_device(device.uid)
    ok_before, logs_before = mqtt_counted("telemetry", "ok"), mqtt_counted("logs", "ok")
    batch = points(1, 200)
    first = client.publish("telemetry", token, batch)
    assert first["count"] == 200 and first["rejected"] == []
    # E1 over MQTT: the resend is stored once and acked identically.
    assert client.publish("telemetry", token, batch) == first
    assert client.publish("logs", token, log_lines(1, 20))["count"] == 20
    assert TelemetryPoint.objects.filter(device=device).count() == 200
    assert LogLine.objects.filter(device=device).count() == 20
    assert mqtt_counted("telemetry", "ok") == ok_before + 2  # counted before the ack
    assert mqtt_counted("logs", "ok") == logs_before + 1


def test_device_cannot_publish_as_another(bridge, mqtt_device, device_a, device_b):
    _a, token_a = device_a
    b, _token_b = device_b
    client_b_topic = mqtt_device(b.uid)  # listens on B's acks
    refused = mqtt_counted("telemetry", "refused")
    answer = client_b_topic.publish("telemetry", token_a, points(1, 5))
    assert answer["code"] == "unauthorized"
    assert mqtt_counted("telemetry", "refused") == refused + 1
    assert TelemetryPoint.objects.count() == 0


def test_revoked_and_malformed_messages_are_refused(bridge, mqtt_device, device_a):
    device, token = device_a
    client = mqtt_device(device.uid)
    assert (
        client.publish("telemetry", "efd_forged-token-000000000000000", points(1, 2))["code"]
        == "unauthorized"
    )
    assert client.publish("telemetry", token, "not-a-list")["code"] == "bad_batch"
    client.client.publish(f"edgefleet/{device.uid}/telemetry", b"\xff garbage", qos=1)
    assert client.acks.get(timeout=15)["code"] == "bad_batch"
    services.revoke_device(device)
    assert client.publish("telemetry", token, points(1, 2))["code"] == "unauthorized"
    assert TelemetryPoint.objects.count() == 0
    # The bridge survived all of it.
    assert bridge.handled >= 4


def test_handle_is_the_same_service_as_http(device_a):
    """The bridge's handler without a broker: topic parsing and identity checks."""
    from devices.mqtt import handle

    device, token = device_a
    uid, answer = handle(
        f"edgefleet/{device.uid}/telemetry",
        json.dumps({"token": token, "batch": points(1, 3)}).encode(),
    )
    assert uid == device.uid and answer["count"] == 3
    assert handle("other/x/telemetry", b"{}")[1]["code"] == "bad_topic"
    assert handle(f"edgefleet/{device.uid}/shell", b"{}")[1]["code"] == "bad_topic"


def test_bridge_command_is_off_without_mqtt_url(settings):
    from django.core.management import CommandError, call_command

    settings.MQTT_URL = ""
    with pytest.raises(CommandError, match="MQTT_URL"):
        call_command("mqtt_bridge")


def test_bridge_refuses_a_non_mqtt_url():
    from devices.mqtt import Bridge

    with pytest.raises(ValueError, match="mqtt://"):
        Bridge("http://127.0.0.1:1883")
