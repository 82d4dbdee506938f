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

A service that checks independent inputs runs those checks with `gather`, so a
form shows every mistake at once: the first refusal is raised and carries the
others (`every()`); the API answers the first, plus `errors` listing them all.
"""

from __future__ import annotations

from collections.abc import Callable


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
        self.others: list[Refusal] = []

    def every(self) -> list[Refusal]:
        """This refusal and those `gather` found with it."""
        return [self, *self.others]

    def body(self) -> dict:
        body = {"detail": str(self.message), "code": self.code, **self.extra}
        if self.field:
            body["field"] = self.field
        if self.others:
            body["errors"] = [
                {
                    "detail": str(r.message),
                    "code": r.code,
                    **({"field": r.field} if r.field else {}),
                }
                for r in self.every()
            ]
        return body

    def headers(self) -> dict[str, str]:
        return {} if self.retry_after is None else {"Retry-After": str(self.retry_after)}


def gather(*checks: Callable[[], object]) -> list:
    """Run independent checks; their results in order, or raise the first refusal
    with the others attached (`Refusal.every`)."""
    results, refused = [], []
    for check in checks:
        try:
            results.append(check())
        except Refusal as exc:
            refused.append(exc)
            results.append(None)
    if refused:
        first = refused[0]
        first.others = [*first.others, *(o for r in refused[1:] for o in r.every())]
        raise first
    return results


def add_to_form(form, refusal: Refusal, fields: dict[str, str] | None = None) -> None:
    """A page shows a refusal and those gathered with it in its form, each next to
    its field when the form has one (`fields` maps a service's field name to the
    form's), else at the top."""
    for each in refusal.every():
        name = (fields or {}).get(each.field or "", each.field) or ""
        if name not in form.fields:  # "gates[0].min_soak_s": the form's min_soak_s
            name = name.rsplit(".", 1)[-1]
        form.add_error(name if name in form.fields else None, each.message)
