"""Root URLs. Apps are included by dotted string: the project imports no app."""

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from fleet import me, prometheus, views

urlpatterns = [
    path("", include("fleet.device_api.urls")),  # the device API: most requests by far
    path("", views.home, name="home"),
    path("healthz", views.healthz, name="healthz"),
    path("metrics", prometheus.metrics_view, name="metrics"),
    path("accounts/login/", views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("i18n/", include("django.conf.urls.i18n")),
    path("admin/", admin.site.urls),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("api/v1/me/", me.MeView.as_view(), name="api-me"),
    path("api/v1/", include("devices.api.urls")),
    path("api/v1/", include("ota.api.urls")),
    path("api/v1/", include("compression.api.urls")),
    path("models/", include("compression.urls")),
    path("devices/", include("devices.urls")),
    path("deployments/", include("ota.urls")),
]
