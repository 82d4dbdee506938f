"""On-device benchmarks of candidate versions, before any rollout.

The server signs a benchmark request per device like a manifest (same key,
device and expiry checks; its own `schema`, so neither can pass for the other):
`{"schema": "benchmark-1", "device", "benchmark", "version", "expires_at",
"artifacts": [...], "default", "inferences"}`. The agent fetches pending requests
(`GET /api/v1/device/benchmarks`), verifies each, downloads every artifact through
the verified, resumable path into its own folder (never a slot's), and measures
it in a child process under the health check's limits (`python -m
<package>.bench`): load time, p50/p95/p99 latency, throughput, peak RSS, CPU and,
with a power sensor, energy per inference. It posts the figures
(`POST /api/v1/device/benchmarks/<id>/results`) and deletes the files. The
active model is never touched.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from datetime import UTC, datetime

from . import manifest as mf
from .client import Pacer, Unreachable
from .client import sleep as client_sleep
from .download import DownloadError, download
from .health import default_memory_mb, limit_resources, open_session, sample_inputs

log = logging.getLogger("edgefleet.agent")

SCHEMA = "benchmark-1"
LIST_PATH = "/api/v1/device/benchmarks"
RESULT_PATH = "/api/v1/device/benchmarks/{id}/results"
MAX_INFERENCES = 10_000
# a benchmark artifact's download: tries, and the backoff's ceiling (base doubling)
DOWNLOAD_ATTEMPTS = 4
RETRY_CAP_S = 60.0


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def measure(path: str, inferences: int, *, input_dir=None, power_root="/", threads=None) -> dict:
    """Load the model and run it `inferences` times (after 3 warm-ups)."""
    import resource

    from .energy import EnergyMeter, find_sensor
    from .runtime import Inputs

    started = time.perf_counter()
    session = open_session(path, threads)
    load_ms = (time.perf_counter() - started) * 1000.0
    inputs = Inputs(input_dir) if input_dir else None
    fixed = None if inputs else sample_inputs(session)
    for _ in range(3):
        session.run(None, inputs.feeds(session) if inputs else fixed)
    meter = EnergyMeter(find_sensor(power_root))
    latencies = []
    cpu_before, wall_before = os.times(), time.perf_counter()
    meter.begin()
    for _ in range(inferences):
        feeds = inputs.feeds(session) if inputs else fixed
        tick = time.perf_counter()
        session.run(None, feeds)
        latencies.append((time.perf_counter() - tick) * 1000.0)
        meter.tick()
    energy = meter.end(inferences)
    wall = time.perf_counter() - wall_before
    cpu_after = os.times()
    cpu = (cpu_after.user - cpu_before.user) + (cpu_after.system - cpu_before.system)
    result = {
        "load_ms": round(load_ms, 3),
        "p50_ms": round(_percentile(latencies, 50), 4),
        "p95_ms": round(_percentile(latencies, 95), 4),
        "p99_ms": round(_percentile(latencies, 99), 4),
        "throughput": round(inferences / wall, 3) if wall > 0 else None,
        "cpu_pct": round(100.0 * cpu / wall, 1) if wall > 0 else None,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1),
        "inferences": inferences,
        "input": "device" if inputs else "generated",
    }
    if energy:  # no sensor: no field
        result.update(
            energy_mj=energy["energy_mj"],
            avg_power_w=energy["avg_power_w"],
            power_sensor=energy["sensor"],
        )
    return result


def run_child(
    path: str,
    inferences: int,
    *,
    input_dir=None,
    power_root="/",
    threads=None,
    memory_mb: int | None = None,
    timeout_s: float = 600.0,
) -> dict:
    """`measure` in a child process under the health check's address-space and CPU
    limits: a model that crashes or allocates without bound only takes the child."""
    spec = {
        "path": path,
        "inferences": inferences,
        "input_dir": input_dir,
        "power_root": str(power_root),
        "threads": threads,
        "memory_mb": int(memory_mb or default_memory_mb()),
        "cpu_s": int(timeout_s) + 1,
    }
    try:
        proc = subprocess.run(
            [sys.executable, "-m", f"{__package__}.bench", json.dumps(spec)],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"benchmark timed out after {timeout_s:.0f} s"}
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return {"error": f"benchmark exited with {proc.returncode}: {proc.stderr.strip()[-300:]}"}


def simulated_figures(latency_ms, inferences: int, rng) -> dict:
    """What the simulator reports for one version: `inferences` draws (at most 2000)
    of its noise model around the variant's estimate (`simulate.SimDevice.latency_ms`)."""
    draws = [latency_ms() for _ in range(min(inferences, 2000))]
    mean = sum(draws) / len(draws)
    return {
        "load_ms": round(rng.uniform(20, 80), 3),
        "p50_ms": round(_percentile(draws, 50), 4),
        "p95_ms": round(_percentile(draws, 95), 4),
        "p99_ms": round(_percentile(draws, 99), 4),
        "throughput": round(1000.0 / mean, 3) if mean > 0 else None,
        "cpu_pct": round(rng.uniform(80, 100), 1),
        "peak_rss_mb": round(rng.uniform(60, 90), 1),
        "inferences": inferences,
        "input": "simulated",
    }


