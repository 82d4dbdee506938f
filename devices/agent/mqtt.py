"""Optional telemetry over MQTT: `edgefleet/<uid>/telemetry`, token in the payload.

paho-mqtt is imported only when `mqtt_url` is configured. A publish that is not
acknowledged (QoS 1) within the timeout counts as a failed delivery, so the
records stay in the buffer.
"""

from __future__ import annotations

import json
from urllib.parse import urlparse

from devices.agent.client import Response

PUBLISH_TIMEOUT_S = 10.0


def topic(uid: str, kind: str) -> str:
    return f"edgefleet/{uid}/{kind}"


def payload(token: str, batch: dict) -> bytes:
    return json.dumps({"token": token, "boot_id": batch["boot_id"],
                       "dropped": batch.get("dropped", 0),
                       "batch": batch.get("points") or batch.get("lines") or []},
                      separators=(",", ":")).encode("utf-8")


class Publisher:
    def __init__(self, url: str, uid: str, token: str):
        import paho.mqtt.client as mqtt

        parsed = urlparse(url)
        self.uid, self.token = uid, token
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"agent-{uid}")
        if parsed.username:
            self.client.username_pw_set(parsed.username, parsed.password)
        if parsed.scheme in {"mqtts", "ssl"}:
            self.client.tls_set()
        self.client.connect_async(parsed.hostname or "127.0.0.1",
                                  parsed.port or (8883 if parsed.scheme == "mqtts" else 1883),
                                  keepalive=60)
        self.client.loop_start()

    def publish(self, kind: str, batch: dict) -> Response:
        info = self.client.publish(topic(self.uid, kind), payload(self.token, batch), qos=1)
        try:
            info.wait_for_publish(timeout=PUBLISH_TIMEOUT_S)
        except (RuntimeError, ValueError):
            return Response(503)
        return Response(200 if info.is_published() else 503)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
