"""Device-facing routes of the OTA app, under `/api/v1/device/` (fleet.device_urls)."""

from django.urls import path

from ota.api import checkin, device

urlpatterns = [
    path("update", checkin.update, name="device-update"),
    path("update/status", device.StatusView.as_view(), name="device-update-status"),
    path("artifacts/<str:sha256>", device.ArtifactView.as_view(), name="device-artifact"),
]
