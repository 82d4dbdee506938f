from django.urls import path

from compression import views, views_jobs

app_name = "compression"

urlpatterns = [
    path("", views.model_list, name="model-list"),
    path("upload/", views.model_upload, name="model-upload"),
    path("widget/", views.widget, name="widget"),
    path("<int:pk>/", views.model_detail, name="model-detail"),
    path("<int:pk>/versions/", views.version_upload, name="version-upload"),
    path("<int:pk>/datasets/", views.dataset_upload, name="dataset-upload"),
    path("<int:pk>/datasets/example.npz", views.dataset_example, name="dataset-example"),
    path("<int:pk>/versions/<int:number>/download/", views.version_download,
         name="version-download"),
    path("datasets/<int:pk>/download/", views.dataset_download, name="dataset-download"),
    path("jobs/", views_jobs.job_list, name="job-list"),
    path("versions/<int:version_pk>/compress/", views_jobs.job_create, name="job-create"),
    path("jobs/<int:pk>/", views_jobs.job_detail, name="job-detail"),
    path("jobs/<int:pk>/status/", views_jobs.job_status, name="job-status"),
    path("jobs/<int:pk>/chart.json", views_jobs.job_chart, name="job-chart"),
    path("jobs/<int:pk>/cancel/", views_jobs.job_cancel, name="job-cancel"),
]
