from django.urls import path
from rest_framework.routers import DefaultRouter

from ota.api import checkin, device, views

router = DefaultRouter(trailing_slash=True)
router.include_root_view = False
router.register("releases", views.ReleaseViewSet, basename="release")
router.register("deployments", views.DeploymentViewSet, basename="deployment")
router.register("device-updates", views.DeviceUpdateViewSet, basename="deviceupdate")

urlpatterns = [
    path("device/update", checkin.update, name="device-update"),
    path("device/update/status", device.StatusView.as_view(), name="device-update-status"),
    path("device/artifacts/<str:sha256>", device.ArtifactView.as_view(),
         name="device-artifact"),
    *router.urls,
]
