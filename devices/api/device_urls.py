"""Device-facing routes of the devices app, under `/api/v1/device/` (fleet.device_urls)."""

from django.urls import path

from devices.api import batch, device

urlpatterns = [
    path("telemetry", batch.telemetry, name="device-telemetry"),  # the most frequent first
    path("logs", batch.logs, name="device-logs"),
    path("enroll", device.EnrollView.as_view(), name="device-enroll"),
    path("inventory", device.InventoryView.as_view(), name="device-inventory"),
]
