"""`POST /api/v1/device/enroll` (no device token yet: an enrollment token in the
body, limited per client address) and `PUT /api/v1/device/inventory`.

Identity comes only from the bearer credential (`request.device`), never from
the body or the path.
"""

from __future__ import annotations

from devices import services
from fleet.device_api.schema import ENROLL_DOC, INVENTORY_DOC
from fleet.device_api.toolkit import answer, endpoint
from ota import keys


@endpoint("POST", device=False, rate="enroll", body=True, doc=ENROLL_DOC)
def enroll(request):
    data = request.data if isinstance(request.data, dict) else {}
    device, token = services.enroll(data.get("token"), data.get("facts") or {})
    key = keys.active_key()
    return answer(
        {
            "device_id": device.uid,
            "token": token,
            "server_public_key": key.public_key_b64,
            "server_key_fingerprint": key.fingerprint,
        },
        status=201,
    )


@endpoint("PUT", body=True, doc=INVENTORY_DOC)
def inventory(request):
    data = {} if request.data is None else request.data
    device = services.update_inventory(request.device.device, data)
    return answer({"device_id": device.uid, "inventory": device.inventory})
