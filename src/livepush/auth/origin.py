"""Origin check against cross-site WebSocket hijacking.

Browsers always send `Origin` on WebSocket handshakes and cross-origin requests, so a request
without one is not a browser attack and is allowed. A request with one must come from the
server's own host (taken from `Forwarded` / `X-Forwarded-Host` only when proxies are trusted) or
from an explicitly allowed origin. A refusal names every value seen and the setting to change,
because an opaque "invalid origin" is the support problem n8n users hit most.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

_DEFAULT_PORTS = {"http": "80", "https": "443", "ws": "80", "wss": "443"}


@dataclass(frozen=True, slots=True)
class OriginDecision:
    """The outcome of an origin check; `message` explains a refusal."""

    allowed: bool
    message: str = ""


def normalize_host(host: str, scheme: str = "http") -> str:
    """Lower-case a host[:port], strip IPv6 brackets' default port and the scheme's default port."""
    host = host.strip().lower()
    if host.startswith("["):
        bracket_end = host.find("]")
        name, rest = host[: bracket_end + 1], host[bracket_end + 1 :]
        port = rest[1:] if rest.startswith(":") else ""
    else:
        name, _, port = host.partition(":")
    if port and port == _DEFAULT_PORTS.get(scheme, ""):
        port = ""
    return f"{name}:{port}" if port else name


def request_host(headers: Mapping[str, str], trust_proxy: bool) -> tuple[str, str, str]:
    """The host the client addressed, its scheme, and which header it came from."""
    if trust_proxy:
        forwarded = headers.get("Forwarded")
        if forwarded:
            first = forwarded.split(",")[0]
            params = {}
            for part in first.split(";"):
                key, _, value = part.strip().partition("=")
                params[key.lower()] = value.strip('"')
            if "host" in params:
                return params["host"], params.get("proto", "http").lower(), "Forwarded"
        forwarded_host = headers.get("X-Forwarded-Host")
        if forwarded_host:
            proto = headers.get("X-Forwarded-Proto", "http").split(",")[0].strip().lower()
            return forwarded_host.split(",")[0].strip(), proto, "X-Forwarded-Host"
    return headers.get("Host", ""), "http", "Host"


def check_origin(
    headers: Mapping[str, str], allowed_origins: Sequence[str], trust_proxy: bool
) -> OriginDecision:
    """Decide whether a request's `Origin` may connect."""
    origin = headers.get("Origin")
    if origin is None:
        return OriginDecision(True)
    if "*" in allowed_origins or origin.rstrip("/") in allowed_origins:
        return OriginDecision(True)
    host, scheme, source = request_host(headers, trust_proxy)
    try:
        parts = urlsplit(origin)
    except ValueError:
        return OriginDecision(False, f"Origin {origin[:200]!r} is not a valid origin.")
    same_host = parts.scheme and parts.netloc and host
    if same_host and normalize_host(parts.netloc, parts.scheme) == normalize_host(host, scheme):
        return OriginDecision(True)
    hint = (
        f"Origin {origin!r} does not match the host {host!r} (from the {source} header)"
        + ("" if trust_proxy else "; proxy headers are ignored")
        + f". Allowed origins: {list(allowed_origins) or 'none besides the host itself'}."
        f" If this origin is legitimate, add it to LIVEPUSH_ALLOWED_ORIGINS"
        f" (e.g. LIVEPUSH_ALLOWED_ORIGINS={origin})"
        + (
            ""
            if trust_proxy
            else ", or set LIVEPUSH_TRUST_PROXY=true behind a reverse proxy that"
            " sets Forwarded or X-Forwarded-Host"
        )
        + "."
    )
    return OriginDecision(False, hint)
