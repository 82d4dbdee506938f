"""WSGI entry point (gunicorn, runserver).

Device API requests take their lean path inside Django
(`fleet.device_api.routing.DeviceAPIMiddleware`); everything here sits behind
`fleet.proxy.TrustedProxyHeaders` (X-Forwarded-* from the reverse proxy only).
"""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fleet.settings")


def _application():
    default = get_wsgi_application()  # sets Django up
    from django.conf import settings

    from fleet.proxy import TrustedProxyHeaders

    return TrustedProxyHeaders(default, settings.TRUSTED_PROXIES)


application = _application()
