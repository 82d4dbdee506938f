"""One simulated device (`SimDevice`): the part of `devices.agent.simulate` that acts
as a device; the module docstring there says what a simulated device does and which
faults it can have."""

from __future__ import annotations

import base64
import collections
import contextlib
import hashlib
import json
import logging
import math
import random
import time
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from . import __version__, bench
from . import manifest as mf
from .client import LeanClient, Pacer, Response, Unreachable

log = logging.getLogger("edgefleet.simulate")

if TYPE_CHECKING:
    from .simulate import Stats

FAULTS = ("failed-health-check", "flapping-network", "slow-device", "bad-variant")
VARIANT_SPEED = {"int8": 0.45, "fp16": 0.75, "pruned": 0.8}
TICK_S = 0.005  # scheduler granularity
HEARTBEAT_LOG_S = 300  # a device logs a heartbeat line about this often
# What a board of each seeded hardware profile reports in its inventory (arch, cpu,
# cores, RAM MB), so a simulated device's facts agree with the profile it names;
# a profile not listed reports a generic simulated board.
BOARDS = {
    "rpi4": ("aarch64", "Cortex-A72 (simulated)", 4, 4096),
    "rpi-zero2": ("aarch64", "Cortex-A53 (simulated)", 4, 512),
    "jetson-nano-cpu": ("aarch64", "Cortex-A57 (simulated)", 4, 4096),
    "x86-gateway-2c": ("x86_64", "x86-64 AVX2 (simulated)", 2, 8192),
    "x86-gateway-1c": ("x86_64", "x86-64 (simulated)", 1, 2048),
}
GENERIC_BOARD = ("aarch64", "Cortex-A72 (simulated)", 4, 4096)


def _seconds(value) -> float | None:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    return min(seconds, 3600.0) if seconds > 0 else None


