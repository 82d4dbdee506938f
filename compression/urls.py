from django.urls import path

from compression import views

app_name = "compression"

urlpatterns = [
    path("", views.model_list, name="model-list"),
    path("upload/", views.model_upload, name="model-upload"),
    path("widget/", views.widget, name="widget"),
    path("<int:pk>/", views.model_detail, name="model-detail"),
    path("<int:pk>/versions/", views.version_upload, name="version-upload"),
    path("<int:pk>/datasets/", views.dataset_upload, name="dataset-upload"),
    path("<int:pk>/versions/<int:number>/download/", views.version_download,
         name="version-download"),
    path("datasets/<int:pk>/download/", views.dataset_download, name="dataset-download"),
]
