from django.urls import path

from devices import views

app_name = "devices"

urlpatterns = [
    path("", views.index, name="index"),
    path("widget/", views.widget, name="widget"),
    path("widget/charts/", views.charts_widget, name="charts-widget"),
    path("list/", views.device_list, name="device-list"),
    path("enrollment/", views.enrollment, name="enrollment"),
    path("enrollment/<int:pk>/revoke/", views.enrollment_revoke, name="enrollment-revoke"),
    path("groups/new/", views.group_create, name="group-create"),
    path("d/<str:uid>/", views.device_detail, name="device-detail"),
    path("d/<str:uid>/live/", views.device_live, name="device-live"),
    path("d/<str:uid>/chart.json", views.device_chart, name="device-chart"),
    path("d/<str:uid>/logs/", views.device_logs, name="device-logs"),
    path("d/<str:uid>/edit/", views.device_edit, name="device-edit"),
    path("d/<str:uid>/revoke/", views.device_revoke, name="device-revoke"),
]
