from django.urls import path

from ota import views

app_name = "ota"

urlpatterns = [
    path("", views.index, name="index"),
    path("widget/", views.widget, name="widget"),
]
