"""Many lightweight simulated devices in one process: a living fleet for demos,
load benchmarks and end-to-end tests.

    python -m devices.agent.simulate --server URL --enrollment-token T --devices N

Each device enrolls, polls the update API (ETag, server-advised interval,
backoff with jitter), verifies manifests exactly like the real agent
(`manifest.verify` with its pinned key), "installs" by downloading every
artifact and checking its size and sha256 (no onnxruntime), reports each update
state, and samples telemetry drawn from the variant's benchmark latency with
noise every telemetry interval, plus a few log lines, uploaded every upload
interval like the agent (`--upload-interval-s` as a floor, else the server's
`X-Upload-Interval`, else every sample); an upload answer's `X-Update-ETag`
equal to the device's stands for a poll, another one makes it poll at once.
Faults (`--fault`, repeatable, applied to `--fault-fraction` of the devices):

- failed-health-check: every install fails its health check and is rolled back
- flapping-network: the device loses the network for `--flap-period-s` every other period
- slow-device: latency ×2 and slow downloads
- bad-variant: latency ×3 on the variant named by `--bad-variant` (name or sha256),
  or, without it, on any variant installed after the device's first one

Latency is drawn around the manifest's `estimate_p95_ms` (the server's
benchmark of the variant on the device's profile), so a healthy variant passes
the latency gate and a faulty one does not.

A scheduler thread hands due devices to a small worker pool, so 10,000 devices
cost 10,000 small objects, not 10,000 threads.
"""

from __future__ import annotations

import argparse
import base64
import collections
import contextlib
import hashlib
import heapq
import itertools
import json
import logging
import math
import queue
import random
import signal
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from . import __version__, bench
from . import manifest as mf
from .client import LeanClient, Pacer, Response, Unreachable
from .state import write_json

log = logging.getLogger("edgefleet.simulate")

FAULTS = ("failed-health-check", "flapping-network", "slow-device", "bad-variant")
VARIANT_SPEED = {"int8": 0.45, "fp16": 0.75, "pruned": 0.8}
TICK_S = 0.005  # scheduler granularity
HEARTBEAT_LOG_S = 300  # a device logs a heartbeat line about this often


def _seconds(value) -> float | None:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    return min(seconds, 3600.0) if seconds > 0 else None


class Stats:
    """Counters over the whole run; latency and lag histograms after `warmup_s` only
    (the first steps of a restarted fleet, all its inventory reports, are no steady
    state)."""

    def __init__(self, warmup_s: float = 0.0):
        self.measure_from = time.monotonic() + warmup_s
        self.counts = collections.Counter()
        # endpoint -> Counter of latencies in 0.1 ms steps: exact percentiles to
        # 0.1 ms in bounded memory, however long the fleet runs.
        self.latency: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        # How late steps started after they were due (the simulator's own queueing):
        # latency measured from a late start would hide it (coordinated omission).
        self.lag: collections.Counter = collections.Counter()
        self.lock = threading.Lock()

    def add(self, name: str, n: int = 1) -> None:
        with self.lock:
            self.counts[name] += n

    def timed(self, endpoint: str, began: float) -> None:
        """Record one request to `endpoint` that started at perf_counter `began`."""
        if time.monotonic() < self.measure_from:
            return
        tenths = round((time.perf_counter() - began) * 10_000)
        with self.lock:
            self.latency[endpoint][tenths] += 1

    def late(self, seconds: float) -> None:
        if time.monotonic() < self.measure_from:
            return
        tenths = round(seconds * 10_000)
        with self.lock:
            self.lag[tenths] += 1

    def lag_summary(self) -> dict:
        with self.lock:
            return _percentiles(self.lag)

    def latency_summary(self) -> dict:
        with self.lock:
            return {endpoint: _percentiles(hist) for endpoint, hist in sorted(self.latency.items())}

    def as_dict(self) -> dict:
        with self.lock:
            return dict(sorted(self.counts.items()))


