from django.urls import path

from ota import views

app_name = "ota"

urlpatterns = [
    path("", views.index, name="index"),
    path("widget/", views.widget, name="widget"),
    path("releases/new/", views.release_create, name="release-create"),
    path("releases/<int:pk>/", views.release_detail, name="release-detail"),
    path("new/", views.deployment_create, name="deployment-create"),
    path("preview/", views.deployment_preview, name="deployment-preview"),
    path("benchmarks/job/<int:job_id>/", views.job_benchmarks, name="job-benchmarks"),
    path("<int:pk>/", views.deployment_detail, name="deployment-detail"),
    path("<int:pk>/live/", views.deployment_live, name="deployment-live"),
    path("<int:pk>/chart.json", views.deployment_chart, name="deployment-chart"),
    path("<int:pk>/<slug:name>/", views.deployment_action, name="deployment-action"),
    path("device/<int:device_pk>/updates/", views.device_updates, name="device-updates"),
]
