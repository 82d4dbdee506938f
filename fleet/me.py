"""GET /api/v1/me/: who this credential is (what `edgefleet login` checks a token with).

Its own module: `fleet.api` is imported by DRF's settings and cannot import views.
"""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework.response import Response
from rest_framework.views import APIView

from fleet.roles import role_of


class MeView(APIView):
    @extend_schema(
        responses={
            200: {
                "type": "object",
                "properties": {
                    "username": {"type": "string"},
                    "role": {"type": "string", "nullable": True},
                },
            }
        }
    )
    def get(self, request):
        role = role_of(request.user)
        return Response(
            {"username": request.user.get_username(), "role": role.value if role else None}
        )
