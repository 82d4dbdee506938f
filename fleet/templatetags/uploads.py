"""`{% upload_limit %}`: an upload form's size limit, progress bar and error line.

The form carries `data-upload`; `fleet/upload.js` sends it with upload progress
and checks the limit before a byte is sent (the server's 413 stays the rule:
`fleet.middleware.BodySizeLimitMiddleware`).
"""

from __future__ import annotations

from django import template
from django.conf import settings

from fleet.templatetags.humanize_bytes import human_bytes

register = template.Library()


@register.inclusion_tag("partials/upload_limit.html")
def upload_limit() -> dict:
    limit = settings.EDGEFLEET_MAX_UPLOAD_BYTES
    return {"max_bytes": limit, "max_size": human_bytes(limit)}
