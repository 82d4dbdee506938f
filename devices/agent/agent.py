"""The agent's main loop: check in, install, run, measure, report.

One thread, one loop: poll the update API when the pacer says so, run the
active models until the next telemetry tick, buffer a point per slot, deliver
status reports at once and buffered telemetry and logs every upload interval
(HTTP, or MQTT for telemetry): fewer, fuller requests, the same resolution.
"""

from __future__ import annotations

import logging
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from . import manifest as mf
from .bench import Benchmarks
from .buffer import Backoff, Buffer, Outbox
from .client import Client, Pacer, Response, Unreachable
from .download import DownloadLimits
from .runtime import Inputs, Runtime, hardware_facts
from .state import State
from .updater import STATUS_PATH, CheckInError, Updater

log = logging.getLogger("edgefleet.agent")

DEFAULTS = {
    "poll_interval_s": 30,
    # a point per slot every telemetry interval; buffered points go out every upload
    # interval: this one if set (a floor), else the server's X-Upload-Interval, and
    # without either every telemetry interval (servers that do not advise one)
    "telemetry_interval_s": 10,
    "upload_interval_s": None,
    "timeout_s": 15,
    "buffer_cap": {"telemetry": 10_000, "logs": 10_000, "status": 1_000},
    "batch_size": 500,
    "input_dir": None,
    "threads": None,
    "mqtt_url": None,
    "log_level": "INFO",
    "hardware_profile": None,
    # health check child: address-space limit (default: half the RAM)
    "health_memory_mb": None,
    # slow retrieval: an attempt may last grace + missing bytes / minimum rate
    "download_min_rate_bps": 16 * 1024,
    "download_grace_s": 60,
    # where /sys is read for power sensors (energy per inference)
    "power_root": "/",
    # how often pending on-device benchmark requests are fetched (bench.py)
    "benchmark_poll_s": 300,
}


class BufferHandler(logging.Handler):
    """Log records of the agent go to the server through the bounded buffer."""

    def __init__(self, outbox: Outbox, level=logging.INFO):
        super().__init__(level)
        self.outbox = outbox

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.outbox.add(
                "logs",
                {
                    "ts": record.created,
                    "level": record.levelname.lower(),
                    "message": self.format(record)[:8000],
                },
            )
        except Exception:  # logging must never take the agent down
            self.handleError(record)


