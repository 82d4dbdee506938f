"""X-Forwarded-* are honoured from the reverse proxy only (fleet/proxy.py)."""

from __future__ import annotations

import pytest

from fleet.proxy import TrustedProxyHeaders, parse_networks


def seen(trusted, **environ):
    captured = {}

    def app(env, start_response):
        captured.update(env)
        return [b""]

    TrustedProxyHeaders(app, trusted)({"wsgi.url_scheme": "http", **environ}, None)
    return captured


def test_headers_from_the_proxy_set_client_address_and_scheme():
    env = seen(
        ["10.0.0.0/24"],
        REMOTE_ADDR="10.0.0.5",
        HTTP_X_FORWARDED_FOR="203.0.113.7",
        HTTP_X_FORWARDED_PROTO="https",
    )
    assert env["REMOTE_ADDR"] == "203.0.113.7" and env["wsgi.url_scheme"] == "https"
    # a client-supplied list cannot choose its address: the proxy's hop is last
    env = seen(["10.0.0.5"], REMOTE_ADDR="10.0.0.5", HTTP_X_FORWARDED_FOR="1.2.3.4, 198.51.100.9")
    assert env["REMOTE_ADDR"] == "198.51.100.9" and env["HTTP_X_FORWARDED_FOR"] == "198.51.100.9"


@pytest.mark.parametrize("trusted", [[], ["10.0.0.0/24"]])
def test_headers_from_anyone_else_are_dropped(trusted):
    env = seen(
        trusted,
        REMOTE_ADDR="192.0.2.1",
        HTTP_X_FORWARDED_FOR="127.0.0.1",
        HTTP_X_FORWARDED_PROTO="https",
        HTTP_X_FORWARDED_HOST="evil.example",
        HTTP_FORWARDED="for=127.0.0.1",
    )
    assert env["REMOTE_ADDR"] == "192.0.2.1" and env["wsgi.url_scheme"] == "http"
    assert not {k for k in env if "FORWARDED" in k}


def test_bad_proto_and_bad_peer_address_are_ignored():
    env = seen(["10.0.0.5"], REMOTE_ADDR="10.0.0.5", HTTP_X_FORWARDED_PROTO="gopher")
    assert env["wsgi.url_scheme"] == "http" and env["REMOTE_ADDR"] == "10.0.0.5"
    assert "HTTP_X_FORWARDED_FOR" not in seen(
        ["10.0.0.5"], REMOTE_ADDR="unix-socket", HTTP_X_FORWARDED_FOR="1.2.3.4"
    )


def test_a_typo_in_trusted_proxies_fails_loudly():
    with pytest.raises(ValueError):
        parse_networks(["10.0.0.0/33"])


def test_the_wsgi_application_drops_spoofed_headers():
    from fleet.wsgi import application

    assert isinstance(application, TrustedProxyHeaders)