class FlakyClient(LeanClient):
    """Drops every request during the "down" half of each flap period."""

    def __init__(self, *args, period_s: float, phase: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.period_s, self.phase = period_s, phase

    def request(self, method, path, **kwargs) -> Response:
        if int((time.monotonic() + self.phase) / self.period_s) % 2:
            raise Unreachable(f"{method} {path}: simulated network loss")
        return super().request(method, path, **kwargs)


class SimDevice:
    def __init__(self, index: int, options, stats: Stats, saved: dict | None = None):
        self.index = index
        self.options = options
        self.stats = stats
        self.rng = random.Random(options.seed * 100_003 + index)
        faulty = self.rng.random() < options.fault_fraction
        self.faults = set(options.fault or []) if faulty else set()
        saved = saved or {}
        self.uid, self.token = saved.get("uid"), saved.get("token")
        self.keys: list[str] = saved.get("keys", [])
        self.boot_id = uuid.uuid4().hex
        self.seq = collections.Counter()
        self.etag = None
        self.trusted: dict[str, int] = {}
        self.installed: dict[str, dict] = {}  # slot -> {"payload", "variant"}
        self.confirmed: set[tuple[str, object]] = set()  # (slot, version) re-reported this run
        self.first_variants: set[str] = set()
        self.outbox = collections.deque(maxlen=options.buffer_cap)  # (kind, body)
        self.dropped = 0
        self.battery = self.rng.uniform(30, 100) if index % 3 == 0 else None
        self.pacer = Pacer(options.poll_interval_s, rng=self.rng)
        self.upload_pacer = Pacer(options.upload_interval_s or 0.0, rng=self.rng)
        self.next_upload = 0.0
        self.next_poll = time.monotonic() + self.rng.uniform(0, options.poll_interval_s)
        self.next_telemetry = time.monotonic() + self.rng.uniform(0, options.telemetry_interval_s)
        self.next_benchmarks = 0.0
        if options.preinstalled:
            # A factory-installed model: telemetry flows before any deployment.
            factory = {
                "name": "factory",
                "sha256": "",
                "size": 0,
                "model_version": options.preinstalled,
            }
            self.installed["default"] = {
                "payload": {"version": 0, "default": "factory", "artifacts": [factory]}
            }
            self.first_variants = {"factory"}
        # What a restarted device still has: its slots, its manifest versions.
        self.installed.update(saved.get("installed") or {})
        self.trusted.update(saved.get("trusted") or {})
        self.first_variants = set(saved.get("first_variants") or self.first_variants)
        # A restarted device reports what it runs, unless the server acknowledged
        # exactly that before (`reported`: the digest of those facts).
        self.reported = saved.get("reported")
        self.inventory_due = bool(self.token) and self.reported != self.facts_digest()
        self.client = self._client()
        self.on_enrolled = None  # the fleet saves its state file when a device enrolls

    def _client(self) -> LeanClient:
        if "flapping-network" in self.faults:
            return FlakyClient(
                self.options.server,
                self.token,
                timeout=self.options.timeout_s,
                period_s=self.options.flap_period_s,
                phase=self.rng.uniform(0, self.options.flap_period_s),
            )
        return LeanClient(self.options.server, self.token, timeout=self.options.timeout_s)

    def boot(self, at: float) -> None:
        """The device starts at monotonic time `at` (its first step, spread over the
        fleet's ramp): its sampling clock starts then, so ticks before it booted are
        neither sampled nor counted as missed."""
        self.next_telemetry = at + self.rng.uniform(0, self.options.telemetry_interval_s)

    # --- one scheduling step ----------------------------------------------------------------
    def step(self) -> float:
        """Do what is due; return the monotonic time of the next step."""
        now = time.monotonic()
        if not self.token:
            try:
                self.enroll()
            except Unreachable:
                self.stats.add("enroll_unreachable")
            if not self.token:
                # No advised interval yet: retry soon (a server still starting, as
                # under `make run`), backing off with jitter to about 30 s.
                backoff = self.rng.uniform(1, 2) * 2 ** min(self.pacer.failures, 4)
                return now + min(self.pacer.failure(), backoff)
        if self.inventory_due:
            self.inventory_due = False
            self.send_inventory()
        if now >= self.next_poll:
            self.check_in()
        if now >= self.next_telemetry:
            self.telemetry()
            # On the device's own clock, like a timer: a step the simulator ran late
            # does not push later ticks back (a closed loop would report slower than
            # asked whenever the simulator itself falls behind); whole ticks missed
            # are skipped and counted.
            interval = self.options.telemetry_interval_s
            self.next_telemetry += interval
            if self.next_telemetry <= now:
                missed = math.ceil((now - self.next_telemetry) / interval)
                self.stats.add("telemetry_ticks_missed", missed)
                self.next_telemetry += missed * interval
        due = min(self.next_poll, self.next_telemetry)
        if not self.outbox or self.upload_pacer.interval_s <= 0:
            return due  # without an upload interval, samples upload (and retry) themselves
        if now >= self.next_upload:
            self.flush()  # due between two samples
        return min(due, self.next_upload)

    def facts(self) -> dict:
        """Inventory as the real agent reports it: what runs in each slot, the profile."""
        arch, cpu, cores, ram_mb = BOARDS.get(self.options.hardware_profile, GENERIC_BOARD)
        facts = {
            "arch": arch,
            "cpu": cpu,
            "cpu_count": cores,
            "ram_mb": ram_mb,
            "os": "Linux-simulated",
            "python": "3.11",
            "onnxruntime": "simulated",
            "execution_providers": ["CPUExecutionProvider"],
            "agent_version": f"{__version__}-sim",
            "models": {},
        }
        for slot, installed in self.installed.items():
            payload = installed["payload"]
            artifact = next(
                (a for a in payload["artifacts"] if a["name"] == payload.get("default")),
                payload["artifacts"][0],
            )
            facts["models"][slot] = {
                "model_version": str(artifact.get("model_version") or ""),
                "sha256": artifact.get("sha256") or "",
            }
        if self.options.hardware_profile:
            facts["hardware_profile"] = self.options.hardware_profile
        return facts

    def send_inventory(self) -> None:
        began = time.perf_counter()
        try:
            response = self.client.request(
                "PUT", "/api/v1/device/inventory", json_body=self.facts()
            )
        except Unreachable:
            self.stats.add("inventory_unreachable")
            return
        self.stats.timed("inventory", began)
        self.stats.add(f"inventory_{response.status}")
        if response.status == 200:
            self.reported = self.facts_digest()

    def facts_digest(self) -> str:
        return hashlib.sha256(json.dumps(self.facts(), sort_keys=True).encode()).hexdigest()

    def enroll(self) -> None:
        facts = self.facts()
        if self.options.uid_prefix:
            facts["uid"] = f"{self.options.uid_prefix}-{self.index:05d}"
        facts["name"] = f"simulated {self.index}"
        began = time.perf_counter()
        response = self.client.post(
            "/api/v1/device/enroll",
            {
                "token": self.options.enrollment_token,
                "enrollment_token": self.options.enrollment_token,
                "facts": facts,
            },
        )
        self.stats.timed("enroll", began)
        if response.status not in (200, 201):
            self.stats.add(f"enroll_http_{response.status}")
            return
        body = response.json()
        self.uid = str(body.get("uid") or body.get("device_id"))
        self.token = body.get("token") or body.get("device_token")
        self.keys = [body.get("server_public_key") or body.get("public_key")]
        self.client = self._client()
        self.stats.add("enrolled")
        if self.on_enrolled is not None:
            self.on_enrolled()

    def trusted_keys(self) -> dict:
        out = {}
        for b64 in self.keys:
            raw = base64.b64decode(b64)
            key = Ed25519PublicKey.from_public_bytes(raw)
            out[mf.key_id(raw)] = out[hashlib.sha256(raw).hexdigest()] = key
        return out

    def check_in(self) -> None:
        started = datetime.now(UTC)
        headers = {"If-None-Match": self.etag} if self.etag else {}
        began = time.perf_counter()
        try:
            response = self.client.request("GET", "/api/v1/device/update", headers=headers)
        except Unreachable:
            self.stats.add("checkin_unreachable")
            self.next_poll = time.monotonic() + self.pacer.failure()
            return
        self.stats.timed("checkin", began)
        self.stats.add(f"checkin_{response.status}")
        if response.status not in (200, 204, 304):
            self.next_poll = time.monotonic() + self.pacer.failure(response.retry_after)
            return
        self.pacer.advise(response.header("x-poll-interval"))
        advised = _seconds(response.header("x-upload-interval"))
        self.upload_pacer.advise(max(advised or 0.0, self.options.upload_interval_s or 0.0))
        if response.status == 200:
            body = response.json() or {}
            self.pacer.advise(body.get("poll_interval_s"))
            for envelope in body.get("manifests", [body]):
                self.handle(envelope, started)
        self.etag = response.header("etag") or self.etag
        self.next_poll = time.monotonic() + self.pacer.success()
        waiting = response.count("x-benchmarks")  # None: an older server, poll on a timer
        if waiting is None and time.monotonic() >= self.next_benchmarks:
            self.next_benchmarks = time.monotonic() + self.options.benchmark_poll_s
            waiting = 1
        if waiting:
            self.benchmarks(started)
        self.flush(upload=False)

    def benchmarks(self, started: datetime) -> None:
        """Answer pending benchmark requests from each variant's estimate (bench.py)."""
        try:
            response = self.client.request("GET", bench.LIST_PATH)
            requests = (response.json() or {}).get("requests") if response.status == 200 else []
        except (Unreachable, ValueError, AttributeError):
            return
        for envelope in (requests or [])[:20]:
            number = ((envelope or {}).get("manifest") or {}).get("benchmark")
            try:
                payload = bench.verify_request(
                    envelope, trusted_keys=self.trusted_keys(), device_uid=self.uid, now=started
                )
                results = [
                    {
                        "sha256": a["sha256"],
                        "state": "succeeded",
                        **bench.simulated_figures(
                            lambda a=a: self.latency_ms(a), payload["inferences"], self.rng
                        ),
                    }
                    for a in payload["artifacts"]
                ]
                body = {"state": "done", "results": results}
            except mf.ManifestError as exc:
                body = {"state": "refused", "error_code": exc.code, "error": exc.message}
            if isinstance(number, int) and not isinstance(number, bool):
                with contextlib.suppress(Unreachable):
                    path = bench.RESULT_PATH.format(id=number)
                    self.client.request("POST", path, json_body=body)
                    self.stats.add(f"benchmark_{body['state']}")

    def handle(self, envelope: dict, started: datetime) -> None:
        payload = envelope.get("manifest") or {}
        slot = str(payload.get("slot") or "default")
        try:
            verified = mf.verify(
                envelope,
                trusted_keys=self.trusted_keys(),
                device_uid=self.uid,
                last_version=self.trusted.get(slot, 0),
                now=started,
            )
        except mf.ManifestError as exc:
            self.status(payload, "failed", exc.message, exc.code)
            self.stats.add(f"manifest_refused_{exc.code}")
            return
        if verified.no_op:
            self.confirm_installed(slot, verified.payload)
            return
        payload = verified.payload
        self.trusted[slot] = payload["version"]
        announced = payload.get("next_key") or {}
        if announced.get("public_key"):
            self.keys.append(announced["public_key"])
        self.status(payload, "downloading")
        for artifact in payload["artifacts"]:
            problem = self.fetch(artifact)
            if problem:
                self.status(payload, "failed", problem[1], problem[0])
                self.stats.add("update_failed")
                return
        self.status(payload, "downloaded")
        self.status(payload, "installing")
        if "failed-health-check" in self.faults:
            state = "rolled_back" if slot in self.installed else "failed"
            self.status(payload, state, "health check failed: simulated fault", "health_check")
            self.log(
                "error",
                f"slot {slot}: version {payload['version']} failed its health check; rolled back",
            )
            self.stats.add(f"update_{state}")
            return
        if slot not in self.installed:
            self.first_variants = {a["name"] for a in payload["artifacts"]}
        self.installed[slot] = {"payload": payload}
        self.status(payload, "succeeded")
        self.flush()  # the status first, then what is installed now (as the agent does)
        self.send_inventory()
        if self.on_enrolled is not None:
            self.on_enrolled()  # keep the installed slots across a restart
        self.log("info", f"slot {slot}: installed manifest version {payload['version']}")
        self.stats.add("update_succeeded")

    def confirm_installed(self, slot: str, payload: dict) -> None:
        """The server offers again a manifest this device already installed: it never heard
        how the update ended (the report was queued when the simulator stopped, or stuck
        behind a refused upload). Report it once more per run; the report is idempotent."""
        installed = (self.installed.get(slot) or {}).get("payload") or {}
        key = (slot, payload.get("version"))
        if installed.get("version") == payload.get("version") and key not in self.confirmed:
            self.confirmed.add(key)
            self.status(payload, "succeeded")

    def fetch(self, artifact: dict) -> tuple[str, str] | None:
        """Download and hash an artifact in memory, bounded by its signed size."""
        try:
            response = self.client.request(
                "GET", artifact["url"], stream=True, timeout=self.options.timeout_s * 4
            )
        except Unreachable as exc:
            return "unreachable", str(exc)
        try:
            if response.status != 200:
                return f"http_{response.status}", f"artifact download: HTTP {response.status}"
            digest, left = hashlib.sha256(), artifact["size"]
            while left > 0:
                chunk = response.raw.read(min(65536, left))
                if not chunk:
                    return "short", "artifact stream ended early"
                digest.update(chunk)
                left -= len(chunk)
                if "slow-device" in self.faults:
                    time.sleep(0.005)
            if response.raw.read(1):
                return "too_long", "artifact stream is longer than signed"
        except OSError as exc:
            return "interrupted", str(exc)
        finally:
            response.close()
        if digest.hexdigest() != artifact["sha256"]:
            return "hash_mismatch", "artifact sha256 does not match the manifest"
        self.stats.add("bytes_downloaded", artifact["size"])
        return None

    # --- reporting ---------------------------------------------------------------------------
    def status(self, payload: dict, state: str, error: str = "", code: str = "") -> None:
        deployment = payload.get("deployment")
        self.outbox.append(
            (
                "status",
                {
                    "deployment": deployment if isinstance(deployment, int) else None,
                    "manifest_version": payload.get("version"),
                    "slot": payload.get("slot"),
                    "state": state,
                    "error": error,
                    "error_code": code,
                },
            )
        )

    def log(self, level: str, message: str) -> None:
        self._queue("logs", {"ts": time.time(), "level": level, "message": message})

    def _queue(self, kind: str, body: dict) -> None:
        if len(self.outbox) == self.outbox.maxlen:
            self.dropped += 1  # the deque drops the oldest: count it (E3)
        self.seq[kind] += 1
        self.outbox.append((kind, {**body, "seq": self.seq[kind], "boot_id": self.boot_id}))

    def latency_ms(self, artifact: dict) -> float:
        """One on-device inference time: the server's estimate for this device's profile
        (the manifest's `estimate_p95_ms`; its median here sits below that p95 by the
        noise model's spread), × the faults, × lognormal noise (σ 0.1)."""
        base = artifact.get("latency_ms") or artifact.get("benchmark_latency_ms")
        if not base and artifact.get("estimate_p95_ms"):
            base = float(artifact["estimate_p95_ms"]) / math.exp(1.645 * 0.1)
        if not base:
            speed = next((v for k, v in VARIANT_SPEED.items() if k in artifact["name"]), 1.0)
            base = self.options.base_latency_ms * speed
        factor = 2.0 if "slow-device" in self.faults else 1.0
        bad = self.options.bad_variant
        if "bad-variant" in self.faults and (
            artifact["name"] == bad
            or artifact["sha256"] == bad
            or (not bad and artifact["name"] not in self.first_variants)
        ):
            factor *= 3.0
        return float(base) * factor * math.exp(self.rng.gauss(0, 0.1))

    def telemetry(self) -> None:
        if self.battery is not None:
            self.battery = self.battery - 0.5 if self.battery > 5 else 100.0
        for slot, installed in self.installed.items():
            payload = installed["payload"]
            variant = mf.choose_variant(
                payload, {"battery_pct": self.battery, "on_ac": self.battery is None}
            )
            artifact = next(a for a in payload["artifacts"] if a["name"] == variant)
            latency = self.latency_ms(artifact)
            interval = self.options.telemetry_interval_s
            self._queue(
                "telemetry",
                {
                    "ts": time.time(),
                    "model_version": str(artifact.get("model_version") or ""),
                    "latency_ms": round(latency, 3),
                    "throughput": round(1000.0 / latency, 2),
                    "mem_mb": round(40 + artifact["size"] / 1e6 * 1.5, 1),
                    "cpu_pct": round(self.rng.uniform(20, 70), 1),
                    "temp_c": round(self.rng.uniform(45, 65), 1),
                    "battery_pct": self.battery,
                    "power_w": round(self.rng.uniform(2.5, 5.5), 2),
                    "inferences": int(interval * 1000.0 / latency),
                    "errors": 0,
                    "extra": {
                        "slot": slot,
                        "variant": variant,
                        "sha256": artifact["sha256"],
                        "simulated": True,
                        "latency_p95_ms": round(latency * 1.3, 3),
                    },
                },
            )
        self.stats.add("telemetry_sampled", len(self.installed))
        if self.rng.random() < self.options.telemetry_interval_s / HEARTBEAT_LOG_S:
            self.log("info", f"heartbeat: {len(self.installed)} slot(s) active")
        self.flush(upload=False)

    def flush(self, *, upload: bool = True) -> None:
        """Deliver the outbox in order: statuses one by one, telemetry and logs one
        batch per kind (like the agent's buffer: a log line between two samples does
        not split their upload in two). `upload=False`: only when a status report
        waits or the upload is due."""
        now = time.monotonic()
        if not upload and now < self.next_upload and all(k != "status" for k, _ in self.outbox):
            return
        if self.outbox and now >= self.next_upload:
            self.next_upload = now + self.upload_pacer.success()
        while self.outbox:
            kind = self.outbox[0][0]
            if kind == "status":
                taken = [self.outbox[0]]
                batch = [taken[0][1]]
                path, body = "/api/v1/device/update/status", batch[0]
            else:
                taken = [entry for entry in self.outbox if entry[0] == kind][:500]
                batch = [item for _, item in taken]
                path = f"/api/v1/device/{kind}"
                body = {"boot_id": self.boot_id, "batch": batch, "dropped": self.dropped}
            began = time.perf_counter()
            try:
                response = self.client.post(path, body)
            except Unreachable:
                self.stats.add("report_unreachable")
                return
            self.stats.timed(kind, began)
            if response.status >= 500 or response.status == 429:
                self.stats.add(f"report_http_{response.status}")
                return
            if response.status >= 400:
                self.stats.add(f"report_refused_{kind}_{response.status}")
            elif kind != "status":
                self.stats.add(f"{kind}_sent", len(batch))
                self.dropped = 0
                self.noted(response)
            sent = {id(entry) for entry in taken}
            kept = [entry for entry in self.outbox if id(entry) not in sent]
            self.outbox.clear()
            self.outbox.extend(kept)

    def noted(self, response: Response) -> None:
        """The upload answer's check-in ETag: the same as this device's stands for a
        poll (the next waits an interval), another one means an update waits, and so
        do benchmark requests (`X-Benchmarks`)."""
        etag = response.header("x-update-etag")
        if not etag or self.etag is None or self.pacer.failures:
            return  # before its first check-in a device polls as scheduled
        now = time.monotonic()
        if etag != self.etag or response.count("x-benchmarks"):
            self.next_poll = min(self.next_poll, now)
        else:
            interval = self.pacer.interval_s * (1 + self.pacer.jitter / 2)
            self.next_poll = max(self.next_poll, now + interval)

    def saved(self) -> dict:
        return {
            "uid": self.uid,
            "token": self.token,
            "keys": self.keys,
            "installed": self.installed,
            "trusted": self.trusted,
            "first_variants": sorted(self.first_variants),
            "reported": self.reported,
        }
