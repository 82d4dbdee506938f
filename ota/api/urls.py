from rest_framework.routers import DefaultRouter

from ota.api import views

router = DefaultRouter(trailing_slash=True)
router.include_root_view = False
router.register("releases", views.ReleaseViewSet, basename="release")
router.register("deployments", views.DeploymentViewSet, basename="deployment")
router.register("device-updates", views.DeviceUpdateViewSet, basename="deviceupdate")
router.register("benchmarks", views.BenchmarkViewSet, basename="benchmark")

urlpatterns = router.urls  # device routes: fleet.device_api.urls
