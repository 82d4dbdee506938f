from django.urls import path

from compression.views import jobs, models

app_name = "compression"

urlpatterns = [
    path("", models.model_list, name="model-list"),
    path("upload/", models.model_upload, name="model-upload"),
    path("widget/", models.widget, name="widget"),
    path("<int:pk>/", models.model_detail, name="model-detail"),
    path("<int:pk>/versions/", models.version_upload, name="version-upload"),
    path("<int:pk>/datasets/", models.dataset_upload, name="dataset-upload"),
    path("<int:pk>/datasets/example.npz", models.dataset_example, name="dataset-example"),
    path(
        "<int:pk>/versions/<int:number>/download/", models.version_download, name="version-download"
    ),
    path("datasets/<int:pk>/download/", models.dataset_download, name="dataset-download"),
    path("jobs/", jobs.job_list, name="job-list"),
    path("versions/<int:version_pk>/compress/", jobs.job_create, name="job-create"),
    path("jobs/<int:pk>/", jobs.job_detail, name="job-detail"),
    path("jobs/<int:pk>/live/", jobs.job_live, name="job-live"),
    path("jobs/<int:pk>/chart.json", jobs.job_chart, name="job-chart"),
    path("jobs/<int:pk>/cancel/", jobs.job_cancel, name="job-cancel"),
]
