"""Prometheus metrics: their definitions, the web's `/metrics` view, the
internal-port exporter of the worker and the MQTT bridge.

Two kinds of metric:
- events, counted where they happen (device requests, ingested records, gate
  decisions, task failures, MQTT messages). Under gunicorn or a prefork Celery
  worker every process counts its own: set `PROMETHEUS_MULTIPROC_DIR` and each
  process writes its samples to files there that a scrape merges
  (`prometheus_client.multiprocess`); the gunicorn config and the worker's
  start-up empty that directory, and exited processes are marked dead.
- state, read from the database and the broker when scraped (`StateCollector`:
  devices by status, deployments by state, compression jobs by state, queue
  lengths). Only the web's `/metrics` exports them, so one scrape target owns
  each series however many processes run.

`/metrics` needs `Authorization: Bearer <METRICS_TOKEN>`; without the setting it
answers 404 (not exposed). The worker and the bridge serve theirs on
`METRICS_PORT` (bind it to an internal address with `METRICS_ADDR`). No Django
import at module level: `fleet.gunicorn` imports this before Django is set up.
"""

from __future__ import annotations

import hmac
import logging
import os
import shutil
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily

log = logging.getLogger(__name__)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

DEVICE_REQUESTS = Counter(
    "edgefleet_device_requests_total",
    "Device API requests, by endpoint (URL name) and HTTP status.",
    ["endpoint", "status"],
)
DEVICE_REQUEST_SECONDS = Histogram(
    "edgefleet_device_request_duration_seconds",
    "Time the device API spent on a request, from routing to the answer.",
    ["endpoint"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
RECORDS = Counter(
    "edgefleet_telemetry_records_total",
    "Telemetry points (kind=telemetry) and log lines (kind=logs) received from devices, "
    "by outcome: stored, duplicate (a resend, answered as before), rejected (invalid), "
    "dropped (lost in the device's offline buffer, as the device reported).",
    ["kind", "outcome"],
)
GATE_DECISIONS = Counter(
    "edgefleet_gate_decisions_total",
    "Outcomes of the deployment gate task, one per deployment and run: wait, advanced, "
    "completed, paused, started, skipped, error.",
    ["decision"],
)
TASK_FAILURES = Counter(
    "edgefleet_celery_task_failures_total", "Celery tasks that raised, by task name.", ["task"]
)
MQTT_MESSAGES = Counter(
    "edgefleet_mqtt_messages_total",
    "Messages the MQTT bridge handled, by kind (telemetry, logs) and outcome (ok, refused, error).",
    ["kind", "outcome"],
)


def enabled() -> bool:
    """`METRICS_ENABLED=0` turns counting off (to measure what it costs)."""
    from django.conf import settings

    return settings.METRICS_ENABLED


def observe_device_request(request, status: int, seconds: float) -> None:
    match = getattr(request, "resolver_match", None)
    endpoint = match.url_name if match is not None and match.url_name else "unmatched"
    DEVICE_REQUESTS.labels(endpoint, str(status)).inc()
    DEVICE_REQUEST_SECONDS.labels(endpoint).observe(seconds)


def count_records(
    kind: str, *, stored: int = 0, duplicate: int = 0, rejected: int = 0, dropped: int = 0
) -> None:
    if not enabled():
        return
    for outcome, count in (
        ("stored", stored),
        ("duplicate", duplicate),
        ("rejected", rejected),
        ("dropped", dropped),
    ):
        if count:
            RECORDS.labels(kind, outcome).inc(count)


def count_gate_decisions(outcome: dict) -> None:
    for decision in outcome.values():
        GATE_DECISIONS.labels(decision).inc()


# --- state read at scrape time ---------------------------------------------------------
class StateCollector:
    """Gauges read from the database and the broker on each scrape (the web's
    `/metrics` only). A backing service that fails leaves its gauges out and sets
    `edgefleet_state_scrape_error` to 1 instead of failing the whole scrape."""

    def collect(self):
        from django.apps import apps
        from django.db.models import Count

        error = 0
        for name, doc, model, field in (
            (
                "edgefleet_devices",
                "Devices by status (online, offline, ...).",
                "devices.Device",
                "status",
            ),
            ("edgefleet_deployments", "Deployments by state.", "ota.Deployment", "status"),
            (
                "edgefleet_compression_jobs",
                "Compression jobs by state.",
                "compression.CompressionJob",
                "status",
            ),
        ):
            family = GaugeMetricFamily(name, doc, labels=["state"])
            try:
                table = apps.get_model(model)
                rows = table.objects.values_list(field).annotate(n=Count("pk")).order_by()
                counts = dict(rows)
                for state, _label in table._meta.get_field(field).choices:  # zeros too
                    family.add_metric([state], counts.pop(state, 0))
                for state, count in counts.items():
                    family.add_metric([state], count)
            except Exception:
                log.exception("metrics: cannot read %s", model)
                error = 1
                continue
            yield family
        queues = GaugeMetricFamily(
            "edgefleet_celery_queue_length",
            "Messages waiting in each Celery queue (Redis broker).",
            labels=["queue"],
        )
        try:
            for queue, length in queue_lengths().items():
                queues.add_metric([queue], length)
            yield queues
        except Exception:
            log.exception("metrics: cannot read the broker's queues")
            error = 1
        failed = GaugeMetricFamily(
            "edgefleet_state_scrape_error", "1 when a state gauge could not be read on this scrape."
        )
        failed.add_metric([], error)
        yield failed


def queue_lengths() -> dict[str, int]:
    """LLEN of each Celery queue when the broker is Redis; empty otherwise."""
    from django.conf import settings

    from fleet.celery import Queue

    url = settings.CELERY_BROKER_URL
    if not url.startswith(("redis://", "rediss://")):
        return {}
    import redis

    client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    try:
        with client.pipeline(transaction=False) as pipe:
            for queue in Queue:
                pipe.llen(queue.value)
            return dict(zip([q.value for q in Queue], pipe.execute(), strict=True))
    finally:
        client.close()


# --- exposition ------------------------------------------------------------------------
def event_registry() -> CollectorRegistry:
    """Every process's events when multiprocess mode is on, else this process's."""
    if MULTIPROC_ENV not in os.environ:  # as prometheus_client decides
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return registry


def reset_multiprocess_dir() -> None:
    """Empty `PROMETHEUS_MULTIPROC_DIR` (samples of a previous run would be merged in)."""
    directory = os.environ.get(MULTIPROC_ENV)
    if not directory:
        return
    path = Path(directory)
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)


def mark_process_dead(pid: int) -> None:
    if MULTIPROC_ENV in os.environ:
        multiprocess.mark_process_dead(pid)


def serve(port: int, addr: str = "127.0.0.1") -> None:
    """Expose this process's (or, in multiprocess mode, every process's) events on
    an internal port: the worker and the MQTT bridge, which have no HTTP server."""
    start_http_server(port, addr=addr, registry=event_registry())
    log.info("metrics on http://%s:%s/metrics", addr, port)


def metrics_view(request):
    from django.conf import settings
    from django.http import HttpResponse, JsonResponse

    token = settings.METRICS_TOKEN
    if not token:
        return JsonResponse({"detail": "Not found.", "code": "not_found"}, status=404)
    parts = request.META.get("HTTP_AUTHORIZATION", "").split()
    given = parts[1] if len(parts) == 2 and parts[0].lower() == "bearer" else ""
    if not hmac.compare_digest(given.encode(), token.encode()):
        response = JsonResponse(
            {"detail": "Metrics token required.", "code": "not_authenticated"}, status=401
        )
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    registry = event_registry()
    body = generate_latest(registry)
    state = CollectorRegistry()
    state.register(StateCollector())
    body += generate_latest(state)
    return HttpResponse(body, content_type=CONTENT_TYPE_LATEST)
