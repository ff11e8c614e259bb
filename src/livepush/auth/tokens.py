"""JWT verification and minting.

The algorithm is taken from the token header but only ever paired with a key of its own family:
HMAC algorithms use the configured secret and nothing else, asymmetric ones use the configured
public key or JWKS and nothing else. A PEM key is therefore never usable as an HMAC secret
(algorithm confusion), and `alg: none` matches no key at all.
"""

from __future__ import annotations

import math
import time
import weakref
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from livepush.protocol.channels import KINDS, is_valid_user_id
from livepush.protocol.errors import ErrorCode, ProtocolError
from livepush.protocol.text import clean_name

HMAC_ALGORITHMS: Final = frozenset({"HS256", "HS384", "HS512"})
RSA_ALGORITHMS: Final = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
EC_ALGORITHMS: Final = frozenset({"ES256", "ES384", "ES512"})
OKP_ALGORITHMS: Final = frozenset({"EdDSA"})

#: Token claims that grant channel kinds, and the channel kind each one grants.
GRANT_CLAIMS: Final = {"workflows": "workflow", "executions": "execution", "projects": "project"}


class AuthError(ProtocolError):
    """A token was missing, invalid or expired."""


@dataclass(frozen=True, slots=True, weakref_slot=True)
class Grants:
    """What a token allows, parsed once from its claims: channel ids per kind, `*` for any."""

    admin: bool = False
    by_kind: Mapping[str, frozenset[str]] = field(default_factory=dict)
    #: Channels the token grants for reading only (claim `readOnly`), per kind, `*` for any.
    read_only: Mapping[str, frozenset[str]] = field(default_factory=dict)

    def allows(self, kind: str, ident: str) -> bool:
        """True when the token itself grants this channel."""
        if self.admin:
            return True
        ids = self.by_kind.get(kind)
        return ids is not None and ("*" in ids or ident in ids)

    def writes(self, kind: str, ident: str) -> bool:
        """True when the token grants this channel and does not mark it read-only."""
        return self.allows(kind, ident) and not self.is_read_only(kind, ident)

    def is_read_only(self, kind: str, ident: str) -> bool:
        """True when the token's `readOnly` claim covers this channel."""
        ids = self.read_only.get(kind)
        return ids is not None and ("*" in ids or ident in ids)

    @classmethod
    def from_claims(cls, claims: Mapping[str, Any]) -> Grants:
        """Read `workflows`, `executions`, `projects`, `channels`, `admin` and `readOnly`.

        `readOnly` is `true` (everything granted is read-only) or a list of workflow ids and
        `kind:id` patterns (`*` for any id): those may be read but not written (write locks,
        CRDT edits)."""
        by_kind: dict[str, set[str]] = {}
        for claim, kind in GRANT_CLAIMS.items():
            by_kind.setdefault(kind, set()).update(_string_list(claims.get(claim)))
        admin = claims.get("admin") is True
        for pattern in _string_list(claims.get("channels")):
            if pattern == "*":
                admin = True
                continue
            kind, sep, ident = pattern.partition(":")
            if sep and kind in KINDS and ident:
                by_kind.setdefault(kind, set()).add(ident)
        read_only: dict[str, set[str]] = {}
        if claims.get("readOnly") is True:
            read_only = {kind: {"*"} for kind in KINDS}
        for pattern in _string_list(claims.get("readOnly")):
            kind, sep, ident = pattern.partition(":")
            if not sep:
                kind, ident = "workflow", pattern
            if kind in KINDS and ident:
                read_only.setdefault(kind, set()).add(ident)
        key = (admin, _frozen(by_kind), _frozen(read_only))
        grants = _GRANTS.get(key)
        if grants is None:
            # Connections with the same permissions (every tab of a user, users of one role)
            # share one Grants object.
            grants = cls(
                admin,
                {k: frozenset(ids) for k, ids in key[1]},
                {k: frozenset(ids) for k, ids in key[2]},
            )
            _GRANTS[key] = grants
        return grants


