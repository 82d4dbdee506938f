"""The device API: every endpoint an edge device calls, under `/api/v1/device/`.

One module per endpoint family, all built from `fleet.device_api.toolkit`:

- `enroll`    POST enroll (one-time enrollment token → device token), PUT inventory
- `checkin`   GET update (the signed manifest assigned to this device; the hottest)
- `updates`   POST update/status, GET artifacts/<sha256>
- `ingest`    POST telemetry, POST logs (idempotent batches)
- `urls`      the routes (also the device handler's whole URLconf, see fleet.wsgi)
- `schema`    their OpenAPI description

The rules every device endpoint shares — bearer device token, per-device rate
limit, body size limit, `{"detail", "code"}` refusals, 503 + Retry-After when a
backing service fails — live in `toolkit`; the business rules in
`devices.services` / `ota.services`. See docs/architecture.md.
"""