def verify_request(envelope, *, trusted_keys: dict, device_uid: str, now: datetime) -> dict:
    """The verified payload of a benchmark request; ManifestError on refusal."""
    verified = mf.verify(
        envelope,
        trusted_keys=trusted_keys,
        device_uid=device_uid,
        last_version=0,
        now=now,
        schema=SCHEMA,
    )
    inferences = verified.payload.get("inferences")
    if (
        not isinstance(inferences, int)
        or isinstance(inferences, bool)
        or not (0 < inferences <= MAX_INFERENCES)
    ):
        raise mf.ManifestError("malformed", "inferences out of range")
    return verified.payload


class Benchmarks:
    """Fetch, verify, run and report the device's pending benchmark requests."""

    def __init__(
        self,
        state,
        client,
        *,
        settings: dict,
        limits=None,
        inputs_dir=None,
        retry_base_s: float = 2.0,
        sleep=client_sleep,
    ):
        self.state = state
        self.client = client
        self.settings = settings
        self.limits = limits
        self.inputs_dir = inputs_dir
        self.retry_base_s = retry_base_s
        self.sleep = sleep

    def poll(self, now: datetime | None = None) -> list[dict]:
        """One round; the reports sent (for logs and tests)."""
        try:
            response = self.client.request("GET", LIST_PATH)
        except Unreachable as exc:
            log.info("benchmark requests not fetched: %s", exc)
            return []
        if response.status != 200:
            return []
        try:
            requests = (response.json() or {}).get("requests") or []
        except (ValueError, AttributeError):
            return []
        sent = []
        for envelope in requests[:20] if isinstance(requests, list) else []:
            report = self.run(envelope, now or datetime.now(UTC))
            if report is not None:
                sent.append(report)
        return sent

    def run(self, envelope: dict, now: datetime) -> dict | None:
        payload = envelope.get("manifest") if isinstance(envelope, dict) else None
        number = payload.get("benchmark") if isinstance(payload, dict) else None
        try:
            verify_request(
                envelope,
                trusted_keys=self.state.trusted_keys(),
                device_uid=self.state.uid,
                now=now,
            )
        except mf.ManifestError as exc:
            log.warning("benchmark request %s refused: %s (%s)", number, exc.message, exc.code)
            if not isinstance(number, int) or isinstance(number, bool):
                return None  # nothing to report it against
            return self._post(
                number,
                {"state": "refused", "error_code": exc.code, "error": exc.message, "results": []},
            )
        results = [self._one(a, payload["inferences"]) for a in payload["artifacts"]]
        return self._post(number, {"state": "done", "results": results})

    def _one(self, artifact: dict, inferences: int) -> dict:
        folder = self.state.root / "benchmarks"
        folder.mkdir(exist_ok=True, mode=0o700)
        part = self.state.download_path(f"bench-{artifact['sha256']}")
        target = folder / f"{artifact['sha256']}.onnx"
        try:
            path = self._download(artifact, part)
            path.replace(target)
            figures = run_child(
                str(target),
                inferences,
                input_dir=self.inputs_dir,
                power_root=self.settings.get("power_root") or "/",
                threads=self.settings.get("threads"),
                memory_mb=self.settings.get("health_memory_mb"),
            )
        except (DownloadError, Unreachable, OSError) as exc:
            figures = {
                "error": str(getattr(exc, "args", [exc])[-1])[:500],
                "error_code": getattr(exc, "code", "download"),
            }
        finally:
            target.unlink(missing_ok=True)
            part.unlink(missing_ok=True)
        state = "failed" if "error" in figures else "succeeded"
        return {"sha256": artifact["sha256"], "state": state, **figures}

    def _download(self, artifact: dict, part):
        """The update's verified, resumable download, tried again after a transient
        failure (a cut, the server unreachable): at most DOWNLOAD_ATTEMPTS times with
        full-jitter exponential backoff, each try resuming from the bytes kept in the
        `.part` file. A refused artifact (size, sha256) is not tried again."""
        pacer = Pacer(0.0, base_s=self.retry_base_s, cap_s=RETRY_CAP_S)
        for attempt in range(1, DOWNLOAD_ATTEMPTS + 1):
            try:
                return download(
                    self.client,
                    artifact["url"],
                    part,
                    size=artifact["size"],
                    sha256=artifact["sha256"],
                    limits=self.limits,
                )
            except (DownloadError, Unreachable) as exc:
                if getattr(exc, "transient", True) is False or attempt == DOWNLOAD_ATTEMPTS:
                    raise
                delay = pacer.failure()
                log.info(
                    "benchmark artifact %s: attempt %s failed (%s), again in %.1f s",
                    artifact["sha256"][:12],
                    attempt,
                    exc,
                    delay,
                )
                self.sleep(delay)
        raise AssertionError("unreachable")

    def _post(self, number: int, body: dict) -> dict:
        try:
            response = self.client.post(RESULT_PATH.format(id=number), body)
            if response.status >= 400:
                log.warning("benchmark %s report refused: HTTP %s", number, response.status)
        except Unreachable as exc:
            log.info("benchmark %s report not sent: %s", number, exc)
        return {"benchmark": number, **body}


def main(argv: list[str] | None = None) -> int:
    spec = json.loads((argv if argv is not None else sys.argv[1:])[0])
    import numpy.random  # noqa: F401 -- the libraries first: the limit is the model's
    import onnxruntime  # noqa: F401

    limit_resources(spec.get("memory_mb"), spec.get("cpu_s"))
    try:
        result = measure(
            spec["path"],
            int(spec["inferences"]),
            input_dir=spec.get("input_dir"),
            power_root=spec.get("power_root") or "/",
            threads=spec.get("threads"),
        )
    except Exception as exc:  # any failure of onnxruntime is the answer we report
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"[:500]}))
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
