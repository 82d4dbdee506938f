from django.urls import path
from rest_framework.routers import DefaultRouter

from devices.api import batch, device, views

router = DefaultRouter(trailing_slash=True)
router.include_root_view = False
router.register("devices", views.DeviceViewSet, basename="device")
router.register("groups", views.DeviceGroupViewSet, basename="devicegroup")
router.register("query-groups", views.QueryGroupViewSet, basename="querygroup")
router.register("enrollment-tokens", views.EnrollmentTokenViewSet, basename="enrollmenttoken")
router.register("alerts", views.AlertViewSet, basename="alert")

urlpatterns = [
    path("device/enroll", device.EnrollView.as_view(), name="device-enroll"),
    path("device/inventory", device.InventoryView.as_view(), name="device-inventory"),
    path("device/telemetry", batch.telemetry, name="device-telemetry"),
    path("device/logs", batch.logs, name="device-logs"),
    *router.urls,
]
