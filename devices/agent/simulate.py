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
cost 10,000 small objects, not 10,000 threads. One process shares one GIL, so a
large fleet runs as several processes, each `--shard K/N` of it (the devices
whose index is K modulo N, the same devices and uids as unsharded); each prints
its histograms with its summary, and `merge` adds the summaries up into one,
percentiles recomputed from the summed histograms (not averaged).
"""

from __future__ import annotations

import argparse
import collections
import gc
import heapq
import json
import logging
import math
import queue
import signal
import threading
import time
from pathlib import Path

from .simdevice import FAULTS, TICK_S, SimDevice
from .state import write_json

log = logging.getLogger("edgefleet.simulate")

__all__ = ["FAULTS", "Fleet", "SimDevice", "Stats", "main", "parser"]


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
        self._gc_began: float | None = None

    def gc_callback(self, phase: str, info: dict) -> None:
        """Oldest-generation collections and the time they held the GIL (whole ms)."""
        if info["generation"] != 2:
            return
        if phase == "start":
            self._gc_began = time.perf_counter()
        elif self._gc_began is not None:
            self.add("gc_full_collections")
            self.add("gc_full_ms", round((time.perf_counter() - self._gc_began) * 1000))
            self._gc_began = None

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

    def histograms(self) -> dict:
        """The raw histograms (0.1 ms steps as string keys, JSON-ready), for `merge`."""
        with self.lock:
            return {
                "latency": {ep: _keyed(hist) for ep, hist in sorted(self.latency.items())},
                "schedule_lag": _keyed(self.lag),
            }

    def as_dict(self) -> dict:
        with self.lock:
            return dict(sorted(self.counts.items()))


def _keyed(hist: collections.Counter) -> dict[str, int]:
    return {str(tenths): n for tenths, n in sorted(hist.items())}


def _counter(keyed: dict[str, int]) -> collections.Counter:
    return collections.Counter({int(tenths): n for tenths, n in keyed.items()})


def summarize(counts: dict, histograms: dict) -> dict:
    """A run's summary: its counters, and percentiles from its histograms (kept, so
    that summaries of several shards can be merged)."""
    latency = {ep: _percentiles(_counter(h)) for ep, h in histograms["latency"].items()}
    return {
        **counts,
        "latency": latency,
        "schedule_lag": _percentiles(_counter(histograms["schedule_lag"])),
        "histograms": histograms,
    }


def merge(summaries: list[dict]) -> dict:
    """One summary of a fleet run as several `--shard` processes: integer counters
    summed, histograms summed, percentiles computed from the sums."""
    counts: collections.Counter = collections.Counter()
    latency: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    lag: collections.Counter = collections.Counter()
    for summary in summaries:
        counts.update({k: v for k, v in summary.items() if isinstance(v, int)})
        for endpoint, hist in summary["histograms"]["latency"].items():
            latency[endpoint].update(_counter(hist))
        lag.update(_counter(summary["histograms"]["schedule_lag"]))
    histograms = {
        "latency": {ep: _keyed(hist) for ep, hist in sorted(latency.items())},
        "schedule_lag": _keyed(lag),
    }
    return summarize(dict(sorted(counts.items())), histograms)


def shard(text: str) -> tuple[int, int]:
    """`K/N` (0 <= K < N) for argparse."""
    try:
        k, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected K/N, e.g. 0/2") from None
    if not 0 <= k < n:
        raise argparse.ArgumentTypeError(f"{text!r}: needs 0 <= K < N")
    return k, n


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
        k, n = options.shard
        self.devices = [
            SimDevice(i, options, self.stats, saved.get(str(i)))
            for i in range(k, options.devices, n)
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
        heap = [  # (due, position in self.devices)
            (time.monotonic() + d.rng.uniform(0, self.options.ramp_s), position)
            for position, d in enumerate(self.devices)
        ]
        for first_step, position in heap:
            self.devices[position].boot(first_step)
        heapq.heapify(heap)
        ready: queue.SimpleQueue = queue.SimpleQueue()
        returned: queue.SimpleQueue = queue.SimpleQueue()

        def work() -> None:
            while (item := ready.get()) is not None:
                scheduled, position = item
                self.stats.late(time.monotonic() - scheduled)
                device = self.devices[position]
                try:
                    due = device.step()
                except Exception:  # one broken device must not stop the fleet
                    log.exception("device %s step failed", device.index)
                    self.stats.add("step_errors")
                    due = time.monotonic() + self.options.poll_interval_s
                returned.put((due, position))

        # Thousands of devices are hundreds of thousands of long-lived objects; a full
        # collection walked them all while holding the GIL (5,000 devices: 120 ms),
        # stopping every thread mid-request. Frozen, collections walk only what the
        # run allocates since; their pauses are counted (`gc_*`).
        gc.freeze()
        gc.callbacks.append(self.stats.gc_callback)
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
        gc.callbacks.remove(self.stats.gc_callback)
        gc.unfreeze()
        # Samples still waiting for their upload go out now: the agent's outbox lasts
        # on disk to its next start, the simulator's memory does not.
        for device in self.devices:
            if device.token and device.outbox:
                try:
                    device.flush()
                except Exception:
                    log.exception("device %s final upload failed", device.index)
        self.save()
        counts = {
            "devices": len(self.devices),
            "enrolled": sum(1 for d in self.devices if d.token),
            "faulty": sum(1 for d in self.devices if d.faults),
            **self.stats.as_dict(),
        }
        return summarize(counts, self.stats.histograms())


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m devices.agent.simulate", description="Run many simulated EdgeFleet devices."
    )
    p.add_argument("--server", required=True)
    p.add_argument("--enrollment-token", required=True)
    p.add_argument("--devices", type=int, default=5)
    p.add_argument(
        "--shard",
        type=shard,
        default=(0, 1),
        metavar="K/N",
        help="simulate only the devices whose index is K modulo N (one process of N)",
    )
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
    p.add_argument(
        "--state-file",
        help="keep credentials here to reuse devices across runs (it holds this process's "
        "devices only: give each --shard a file of its own)",
    )
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
