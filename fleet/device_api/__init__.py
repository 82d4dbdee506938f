"""The device API: every endpoint an edge device calls, under `/api/v1/device/`.

- `toolkit`   `@endpoint(...)`: what every device endpoint shares (bearer
              device token, rate limits, body size and JSON limits, refusals,
              503 + Retry-After, its OpenAPI `Doc`); start here to add one
- `routing`   the first middleware: device requests skip the browser stack
- `urls`      the routes (one line per endpoint)
- `schema`    the OpenAPI operations, generated from each endpoint's `Doc`
- `enroll`    POST enroll (one-time enrollment token → device token), PUT inventory
- `checkin`   GET update (the signed manifest assigned to this device; the hottest)
- `updates`   POST update/status, GET artifacts/<sha256>
- `ingest`    POST telemetry, POST logs (idempotent batches)

It belongs to the project package because it composes the apps: business rules
live in `devices.services`, `ota.services` and `ota.manifests`; refusals are
`fleet.refusal.Refusal`. See docs/architecture.md.
"""
