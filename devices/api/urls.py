from rest_framework.routers import DefaultRouter

from devices.api import views

router = DefaultRouter(trailing_slash=True)
router.include_root_view = False
router.register("devices", views.DeviceViewSet, basename="device")
router.register("groups", views.DeviceGroupViewSet, basename="devicegroup")
router.register("query-groups", views.QueryGroupViewSet, basename="querygroup")
router.register("enrollment-tokens", views.EnrollmentTokenViewSet, basename="enrollmenttoken")
router.register("alerts", views.AlertViewSet, basename="alert")
router.register("hardware-profiles", views.HardwareProfileViewSet, basename="hardwareprofile")

urlpatterns = router.urls  # device routes: fleet.device_api.urls
