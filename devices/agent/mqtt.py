"""Optional telemetry over MQTT (devices/mqtt.py is the server's bridge).

The agent publishes `{"token": ..., "batch": [...]}` to `edgefleet/<uid>/telemetry`
(QoS 1) and waits for the bridge's answer on `edgefleet/<uid>/ack/telemetry`:
the batch leaves the on-disk buffer only when the answer says its records were
stored. No answer within the timeout means "keep it and resend later"; the
server deduplicates by `(boot_id, seq)`. paho-mqtt is imported only when
`mqtt_url` is configured.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from urllib.parse import unquote, urlparse

from .client import Response

ACK_TIMEOUT_S = 10.0
CODES = {"too_large": 413, "bad_batch": 400, "unauthorized": 401, "unavailable": 503}


def topic(uid: str, kind: str) -> str:
    return f"edgefleet/{uid}/{kind}"


def payload(token: str, batch: dict) -> bytes:
    return json.dumps(
        {
            "token": token,
            "batch": batch["batch"],
            "boot_id": batch["boot_id"],
            "dropped": batch.get("dropped", 0),
        },
        separators=(",", ":"),
    ).encode("utf-8")


def answer_status(answer: dict, boot_id: str, seqs: list[int]) -> int | None:
    """HTTP-like status of a bridge answer for our batch, None if it is about another."""
    if not isinstance(answer, dict):
        return None
    if answer.get("code"):
        return CODES.get(answer["code"], 400)
    stored = set((answer.get("accepted") or {}).get(boot_id, []))
    stored |= {r.get("seq") for r in answer.get("rejected") or [] if isinstance(r, dict)}
    return 200 if seqs and set(seqs) <= stored else None


class Publisher:
    def __init__(self, url: str, uid: str, token: str, *, ack_timeout_s: float = ACK_TIMEOUT_S):
        import paho.mqtt.client as mqtt

        parsed = urlparse(url)
        self.uid, self.token, self.ack_timeout_s = uid, token, ack_timeout_s
        self.acks: queue.Queue = queue.Queue()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"agent-{uid}")
        if parsed.username:
            self.client.username_pw_set(unquote(parsed.username), unquote(parsed.password or ""))
        if parsed.scheme in {"mqtts", "ssl"}:
            self.client.tls_set()
        self.ready = threading.Event()  # subscribed to our acks: publishing makes sense
        self.client.on_connect = lambda client, *a: client.subscribe(
            f"edgefleet/{uid}/ack/+", qos=1
        )
        self.client.on_subscribe = lambda *a: self.ready.set()
        self.client.on_disconnect = lambda *a: self.ready.clear()
        self.client.on_message = lambda client, userdata, message: self.acks.put(message.payload)
        self.client.reconnect_delay_set(min_delay=1, max_delay=60)
        self.client.connect_async(
            parsed.hostname or "127.0.0.1",
            parsed.port or (8883 if parsed.scheme == "mqtts" else 1883),
            keepalive=60,
        )
        self.client.loop_start()

    def publish(self, kind: str, batch: dict) -> Response:
        if not self.ready.wait(self.ack_timeout_s):
            return Response(503)  # broker unreachable: keep the batch
        while not self.acks.empty():  # answers to earlier attempts
            self.acks.get_nowait()
        seqs = [item["seq"] for item in batch["batch"]]
        info = self.client.publish(topic(self.uid, kind), payload(self.token, batch), qos=1)
        deadline = time.monotonic() + self.ack_timeout_s
        try:
            info.wait_for_publish(timeout=self.ack_timeout_s)
        except (RuntimeError, ValueError):
            return Response(503)
        while (left := deadline - time.monotonic()) > 0:
            try:
                raw = self.acks.get(timeout=left)
            except queue.Empty:
                break
            try:
                status = answer_status(json.loads(raw), batch["boot_id"], seqs)
            except ValueError:
                continue
            if status is not None:
                return Response(status)
        return Response(503)  # no answer: keep the batch, resend later

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