def _frozen(by_kind: Mapping[str, set[str]]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    return tuple(sorted((k, tuple(sorted(v))) for k, v in by_kind.items() if v))


_GRANTS: weakref.WeakValueDictionary[tuple[object, ...], Grants] = weakref.WeakValueDictionary()


def _string_list(value: object) -> Iterable[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a connection belongs to, from a verified token."""

    user_id: str
    expires_at: float | None
    grants: Grants
    #: Who the user is, for collaborator lists (n8n's MinimalUser): `email`, `firstName`,
    #: `lastName` from the token's claims of those names (or `given_name` / `family_name`).
    profile: Mapping[str, str] = field(default_factory=dict)


class TokenVerifier:
    """Verifies tokens against the configured secret, public key and/or JWKS file."""

    def __init__(
        self,
        *,
        secret: str | None = None,
        public_key_path: str | None = None,
        jwks_path: str | None = None,
        audience: str | None = None,
        issuer: str | None = None,
        leeway: float = 10.0,
        user_claim: str = "sub",
        require_exp: bool = True,
    ) -> None:
        self._secret = secret.encode() if secret else None
        self._public_key: Any = None
        self._public_algorithms: frozenset[str] = frozenset()
        if public_key_path:
            self._public_key = load_pem_public_key(Path(public_key_path).read_bytes())
            self._public_algorithms = algorithms_for_key(self._public_key)
        self._jwks: jwt.PyJWKSet | None = None
        if jwks_path:
            self._jwks = jwt.PyJWKSet.from_json(Path(jwks_path).read_text())
        if self._secret is None and self._public_key is None and self._jwks is None:
            raise ValueError("TokenVerifier needs a secret, a public key or a JWKS file")
        self._audience = audience
        self._issuer = issuer
        self._leeway = leeway
        self._user_claim = user_claim
        self._required = ["exp"] if require_exp else []
        # Verified tokens: a user's tabs (and reconnects) present the same token, so they
        # share one Identity and skip the signature check. Bounded, and an entry is only
        # used while the token is valid.
        self._verified: OrderedDict[str, Identity] = OrderedDict()
        self._verified_max = 10_000

    def verify(self, token: str) -> Identity:
        """Return the identity of a valid token; raise `AuthError` with a stable code otherwise."""
        identity = self._verified.get(token)
        if identity is not None:
            if identity.expires_at is None or identity.expires_at > time.time():
                self._verified.move_to_end(token)
                return identity
            del self._verified[token]
        identity = self._verify(token)
        self._verified[token] = identity
        if len(self._verified) > self._verified_max:
            self._verified.popitem(last=False)
        return identity

    def _verify(self, token: str) -> Identity:
        try:
            header = jwt.get_unverified_header(token)
        except (jwt.InvalidTokenError, RecursionError) as exc:
            raise AuthError(ErrorCode.TOKEN_INVALID, f"malformed token: {exc}") from exc
        algorithm = header.get("alg")
        key = self._key_for(algorithm, header.get("kid"))
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[str(algorithm)],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                # the time claims are checked below, strictly (PyJWT would coerce "123" and
                # true to numbers)
                options={
                    "require": self._required,
                    "verify_aud": self._audience is not None,
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                },
            )
        except jwt.InvalidTokenError as exc:
            raise AuthError(ErrorCode.TOKEN_INVALID, f"invalid token: {exc}") from exc
        except (RecursionError, OverflowError) as exc:  # nested too deeply; an infinite time
            raise AuthError(ErrorCode.TOKEN_INVALID, "invalid token: malformed claims") from exc
        for claim in TIME_CLAIMS:
            if claim in claims and not is_numeric_date(claims[claim]):
                # PyJWT coerces "1796393188" to a number when it checks it; livepush does not
                # (a string `exp` used to give a connection that never expired)
                raise AuthError(
                    ErrorCode.TOKEN_INVALID,
                    f"token claim {claim!r} must be a number (RFC 7519 NumericDate)",
                )
        now = time.time()
        if "exp" in claims and now >= claims["exp"] + self._leeway:
            raise AuthError(ErrorCode.TOKEN_EXPIRED, "token has expired")
        for claim in ("nbf", "iat"):  # a token issued in the future is not valid yet either
            if claim in claims and now + self._leeway < claims[claim]:
                raise AuthError(ErrorCode.TOKEN_INVALID, f"invalid token: not valid yet ({claim})")
        user_id = claims.get(self._user_claim)
        if isinstance(user_id, int) and not isinstance(user_id, bool):
            user_id = str(user_id)
        if not is_valid_user_id(user_id):
            raise AuthError(
                ErrorCode.TOKEN_INVALID,
                f"token claim {self._user_claim!r} must hold the user id "
                "(1-128 characters of A-Z a-z 0-9 _ . @ = + -)",
            )
        exp = claims.get("exp")
        expires_at = float(exp) + self._leeway if exp is not None else None
        return Identity(str(user_id), expires_at, Grants.from_claims(claims), profile_of(claims))

    def _key_for(self, algorithm: object, kid: object) -> Any:
        if algorithm in HMAC_ALGORITHMS:
            if self._secret is None:
                raise AuthError(ErrorCode.TOKEN_INVALID, f"{algorithm} tokens are not accepted")
            return self._secret
        if isinstance(algorithm, str) and algorithm in (
            RSA_ALGORITHMS | EC_ALGORITHMS | OKP_ALGORITHMS
        ):
            if self._jwks is not None:
                for jwk in self._jwks.keys:
                    if (kid is None or jwk.key_id == kid) and algorithm in algorithms_for_key(
                        jwk.key
                    ):
                        return jwk.key
            if self._public_key is not None and algorithm in self._public_algorithms:
                return self._public_key
            raise AuthError(
                ErrorCode.TOKEN_INVALID, f"no configured key verifies {algorithm} tokens"
            )
        raise AuthError(ErrorCode.TOKEN_INVALID, f"token algorithm {algorithm!r} is not accepted")


#: Claims that are times: RFC 7519 NumericDate, seconds since the epoch as a JSON number.
TIME_CLAIMS: Final = ("exp", "nbf", "iat")


def is_numeric_date(value: object) -> bool:
    """A JSON number that is a time (not a string of digits, a boolean, NaN or infinity:
    Python's json reads `NaN` and `Infinity`, and an infinite `exp` would never expire)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


#: Profile fields and the claims they are read from, in order of preference.
PROFILE_CLAIMS: Final = {
    "email": ("email",),
    "firstName": ("firstName", "given_name"),
    "lastName": ("lastName", "family_name"),
}


def profile_of(claims: Mapping[str, Any]) -> dict[str, str]:
    """The user's name and email from token claims, cleaned as names others are shown
    (`protocol/text.py`: no control or bidi override characters, at most 256 characters)."""
    profile: dict[str, str] = {}
    for name, sources in PROFILE_CLAIMS.items():
        for claim in sources:
            value = claims.get(claim)
            if isinstance(value, str) and (cleaned := clean_name(value)):
                profile[name] = cleaned
                break
    return profile


def algorithms_for_key(key: Any) -> frozenset[str]:
    """The signature algorithms a public key may verify."""
    if isinstance(key, rsa.RSAPublicKey):
        return RSA_ALGORITHMS
    if isinstance(key, ec.EllipticCurvePublicKey):
        return frozenset({{256: "ES256", 384: "ES384", 521: "ES512"}.get(key.curve.key_size, "")})
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return OKP_ALGORITHMS
    return frozenset()


def mint_token(
    secret: str,
    user_id: str,
    *,
    ttl: float = 3600,
    workflows: Iterable[str] = (),
    executions: Iterable[str] = (),
    projects: Iterable[str] = (),
    admin: bool = False,
    read_only: bool | Iterable[str] = (),
    profile: Mapping[str, str] | None = None,
    audience: str | None = None,
    issuer: str | None = None,
    now: float | None = None,
) -> str:
    """Sign an HS256 token for a user (what `livepush token` prints)."""
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {"sub": user_id, "iat": issued, "exp": issued + int(ttl)}
    grants = {"workflows": workflows, "executions": executions, "projects": projects}
    for name, values in grants.items():
        if listed := list(values):
            claims[name] = listed
    if admin:
        claims["admin"] = True
    if read_only is True:
        claims["readOnly"] = True
    elif not isinstance(read_only, bool) and (listed := list(read_only)):
        claims["readOnly"] = listed
    claims.update(profile or {})
    if audience:
        claims["aud"] = audience
    if issuer:
        claims["iss"] = issuer
    return jwt.encode(claims, secret, algorithm="HS256")
