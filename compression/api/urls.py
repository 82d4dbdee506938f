from django.urls import path
from rest_framework.routers import DefaultRouter

from compression.api import push
from compression.api.views import jobs, models

router = DefaultRouter(trailing_slash=True)
router.register("models", models.MLModelViewSet, basename="mlmodel")
router.register("versions", models.ModelVersionViewSet, basename="modelversion")
router.register("datasets", models.DatasetViewSet, basename="dataset")
router.register("jobs", jobs.CompressionJobViewSet, basename="compressionjob")

urlpatterns = [
    path("push/", push.PushView.as_view(), name="push"),
    path(
        "models/<int:model_pk>/versions/",
        models.ModelVersionListView.as_view(),
        name="model-versions",
    ),
    path(
        "models/<int:model_pk>/versions/<int:number>/",
        models.ModelVersionDetailView.as_view(),
        name="model-version-detail",
    ),
    path(
        "models/<int:model_pk>/versions/<int:number>/download/",
        models.ModelVersionDownloadView.as_view(),
        name="model-version-download",
    ),
    *router.urls,
]
