from django.urls import path
from rest_framework.routers import DefaultRouter

from compression.api import jobs, push, views

router = DefaultRouter(trailing_slash=True)
router.register("models", views.MLModelViewSet, basename="mlmodel")
router.register("versions", views.ModelVersionViewSet, basename="modelversion")
router.register("datasets", views.DatasetViewSet, basename="dataset")
router.register("jobs", jobs.CompressionJobViewSet, basename="compressionjob")
router.register("hardware-profiles", jobs.HardwareProfileViewSet, basename="hardwareprofile")

urlpatterns = [
    path("push/", push.PushView.as_view(), name="push"),
    path("models/<int:model_pk>/versions/", views.ModelVersionListView.as_view(),
         name="model-versions"),
    path("models/<int:model_pk>/versions/<int:number>/", views.ModelVersionDetailView.as_view(),
         name="model-version-detail"),
    path("models/<int:model_pk>/versions/<int:number>/download/",
         views.ModelVersionDownloadView.as_view(), name="model-version-download"),
    *router.urls,
]