def _percentiles(hist: collections.Counter) -> dict:
    total = sum(hist.values())
    out = {"count": total}
    wanted = [("p50_ms", 0.50), ("p95_ms", 0.95), ("p99_ms", 0.99), ("max_ms", 1.0)]
    seen, index = 0, 0
    for tenths in sorted(hist):
        seen += hist[tenths]
        while index < len(wanted) and seen >= math.ceil(wanted[index][1] * total):
            out[wanted[index][0]] = tenths / 10
            index += 1
    return out


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
        facts = {
            "arch": "aarch64",
            "cpu": "Simulated Cortex-A72",
            "cpu_count": 4,
            "ram_mb": 4096,
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
        if time.monotonic() >= self.next_benchmarks:
            self.next_benchmarks = time.monotonic() + self.options.benchmark_poll_s
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
        """Deliver the outbox in order: statuses one by one, telemetry/logs batched.
        `upload=False`: only when a status report waits or the upload is due."""
        now = time.monotonic()
        if not upload and now < self.next_upload and all(k != "status" for k, _ in self.outbox):
            return
        if self.outbox and now >= self.next_upload:
            self.next_upload = now + self.upload_pacer.success()
        while self.outbox:
            kind = self.outbox[0][0]
            if kind == "status":
                batch = [self.outbox[0][1]]
                path, body = "/api/v1/device/update/status", batch[0]
            else:
                batch = [
                    item
                    for _, item in itertools.takewhile(
                        lambda entry, k=kind: entry[0] == k, self.outbox
                    )
                ][:500]
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
                self.noted(response.header("x-update-etag"))
            for _ in batch:
                self.outbox.popleft()

    def noted(self, etag: str | None) -> None:
        """The upload answer's check-in ETag: the same as this device's stands for a
        poll (the next waits an interval), another one means an update waits."""
        if not etag or self.etag is None or self.pacer.failures:
            return  # before its first check-in a device polls as scheduled
        now = time.monotonic()
        if etag != self.etag:
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


class Fleet:
    """Schedules `SimDevice.step` calls on a worker pool until the deadline."""

    def __init__(self, options):
        self.options = options
        self.stats = Stats(options.warmup_s)
        saved = {}
        if options.state_file and Path(options.state_file).exists():
            try:
                saved = json.loads(Path(options.state_file).read_text()).get("devices", {})
            except ValueError:
                log.warning("state file %s unreadable; enrolling afresh", options.state_file)
        self.devices = [
            SimDevice(i, options, self.stats, saved.get(str(i))) for i in range(options.devices)
        ]
        self._save_lock = threading.Lock()
        for device in self.devices:
            device.on_enrolled = self.save

    def save(self) -> None:
        """Credentials of every enrolled device, written atomically (temp + rename) as
        soon as one enrolls: a fleet killed at any moment comes back as the same devices."""
        if self.options.state_file:
            with self._save_lock:
                for _attempt in range(3):  # another device's thread may change its slots
                    try:
                        devices = {
                            str(d.index): json.loads(json.dumps(d.saved()))
                            for d in self.devices
                            if d.token
                        }
                        break
                    except RuntimeError:
                        continue
                else:
                    return
                write_json(Path(self.options.state_file), {"devices": devices})

    def run(self) -> dict:
        """A scheduler loop hands due devices to `concurrency` worker threads through
        a SimpleQueue (a ThreadPoolExecutor's Future per step cost more CPU than the
        step's HTTP request); each step hands the device back with its next due time
        through another, so only the scheduler touches the heap (no lock: popping
        under a lock the workers also took was a fifth of the simulator's time)."""
        deadline = time.monotonic() + self.options.duration_s if self.options.duration_s else None
        heap = [
            (time.monotonic() + d.rng.uniform(0, self.options.ramp_s), d.index)
            for d in self.devices
        ]
        heapq.heapify(heap)
        ready: queue.SimpleQueue = queue.SimpleQueue()
        returned: queue.SimpleQueue = queue.SimpleQueue()

        def work() -> None:
            while (item := ready.get()) is not None:
                scheduled, index = item
                self.stats.late(time.monotonic() - scheduled)
                device = self.devices[index]
                try:
                    due = device.step()
                except Exception:  # one broken device must not stop the fleet
                    log.exception("device %s step failed", device.index)
                    self.stats.add("step_errors")
                    due = time.monotonic() + self.options.poll_interval_s
                returned.put((due, index))

        workers = [
            threading.Thread(target=work, name=f"sim-{n}", daemon=True)
            for n in range(self.options.concurrency)
        ]
        for thread in workers:
            thread.start()
        try:
            while deadline is None or time.monotonic() < deadline:
                now = time.monotonic()
                while not returned.empty():  # the only consumer: never blocks
                    heapq.heappush(heap, returned.get())
                while heap and heap[0][0] <= now:
                    ready.put(heapq.heappop(heap))
                wait = heap[0][0] - now if heap else TICK_S
                if deadline is not None:
                    wait = min(wait, deadline - now)
                # Steps finishing meanwhile push due times seconds ahead, so a short
                # sleep (not a wake-up per step) keeps the schedule to within TICK_S.
                time.sleep(max(0.0, min(wait, TICK_S)))
        except KeyboardInterrupt:
            pass
        # Steps queued but not started are dropped (counted): a fleet behind schedule
        # stops at its deadline, not after its backlog; steps under way finish.
        while True:
            try:
                ready.get_nowait()
            except queue.Empty:
                break
            self.stats.add("steps_not_run")
        for _ in workers:
            ready.put(None)
        for thread in workers:
            thread.join()
        # Samples still waiting for their upload go out now: the agent's outbox lasts
        # on disk to its next start, the simulator's memory does not.
        for device in self.devices:
            if device.token and device.outbox:
                try:
                    device.flush()
                except Exception:
                    log.exception("device %s final upload failed", device.index)
        self.save()
        return {
            "devices": len(self.devices),
            "enrolled": sum(1 for d in self.devices if d.token),
            "faulty": sum(1 for d in self.devices if d.faults),
            **self.stats.as_dict(),
            "latency": self.stats.latency_summary(),
            "schedule_lag": self.stats.lag_summary(),
        }


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m devices.agent.simulate", description="Run many simulated EdgeFleet devices."
    )
    p.add_argument("--server", required=True)
    p.add_argument("--enrollment-token", required=True)
    p.add_argument("--devices", type=int, default=5)
    p.add_argument("--duration-s", type=float, default=0, help="0: until interrupted")
    p.add_argument("--poll-interval-s", type=float, default=30)
    p.add_argument("--telemetry-interval-s", type=float, default=10, help="sampling")
    p.add_argument(
        "--upload-interval-s",
        type=float,
        help="upload at most this often (a floor); default: as the server advises, "
        "else every sample",
    )
    p.add_argument("--benchmark-poll-s", type=float, default=300, help="benchmark requests")
    p.add_argument("--ramp-s", type=float, default=2, help="spread the first steps over this")
    p.add_argument("--warmup-s", type=float, default=0, help="latency and lag measured after this")
    p.add_argument("--fault", action="append", choices=FAULTS, help="repeatable")
    p.add_argument("--fault-fraction", type=float, default=1.0)
    p.add_argument("--bad-variant", help="variant name or sha256 that runs 3x slower")
    p.add_argument("--flap-period-s", type=float, default=20)
    p.add_argument("--base-latency-ms", type=float, default=25)
    p.add_argument("--hardware-profile", help="hardware profile slug sent at enrollment")
    p.add_argument("--uid-prefix", help="ask for uids PREFIX-00000…; default: server picks")
    p.add_argument(
        "--preinstalled",
        metavar="MODEL_VERSION",
        help="devices start with this model version installed (factory image), "
        "so they report telemetry before any deployment",
    )
    p.add_argument("--state-file", help="keep credentials here to reuse devices across runs")
    p.add_argument("--buffer-cap", type=int, default=1000)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--timeout-s", type=float, default=10)
    p.add_argument("--seed", type=int, default=1)
    return p


def main(argv: list[str] | None = None) -> int:
    options = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    def stop(_signum, _frame):
        raise KeyboardInterrupt  # SIGTERM ends the run like Ctrl-C: state saved, summary printed

    signal.signal(signal.SIGTERM, stop)
    summary = Fleet(options).run()
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
