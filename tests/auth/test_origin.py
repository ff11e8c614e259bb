"""Origin check against cross-site WebSocket hijacking, with refusals that explain themselves."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from livepush.auth.origin import check_origin, normalize_host, request_host


def _headers(**values: str) -> CIMultiDict[str]:
    names = {"x_forwarded_host": "X-Forwarded-Host", "x_forwarded_proto": "X-Forwarded-Proto"}
    return CIMultiDict({names.get(k, k.capitalize()): v for k, v in values.items()})


def test_request_without_origin_allowed() -> None:
    assert check_origin(_headers(host="push.example.com"), [], trust_proxy=False).allowed


def test_request_without_origin_or_host_allowed() -> None:
    assert check_origin(CIMultiDict(), [], trust_proxy=False).allowed


@pytest.mark.parametrize(
    ("origin", "host"),
    [
        ("http://push.example.com", "push.example.com"),
        ("https://push.example.com", "push.example.com"),
        ("http://push.example.com:5680", "push.example.com:5680"),
        ("http://push.example.com", "push.example.com:80"),
        ("http://push.example.com:80", "push.example.com"),
        ("https://push.example.com:443", "push.example.com"),
        ("http://PUSH.Example.COM", "push.example.com"),
        ("http://[::1]:5680", "[::1]:5680"),
        ("http://[::1]", "[::1]"),
        ("http://[::1]", "[::1]:80"),
        ("http://127.0.0.1:5680", "127.0.0.1:5680"),
    ],
)
def test_same_host_origin_allowed(origin: str, host: str) -> None:
    assert check_origin(_headers(origin=origin, host=host), [], trust_proxy=False).allowed


@pytest.mark.parametrize(
    ("origin", "host"),
    [
        ("https://evil.example.com", "push.example.com"),
        ("http://push.example.com:8080", "push.example.com"),
        ("http://push.example.com", "push.example.com:8080"),
        ("http://[::1]:8080", "[::1]:5680"),
        ("http://[::2]", "[::1]"),
        ("http://push.example.com.evil.com", "push.example.com"),
        ("null", "push.example.com"),
        ("push.example.com", "push.example.com"),
    ],
)
def test_foreign_origin_refused(origin: str, host: str) -> None:
    assert not check_origin(_headers(origin=origin, host=host), [], trust_proxy=False).allowed


def test_origin_refused_when_request_has_no_host() -> None:
    decision = check_origin(_headers(origin="http://push.example.com"), [], trust_proxy=False)
    assert not decision.allowed


def test_refusal_names_origin_host_header_and_setting() -> None:
    decision = check_origin(
        _headers(origin="https://evil.example.com", host="push.example.com:5680"),
        [],
        trust_proxy=False,
    )
    assert not decision.allowed
    assert "https://evil.example.com" in decision.message
    assert "push.example.com:5680" in decision.message
    assert "Host header" in decision.message
    assert "LIVEPUSH_ALLOWED_ORIGINS" in decision.message
    assert "LIVEPUSH_TRUST_PROXY" in decision.message


def test_refusal_lists_configured_allowed_origins() -> None:
    decision = check_origin(
        _headers(origin="https://evil.example.com", host="push.example.com"),
        ["https://app.example.com"],
        trust_proxy=False,
    )
    assert "https://app.example.com" in decision.message


def test_refusal_behind_trusted_proxy_names_the_forwarded_header() -> None:
    decision = check_origin(
        _headers(
            origin="https://evil.example.com",
            host="internal:5680",
            x_forwarded_host="push.example.com",
        ),
        [],
        trust_proxy=True,
    )
    assert not decision.allowed
    assert "push.example.com" in decision.message
    assert "X-Forwarded-Host header" in decision.message
    assert "LIVEPUSH_ALLOWED_ORIGINS" in decision.message
    assert "LIVEPUSH_TRUST_PROXY" not in decision.message


def test_x_forwarded_host_ignored_unless_proxy_trusted() -> None:
    headers = _headers(
        origin="https://push.example.com", host="internal:5680", x_forwarded_host="push.example.com"
    )
    assert not check_origin(headers, [], trust_proxy=False).allowed
    assert check_origin(headers, [], trust_proxy=True).allowed


def test_forwarded_header_ignored_unless_proxy_trusted() -> None:
    headers = _headers(
        origin="https://push.example.com",
        host="internal:5680",
        forwarded='for=10.0.0.1;host="push.example.com";proto=https',
    )
    assert not check_origin(headers, [], trust_proxy=False).allowed
    assert check_origin(headers, [], trust_proxy=True).allowed


def test_forwarded_proto_normalises_default_port_of_forwarded_host() -> None:
    headers = _headers(
        origin="https://push.example.com",
        host="internal:5680",
        forwarded="for=10.0.0.1;host=push.example.com:443;proto=https",
    )
    assert check_origin(headers, [], trust_proxy=True).allowed


def test_x_forwarded_proto_normalises_default_port() -> None:
    headers = _headers(
        origin="https://push.example.com",
        host="internal:5680",
        x_forwarded_host="push.example.com:443",
        x_forwarded_proto="https",
    )
    assert check_origin(headers, [], trust_proxy=True).allowed


def test_first_forwarded_element_wins() -> None:
    headers = _headers(
        origin="https://push.example.com",
        host="internal",
        forwarded="host=push.example.com;proto=https, host=evil.example.com",
    )
    assert check_origin(headers, [], trust_proxy=True).allowed
    assert request_host(headers, trust_proxy=True) == ("push.example.com", "https", "Forwarded")


def test_forwarded_takes_precedence_over_x_forwarded_host() -> None:
    headers = _headers(
        host="internal", forwarded="host=a.example.com", x_forwarded_host="b.example.com"
    )
    assert request_host(headers, trust_proxy=True) == ("a.example.com", "http", "Forwarded")


def test_forwarded_without_host_falls_back_to_x_forwarded_host() -> None:
    headers = _headers(
        host="internal", forwarded="for=1.2.3.4", x_forwarded_host="b.example.com, c"
    )
    assert request_host(headers, trust_proxy=True) == ("b.example.com", "http", "X-Forwarded-Host")


def test_trusted_proxy_without_forwarding_headers_uses_host() -> None:
    headers = _headers(origin="http://push.example.com", host="push.example.com")
    assert check_origin(headers, [], trust_proxy=True).allowed
    assert request_host(headers, trust_proxy=True) == ("push.example.com", "http", "Host")


def test_listed_allowed_origin_accepted() -> None:
    headers = _headers(origin="https://app.example.com", host="push.example.com")
    allowed = ["https://other.example.com", "https://app.example.com"]
    assert check_origin(headers, allowed, trust_proxy=False).allowed


def test_allowed_origin_matches_with_trailing_slash_on_the_request() -> None:
    headers = _headers(origin="https://app.example.com/", host="push.example.com")
    assert check_origin(headers, ["https://app.example.com"], trust_proxy=False).allowed


def test_allowed_origin_must_match_scheme_and_port() -> None:
    allowed = ["https://app.example.com"]
    for origin in ("http://app.example.com", "https://app.example.com:8443"):
        headers = _headers(origin=origin, host="push.example.com")
        assert not check_origin(headers, allowed, trust_proxy=False).allowed


def test_star_allows_any_origin() -> None:
    headers = _headers(origin="https://anything.example.org", host="push.example.com")
    assert check_origin(headers, ["*"], trust_proxy=False).allowed


@pytest.mark.parametrize(
    ("host", "scheme", "expected"),
    [
        ("Example.COM", "http", "example.com"),
        ("example.com:80", "http", "example.com"),
        ("example.com:443", "https", "example.com"),
        ("example.com:443", "http", "example.com:443"),
        ("example.com:80", "ws", "example.com"),
        ("example.com:443", "wss", "example.com"),
        ("example.com:8080", "http", "example.com:8080"),
        ("[::1]:80", "http", "[::1]"),
        ("[::1]:443", "https", "[::1]"),
        ("[::1]:8080", "http", "[::1]:8080"),
        ("[FE80::1]", "http", "[fe80::1]"),
        (" example.com ", "http", "example.com"),
    ],
)
def test_normalize_host_strips_default_ports_and_case(
    host: str, scheme: str, expected: str
) -> None:
    assert normalize_host(host, scheme) == expected


def test_malformed_ipv6_origin_refused_without_raising() -> None:
    headers = _headers(origin="http://[::1", host="push.example.com")
    decision = check_origin(headers, [], trust_proxy=False)
    assert not decision.allowed
    assert "http://[::1" in decision.message
