"""Reading an HTTP request the way every livepush endpoint does: its query parameters without
caching them on the request, its token (header, query parameter or cookie), and its origin.
Shared by the HTTP API (`http/`) and the transports (`transports/`).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl

from aiohttp import hdrs, web

from livepush.auth.origin import check_origin
from livepush.auth.tokens import Identity, TokenVerifier
from livepush.protocol.errors import ErrorCode, ProtocolError


@dataclass(frozen=True, slots=True)
class HandshakeSettings:
    """What the checks of a browser's request read."""

    allowed_origins: tuple[str, ...] = ()
    trust_proxy: bool = False
    auth_cookie: str = "n8n-auth"


def check_request_origin(request: web.Request, settings: HandshakeSettings) -> None:
    """Raise `origin_not_allowed` when a browser request comes from a foreign origin."""
    decision = check_origin(request.headers, settings.allowed_origins, settings.trust_proxy)
    if not decision.allowed:
        raise ProtocolError(ErrorCode.ORIGIN_NOT_ALLOWED, decision.message)


def client_address(request: web.Request, trust_proxy: bool) -> str:
    """The client's address: the peer's, or behind a trusted proxy the one that proxy put last
    in `Forwarded` (`for=`) or `X-Forwarded-For` (entries before it are the client's word)."""
    if trust_proxy:
        forwarded = request.headers.get("Forwarded")
        if forwarded:
            for part in forwarded.split(",")[-1].split(";"):
                key, _, value = part.strip().partition("=")
                if key.lower() == "for" and value:
                    return value.strip('"')
        chain = request.headers.get("X-Forwarded-For")
        if chain:
            last = chain.split(",")[-1].strip()
            if last:
                return last
    return request.remote or ""


def query_params(request: web.Request) -> dict[str, str]:
    """The query parameters, parsed into a plain dict that is dropped after the handshake.

    `request.query` (and `query_string`) would cache parsed copies on the request, which lives
    as long as the connection; with a token in the URL that is a few hundred bytes per
    connection. The raw request line is kept by aiohttp anyway."""
    return dict(parse_qsl(request.raw_path.partition("?")[2]))


def authenticate(
    request: web.Request,
    verifier: TokenVerifier,
    settings: HandshakeSettings,
    query: dict[str, str],
) -> Identity:
    """Verify the token from `Authorization: Bearer`, the `token` query parameter or the
    auth cookie, in that order."""
    token = None
    authorization = request.headers.get(hdrs.AUTHORIZATION, "")
    if authorization[:7].lower() == "bearer ":
        token = authorization[7:].strip()
    if not token:
        token = query.get("token")
    if not token:
        token = request.cookies.get(settings.auth_cookie)
    if not token:
        raise ProtocolError(
            ErrorCode.UNAUTHORIZED,
            "no token: send `Authorization: Bearer <token>`, a `token` query parameter or the "
            f"`{settings.auth_cookie}` cookie",
        )
    return verifier.verify(token)