class Agent:
    def __init__(self, state: State, settings: dict | None = None):
        self.state = state
        self.settings = {**DEFAULTS, **state.config.get("agent", {}), **(settings or {})}
        server = state.config["server"]
        self.client = Client(server, state.token, timeout=float(self.settings["timeout_s"]))
        self.boot_id = uuid.uuid4().hex
        caps = dict(self.settings["buffer_cap"])
        self.buffer = Buffer(state.root / "buffer.sqlite3", caps=caps)
        self.outbox = Outbox(self.buffer, self.boot_id)
        limits = DownloadLimits(
            float(self.settings["download_min_rate_bps"]), float(self.settings["download_grace_s"])
        )
        inputs = Inputs(self.settings["input_dir"]) if self.settings["input_dir"] else None
        self.updater = Updater(
            state,
            self.client,
            report=self.report_status,
            limits=limits,
            health_memory_mb=self.settings["health_memory_mb"],
            inputs=inputs,
            threads=self.settings["threads"],
        )
        # Fail-safe first: no model runs before an interrupted install was undone.
        self.updater.recover()
        self.runtime = Runtime(
            state,
            inputs=inputs,
            threads=self.settings["threads"],
            power_root=self.settings["power_root"],
        )
        self.benchmarks = Benchmarks(
            state,
            self.client,
            settings=self.settings,
            limits=limits,
            inputs_dir=self.settings["input_dir"],
        )
        self.next_benchmarks = 0.0
        self.pacer = Pacer(float(self.settings["poll_interval_s"]))
        self.next_poll = 0.0
        self.deliver_after = 0.0
        self.delivery_pacer = Pacer(1.0)
        self.upload_pacer = Pacer(self.upload_floor())
        self.next_upload = 0.0  # the first step uploads: a booted agent reports at once
        self.publisher = None
        if self.settings["mqtt_url"]:
            from .mqtt import Publisher

            self.publisher = Publisher(self.settings["mqtt_url"], state.uid, state.token)
        self._handler = BufferHandler(self.outbox)
        logging.getLogger("edgefleet.agent").addHandler(self._handler)

    def close(self) -> None:
        logging.getLogger("edgefleet.agent").removeHandler(self._handler)
        if self.publisher:
            self.publisher.close()
        self.buffer.close()

    # --- reporting -----------------------------------------------------------------------
    def report_status(self, report: dict) -> None:
        self.outbox.add("status", report)
        self.deliver(kinds=("status",))

    def _send_status(self, boot_id, items, dropped) -> Response:
        body = {k: v for k, v in items[0].items() if k not in {"seq", "boot_id"}}
        return self.client.post(STATUS_PATH, body)

    def _send_telemetry(self, boot_id, items, dropped) -> Response:
        batch = {"boot_id": boot_id, "batch": items, "dropped": dropped}
        if self.publisher:
            return self.publisher.publish("telemetry", batch)
        return self.noted(self.client.post("/api/v1/device/telemetry", batch))

    def _send_logs(self, boot_id, items, dropped) -> Response:
        return self.noted(
            self.client.post(
                "/api/v1/device/logs", {"boot_id": boot_id, "batch": items, "dropped": dropped}
            )
        )

    def noted(self, response: Response) -> Response:
        """An upload's answer names the device's current check-in ETag (`X-Update-ETag`):
        another one than this agent's means an update is waiting, so poll at the next
        step (as when `X-Benchmarks` says benchmark requests wait); the same one
        stands for a poll, so the next can wait an interval. Not signed, so it never
        replaces a check-in for long: no skip while an install is pending, after
        failed check-ins, or when the signed metadata would go stale."""
        etag = response.header("x-update-etag")
        if not etag or not 200 <= response.status < 300 or self.pacer.failures:
            return response
        record = self.updater.freshness.record
        now = time.monotonic()
        if etag != record.get("etag") or response.count("x-benchmarks"):
            self.next_poll = min(self.next_poll, now)
            return response
        interval = self.pacer.interval_s
        try:
            left = (mf.parse_time(record["expires_at"]) - datetime.now(UTC)).total_seconds()
        except (KeyError, TypeError, mf.ManifestError):
            return response
        if left > 3 * interval and not self.updater.has_pending():
            self.next_poll = max(self.next_poll, now + interval * (1 + self.pacer.jitter / 2))
        return response

    def upload_floor(self) -> float:
        return clamp_interval(self.settings["upload_interval_s"]) or 0.0

    def deliver(self, kinds=("status", "telemetry", "logs")) -> None:
        if time.monotonic() < self.deliver_after:
            return
        senders = {
            "status": (self._send_status, 1),
            "telemetry": (self._send_telemetry, int(self.settings["batch_size"])),
            "logs": (self._send_logs, int(self.settings["batch_size"])),
        }
        try:
            for kind in kinds:
                send, size = senders[kind]
                result = self.buffer.flush(kind, send, batch_size=size)
                if result.dropped_reported:
                    # The server stores log lines, not the `dropped` field: say it there too.
                    log.warning(
                        "offline buffer dropped the %d oldest %s records",
                        result.dropped_reported,
                        kind,
                    )
        except Backoff as exc:
            delay = self.delivery_pacer.failure(exc.retry_after)
            self.deliver_after = time.monotonic() + delay
            return
        self.delivery_pacer.success()

    def send_inventory(self) -> None:
        facts = hardware_facts(self.settings["hardware_profile"])
        models = {}
        for slot in self.state.slot_names():
            pointer = self.state.pointer(slot)
            if pointer:
                variant = pointer["variants"][pointer["active"]]
                models[slot] = {
                    "model_version": str(variant.get("model_version") or ""),
                    "sha256": variant["sha256"],
                    "variant": pointer["active"],
                    "manifest_version": pointer["version"],
                }
        facts["models"] = models
        try:
            response = self.client.request("PUT", "/api/v1/device/inventory", json_body=facts)
            if response.status >= 400:
                log.warning("inventory refused: HTTP %s %s", response.status, response.body[:200])
        except Unreachable as exc:
            log.info("inventory not sent: %s", exc)

    # --- the loop ------------------------------------------------------------------------
    def check_in(self) -> None:
        try:
            result = self.updater.check_in()
        except CheckInError as exc:
            delay = self.pacer.failure(exc.retry_after)
            log.info("check-in failed (%s); next in %.1f s", exc, delay)
            self.next_poll = time.monotonic() + delay
            return
        # The configured interval is a floor; the server may only ask for slower polls.
        self.pacer.advise(
            max(result.poll_interval_s or 0.0, float(self.settings["poll_interval_s"]))
        )
        self.next_poll = time.monotonic() + self.pacer.success()
        advised = clamp_interval(result.upload_interval_s)
        self.upload_pacer.advise(max(advised or 0.0, self.upload_floor()))
        if result.outcome in {"succeeded", "rolled_back", "failed"}:
            self.send_inventory()
        self.poll_benchmarks(result.benchmarks)

    def poll_benchmarks(self, waiting: int | None) -> None:
        """Fetch benchmark requests when the check-in answer says some wait
        (`X-Benchmarks`); an older server does not say, so poll it on a timer."""
        if waiting is None and time.monotonic() >= self.next_benchmarks:
            self.next_benchmarks = time.monotonic() + float(self.settings["benchmark_poll_s"])
            waiting = 1
        if waiting:
            self.benchmarks.poll()

    def step(self, *, window_s: float | None = None, max_inferences: int | None = None) -> None:
        if time.monotonic() >= self.next_poll:
            self.check_in()
        try:
            self.runtime.refresh()  # the switching policy looks at fresh signals every tick
        except Exception as exc:  # a model that cannot load must not stop reporting
            log.error("cannot load the active model: %s", exc)
        window = float(self.settings["telemetry_interval_s"]) if window_s is None else window_s
        self.runtime.run_for(window, max_inferences=max_inferences)
        stale = self.updater.freshness.stale_s(datetime.now(UTC))
        for point in self.runtime.points():
            if stale is not None:
                point.setdefault("extra", {})["metadata_stale_s"] = stale
            self.outbox.add("telemetry", point)
        for slot, old, new in self.runtime.switches:
            log.info("slot %s switched from %s to %s by the policy", slot, old, new)
        self.runtime.switches.clear()
        if time.monotonic() >= self.next_upload:
            self.deliver()
            self.next_upload = time.monotonic() + self.upload_pacer.success()
        else:
            self.deliver(kinds=("status",))  # reports that could not go out at once

    def run(self, *, once: bool = False) -> None:
        log.info("agent %s starting, boot %s", self.state.uid, self.boot_id)
        self.send_inventory()
        # In the loop, downloads go to a worker thread; --once waits for them.
        self.updater.background = not once
        if once:
            self.step(window_s=1.0, max_inferences=20)
            return
        while True:
            self.step()


MAX_UPLOAD_INTERVAL_S = 3600.0  # an advice past this is taken as this (bounded buffers)


def clamp_interval(value) -> float | None:
    """Seconds from a setting or an advice: None for nothing usable, at most an hour."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    return min(seconds, MAX_UPLOAD_INTERVAL_S) if seconds > 0 else None


def load_settings(path: str | Path | None) -> dict:
    """Agent settings from a TOML or JSON file (deploy/agent.example.toml)."""
    if not path:
        return {}
    path = Path(path)
    if path.suffix == ".toml":
        import tomllib

        return tomllib.loads(path.read_text())
    import json

    return json.loads(path.read_text())
