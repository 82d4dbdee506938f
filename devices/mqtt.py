"""MQTT → the same ingestion services as HTTP.

Devices publish `{"token": "<device token>", "batch": [...]}` to
`edgefleet/<uid>/telemetry` or `edgefleet/<uid>/logs`. The token is checked
against `DeviceCredential` on every message and must belong to the uid in the
topic, so device A cannot publish as B even if the broker's ACL would let it.
The answer (the same dict HTTP returns, or an error) goes to
`edgefleet/<uid>/ack/<kind>` so an agent can drop what was stored.
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
from urllib.parse import unquote, urlparse

import paho.mqtt.client as mqtt
from django.db import DatabaseError, close_old_connections, connection

from devices import services
from devices.auth import authenticate_token
from fleet import jsonbody, prometheus
from fleet.refusal import Refusal

log = logging.getLogger(__name__)
KINDS = {"telemetry": services.ingest_telemetry, "logs": services.ingest_logs}


def handle(topic: str, payload: bytes) -> tuple[str | None, dict]:
    """Authenticate and ingest one message; returns (device uid or None, answer)."""
    parts = topic.split("/")
    if len(parts) != 3 or parts[0] != "edgefleet" or parts[2] not in KINDS:
        return None, {"code": "bad_topic", "detail": "unexpected topic"}
    uid, kind = parts[1], parts[2]
    try:
        envelope = jsonbody.loads(payload)
    except Refusal as exc:
        return uid, {"code": "bad_batch", "detail": f"payload: {exc.message}"}
    if not isinstance(envelope, dict):
        return uid, {"code": "bad_batch", "detail": "payload must be an object"}
    principal = authenticate_token(envelope.get("token"))
    if principal is None or principal.device.uid != uid:
        # No hint whether the token or the uid was wrong.
        log.warning("mqtt: refused message on %s", topic)
        return uid, {"code": "unauthorized", "detail": "unknown, revoked or foreign token"}
    try:
        result = KINDS[kind](
            principal.device,
            envelope.get("batch"),
            dropped=envelope.get("dropped", 0),
            seen_noted=principal.seen_noted,
        )
    except services.DeviceError as exc:
        return uid, {"code": exc.code, "detail": exc.message}
    return uid, result.as_dict()


class Bridge:
    """One paho client; `run()` blocks, `stop()` ends it from another thread."""

    def __init__(
        self,
        url: str,
        *,
        client_id: str = "edgefleet-bridge",
        shared_group: str = "",
        acks: bool = True,
        persistent: bool = True,
    ):
        parsed = urlparse(url)
        if parsed.scheme not in {"mqtt", "mqtts"}:
            raise ValueError(f"MQTT_URL must be mqtt:// or mqtts://, not {url!r}")
        self.host = parsed.hostname or "127.0.0.1"
        self.port = parsed.port or (8883 if parsed.scheme == "mqtts" else 1883)
        self.acks = acks
        prefix = f"$share/{shared_group}/" if shared_group else ""
        self.topics = [(f"{prefix}edgefleet/+/{kind}", 1) for kind in KINDS]
        # A persistent session: QoS 1 messages published while the bridge is
        # down wait in the broker and arrive when it reconnects.
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=not persistent,
            protocol=mqtt.MQTTv311,
        )
        if parsed.username:
            self.client.username_pw_set(unquote(parsed.username), unquote(parsed.password or ""))
        if parsed.scheme == "mqtts":
            self.client.tls_set(cert_reqs=ssl.CERT_REQUIRED)
        self.client.reconnect_delay_set(min_delay=1, max_delay=30)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.subscribed = threading.Event()
        self.handled = 0

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            log.error("mqtt: connect refused: %s", reason_code)
            return
        client.subscribe(self.topics)
        log.info(
            "mqtt bridge connected to %s:%s, subscribed %s",
            self.host,
            self.port,
            [t for t, _q in self.topics],
        )

    def _on_subscribe(self, *args) -> None:
        # What a supervisor or a benchmark waits for: from here on nothing published is lost.
        log.info("mqtt bridge subscribed")
        self.subscribed.set()

    def _on_message(self, client, userdata, message):
        close_old_connections()
        try:
            uid, answer = handle(message.topic, message.payload)
        except DatabaseError:
            # Database down: drop the connection so the next message reconnects;
            # the device keeps the batch until it sees an ack, and resends.
            log.exception("mqtt: database error on %s", message.topic)
            close_old_connections()
            uid, answer = None, {}
        except Exception:  # one poison message must not kill the bridge
            log.exception("mqtt: failed to handle message on %s", message.topic)
            uid, answer = None, {}
        self.handled += 1
        prometheus.MQTT_MESSAGES.labels(
            message.topic.rsplit("/", 1)[-1],
            "ok" if "accepted" in answer else "refused" if answer.get("code") else "error",
        ).inc()
        if self.acks and uid:
            kind = message.topic.rsplit("/", 1)[-1]
            client.publish(f"edgefleet/{uid}/ack/{kind}", json.dumps(answer), qos=0)

    def run(self) -> None:
        try:
            self.client.connect(self.host, self.port, keepalive=30)
            self.client.loop_forever(retry_first_connection=True)
        finally:
            close_old_connections()
            connection.close()  # this thread's connection; tests drop the database after

    def stop(self) -> None:
        self.client.disconnect()
