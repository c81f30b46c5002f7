"""The server warns once at start when it serves plain HTTP beyond this machine."""

from __future__ import annotations

import logging

import pytest

from jobbalancer import server

ALL = "0.0.0.0"  # noqa: S104 - an address to judge, nothing binds it


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.5", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        (ALL, False),
        ("::", False),
        ("10.0.0.4", False),
        ("fe80::1%eth0", False),
        ("not-an-address", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert server.is_loopback(host) is loopback


def test_plain_http_beyond_loopback_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="jobbalancer.server"):
        server.warn_without_tls(ALL, 8080)
        server.warn_without_tls("::", 8081)

    assert [r.getMessage() for r in caplog.records] == [
        "serving on 0.0.0.0:8080 without TLS: API keys and passwords cross the network in "
        "clear; set server.tls_cert and server.tls_key, or put a TLS proxy in front",
        "serving on [::]:8081 without TLS: API keys and passwords cross the network in "
        "clear; set server.tls_cert and server.tls_key, or put a TLS proxy in front",
    ]


def test_loopback_is_not_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="jobbalancer.server"):
        server.warn_without_tls("127.0.0.1", 8080)
        server.warn_without_tls("::1", 8080)

    assert caplog.records == []
