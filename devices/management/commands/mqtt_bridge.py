"""`manage.py mqtt_bridge`: MQTT telemetry and logs into the same services as HTTP."""

from __future__ import annotations

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from devices.mqtt import Bridge
from fleet import prometheus


class Command(BaseCommand):
    help = "Subscribe to edgefleet/+/telemetry and edgefleet/+/logs on MQTT_URL and ingest."

    def add_arguments(self, parser):
        parser.add_argument("--url", default=None, help="Broker URL (default: MQTT_URL)")
        parser.add_argument("--client-id", default=None)
        parser.add_argument(
            "--no-acks",
            action="store_true",
            help="Do not publish answers on edgefleet/<uid>/ack/<kind>",
        )

    def handle(self, *args, **options):
        url = options["url"] or settings.MQTT_URL
        if not url:
            raise CommandError("MQTT_URL is not set: the MQTT bridge is off.")
        bridge = Bridge(
            url,
            client_id=options["client_id"] or settings.MQTT_CLIENT_ID,
            shared_group=settings.MQTT_SHARED_GROUP,
            acks=not options["no_acks"],
        )
        self.stdout.write(f"mqtt bridge → {bridge.host}:{bridge.port}")
        if settings.METRICS_PORT:
            prometheus.serve(settings.METRICS_PORT, settings.METRICS_ADDR)
        try:
            bridge.run()
        except KeyboardInterrupt:
            bridge.stop()
