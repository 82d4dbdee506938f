"""Trust X-Forwarded-* only from the reverse proxy (deploy/nginx.conf.template).

Behind nginx every request comes from the proxy's address, so the client's
address and scheme travel in X-Forwarded-For / X-Forwarded-Proto. Anyone can
send those headers, though: honoured from a direct client they would let it
pose as another address (and dodge per-client throttles) or as HTTPS. This
WSGI wrapper runs before Django, for the browser and the device stacks alike:
from an address in TRUSTED_PROXIES it takes the client address and scheme from
the headers; from anyone else it drops them.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

FORWARDED = (
    "HTTP_X_FORWARDED_FOR",
    "HTTP_X_FORWARDED_PROTO",
    "HTTP_X_FORWARDED_HOST",
    "HTTP_X_FORWARDED_PORT",
    "HTTP_FORWARDED",
)


def parse_networks(values: Iterable[str]) -> list:
    """CIDRs or single addresses; raises ValueError on a typo (settings fail loudly)."""
    return [ipaddress.ip_network(value.strip(), strict=False) for value in values if value.strip()]


class TrustedProxyHeaders:
    def __init__(self, app, trusted: Iterable[str]):
        self.app, self.trusted = app, parse_networks(trusted)

    def _from_proxy(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self.trusted)

    def __call__(self, environ, start_response):
        if self.trusted and self._from_proxy(environ.get("REMOTE_ADDR", "")):
            # nginx replaces X-Forwarded-For with the one address it saw; take
            # the last entry in case another hop appended to it.
            client = environ.get("HTTP_X_FORWARDED_FOR", "").split(",")[-1].strip()
            if client:
                environ["REMOTE_ADDR"] = client
            environ["HTTP_X_FORWARDED_FOR"] = client
            proto = environ.get("HTTP_X_FORWARDED_PROTO", "").strip().lower()
            if proto in ("http", "https"):
                environ["wsgi.url_scheme"] = proto
        else:
            for name in FORWARDED:
                environ.pop(name, None)
        return self.app(environ, start_response)
