"""The one refusal type: a request the server declines on purpose, with its reason.

Services raise `Refusal` (or a subclass named after the app, kept for readable
call sites: `UploadRejected`, `JobRejected`, `DeviceError`, `OtaError`); the
answer is built in exactly one place per stack:

- the operator API: `fleet.api.exception_handler` (DRF's EXCEPTION_HANDLER), so
  an API view lets a refusal propagate;
- the device API: `fleet.device_api.toolkit`.

Pages catch it and show `message` next to `field` in the form.

The body is `{"detail": message, "code": code}` plus `field` when the refusal
is about one input; `retry_after` (seconds) becomes a `Retry-After` header.
"""

from __future__ import annotations


class Refusal(Exception):
    """`code` for machines, `message` for people, the HTTP `status`, the offending
    input `field` when there is one, `retry_after` seconds when trying again
    later can succeed (429, 503), and `extra` keys for the body (a state)."""

    def __init__(
        self,
        code: str,
        message: str,
        status: int = 400,
        *,
        field: str | None = None,
        retry_after: int | None = None,
        extra: dict | None = None,
    ):
        super().__init__(message)
        self.code, self.message, self.status = code, message, status
        self.field, self.retry_after, self.extra = field, retry_after, extra or {}

    def body(self) -> dict:
        body = {"detail": str(self.message), "code": self.code, **self.extra}
        if self.field:
            body["field"] = self.field
        return body

    def headers(self) -> dict[str, str]:
        return {} if self.retry_after is None else {"Retry-After": str(self.retry_after)}
