"""Token verification: signatures, time claims, key families and the user claim."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from livepush.auth.tokens import AuthError, Grants, TokenVerifier, mint_token
from livepush.protocol.errors import ErrorCode

SECRET = "unit-test-secret-" + "0123456789abcdef" * 4
OTHER_SECRET = "another-secret-" + "fedcba9876543210" * 4


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(**extra: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {"sub": "alice", "iat": now, "exp": now + 600}
    claims.update(extra)
    return claims


def _hs256(claims: dict[str, Any], secret: str = SECRET, **headers: Any) -> str:
    return jwt.encode(claims, secret, algorithm="HS256", headers=headers or None)


def _public_pem(private_key: Any) -> bytes:
    pem: bytes = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pem


def _token_error(verifier: TokenVerifier, token: str) -> AuthError:
    with pytest.raises(AuthError) as info:
        verifier.verify(token)
    return info.value


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
def rsa_pem_path(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> Path:
    path = tmp_path / "rsa_public.pem"
    path.write_bytes(_public_pem(rsa_key))
    return path


@pytest.fixture
def ec_pem_path(tmp_path: Path, ec_key: ec.EllipticCurvePrivateKey) -> Path:
    path = tmp_path / "ec_public.pem"
    path.write_bytes(_public_pem(ec_key))
    return path


@pytest.fixture
def verifier() -> TokenVerifier:
    return TokenVerifier(secret=SECRET)


# -- HMAC and time claims ---------------------------------------------------------------------


def test_valid_hs256_token_gives_identity(verifier: TokenVerifier) -> None:
    claims = _claims(workflows=["w1"])
    identity = verifier.verify(_hs256(claims))
    assert identity.user_id == "alice"
    assert identity.expires_at == pytest.approx(claims["exp"] + 10.0)
    assert identity.grants.allows("workflow", "w1")
    assert not identity.grants.allows("workflow", "w2")


@pytest.mark.parametrize("algorithm", ["HS384", "HS512"])
def test_other_hmac_algorithms_use_the_secret(algorithm: str) -> None:
    token = jwt.encode(_claims(), SECRET, algorithm=algorithm)
    assert TokenVerifier(secret=SECRET).verify(token).user_id == "alice"


def test_token_signed_with_another_secret_refused(verifier: TokenVerifier) -> None:
    error = _token_error(verifier, _hs256(_claims(), OTHER_SECRET))
    assert error.code is ErrorCode.TOKEN_INVALID


def test_tampered_payload_refused(verifier: TokenVerifier) -> None:
    header, _, signature = _hs256(_claims()).split(".")
    forged = _b64url(json.dumps(_claims(sub="mallory", admin=True)).encode())
    assert _token_error(verifier, f"{header}.{forged}.{signature}").code is ErrorCode.TOKEN_INVALID


@pytest.mark.parametrize("token", ["", "abc", "a.b", "a.b.c", "....", "eyJhbGciOiJIUzI1NiJ9.."])
def test_malformed_token_refused_as_token_invalid(verifier: TokenVerifier, token: str) -> None:
    assert _token_error(verifier, token).code is ErrorCode.TOKEN_INVALID


def test_expired_token_refused_as_token_expired(verifier: TokenVerifier) -> None:
    now = int(time.time())
    error = _token_error(verifier, _hs256(_claims(iat=now - 3600, exp=now - 600)))
    assert error.code is ErrorCode.TOKEN_EXPIRED


def test_token_not_yet_valid_refused(verifier: TokenVerifier) -> None:
    now = int(time.time())
    error = _token_error(verifier, _hs256(_claims(nbf=now + 300)))
    assert error.code is ErrorCode.TOKEN_INVALID


def test_expiry_within_leeway_accepted() -> None:
    now = int(time.time())
    verifier = TokenVerifier(secret=SECRET, leeway=10)
    identity = verifier.verify(_hs256(_claims(iat=now - 60, exp=now - 5)))
    assert identity.user_id == "alice"


def test_expiry_past_leeway_refused() -> None:
    now = int(time.time())
    verifier = TokenVerifier(secret=SECRET, leeway=10)
    error = _token_error(verifier, _hs256(_claims(iat=now - 60, exp=now - 20)))
    assert error.code is ErrorCode.TOKEN_EXPIRED


def test_not_before_within_leeway_accepted() -> None:
    now = int(time.time())
    verifier = TokenVerifier(secret=SECRET, leeway=10)
    assert verifier.verify(_hs256(_claims(nbf=now + 5))).user_id == "alice"


def test_zero_leeway_refuses_just_expired_token() -> None:
    now = int(time.time())
    verifier = TokenVerifier(secret=SECRET, leeway=0)
    assert _token_error(verifier, _hs256(_claims(exp=now - 2))).code is ErrorCode.TOKEN_EXPIRED


def test_token_without_exp_refused_by_default(verifier: TokenVerifier) -> None:
    claims = _claims()
    del claims["exp"]
    assert _token_error(verifier, _hs256(claims)).code is ErrorCode.TOKEN_INVALID


def test_token_without_exp_accepted_when_not_required() -> None:
    claims = _claims()
    del claims["exp"]
    identity = TokenVerifier(secret=SECRET, require_exp=False).verify(_hs256(claims))
    assert identity.user_id == "alice"
    assert identity.expires_at is None


# -- audience and issuer ----------------------------------------------------------------------


def test_audience_checked_when_configured() -> None:
    verifier = TokenVerifier(secret=SECRET, audience="livepush")
    assert verifier.verify(_hs256(_claims(aud="livepush"))).user_id == "alice"
    assert verifier.verify(_hs256(_claims(aud=["other", "livepush"]))).user_id == "alice"
    assert _token_error(verifier, _hs256(_claims(aud="other"))).code is ErrorCode.TOKEN_INVALID
    assert _token_error(verifier, _hs256(_claims())).code is ErrorCode.TOKEN_INVALID


def test_audience_ignored_when_not_configured(verifier: TokenVerifier) -> None:
    assert verifier.verify(_hs256(_claims(aud="anything"))).user_id == "alice"


def test_issuer_checked_when_configured() -> None:
    verifier = TokenVerifier(secret=SECRET, issuer="https://n8n.example.com")
    token = _hs256(_claims(iss="https://n8n.example.com"))
    assert verifier.verify(token).user_id == "alice"
    assert _token_error(verifier, _hs256(_claims(iss="https://evil"))).code is (
        ErrorCode.TOKEN_INVALID
    )
    assert _token_error(verifier, _hs256(_claims())).code is ErrorCode.TOKEN_INVALID


def test_issuer_ignored_when_not_configured(verifier: TokenVerifier) -> None:
    assert verifier.verify(_hs256(_claims(iss="whoever"))).user_id == "alice"


# -- algorithm attacks ------------------------------------------------------------------------


def _unsigned(claims: dict[str, Any], alg: str = "none") -> str:
    header = _b64url(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    payload = _b64url(json.dumps(claims).encode())
    return f"{header}.{payload}."


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_alg_none_token_refused(verifier: TokenVerifier, alg: str) -> None:
    assert _token_error(verifier, _unsigned(_claims(), alg)).code is ErrorCode.TOKEN_INVALID


def test_alg_none_refused_by_asymmetric_verifier(rsa_pem_path: Path) -> None:
    verifier = TokenVerifier(public_key_path=str(rsa_pem_path))
    assert _token_error(verifier, _unsigned(_claims())).code is ErrorCode.TOKEN_INVALID


def test_token_without_alg_header_refused(verifier: TokenVerifier) -> None:
    header = _b64url(b'{"typ":"JWT"}')
    payload = _b64url(json.dumps(_claims()).encode())
    signature = _b64url(
        hmac.new(SECRET.encode(), f"{header}.{payload}".encode(), hashlib.sha256).digest()
    )
    token = f"{header}.{payload}.{signature}"
    assert _token_error(verifier, token).code is ErrorCode.TOKEN_INVALID


def test_hs256_token_signed_with_public_pem_refused_by_rs256_verifier(
    rsa_pem_path: Path,
) -> None:
    """Algorithm confusion: the public key must never be usable as an HMAC secret."""
    pem = rsa_pem_path.read_bytes()
    header = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = _b64url(json.dumps(_claims(admin=True)).encode())
    signing_input = f"{header}.{payload}".encode()
    signature = _b64url(hmac.new(pem, signing_input, hashlib.sha256).digest())
    verifier = TokenVerifier(public_key_path=str(rsa_pem_path))
    error = _token_error(verifier, f"{header}.{payload}.{signature}")
    assert error.code is ErrorCode.TOKEN_INVALID


def test_hs256_token_refused_when_no_secret_configured(rsa_pem_path: Path) -> None:
    verifier = TokenVerifier(public_key_path=str(rsa_pem_path))
    assert _token_error(verifier, _hs256(_claims())).code is ErrorCode.TOKEN_INVALID


def test_rs256_token_refused_when_only_a_secret_is_configured(
    verifier: TokenVerifier, rsa_key: rsa.RSAPrivateKey
) -> None:
    token = jwt.encode(_claims(), rsa_key, algorithm="RS256")
    assert _token_error(verifier, token).code is ErrorCode.TOKEN_INVALID


def test_unknown_algorithm_refused(verifier: TokenVerifier) -> None:
    assert _token_error(verifier, _unsigned(_claims(), "XS999")).code is ErrorCode.TOKEN_INVALID


# -- asymmetric keys ---------------------------------------------------------------------------


def test_rs256_token_verified_with_pem_public_key(
    rsa_key: rsa.RSAPrivateKey, rsa_pem_path: Path
) -> None:
    verifier = TokenVerifier(public_key_path=str(rsa_pem_path))
    token = jwt.encode(_claims(sub="bob"), rsa_key, algorithm="RS256")
    assert verifier.verify(token).user_id == "bob"


def test_ps256_token_verified_with_rsa_pem(rsa_key: rsa.RSAPrivateKey, rsa_pem_path: Path) -> None:
    verifier = TokenVerifier(public_key_path=str(rsa_pem_path))
    assert verifier.verify(jwt.encode(_claims(), rsa_key, algorithm="PS256")).user_id == "alice"


def test_rs256_token_signed_by_another_key_refused(rsa_pem_path: Path) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    verifier = TokenVerifier(public_key_path=str(rsa_pem_path))
    token = jwt.encode(_claims(), other, algorithm="RS256")
    assert _token_error(verifier, token).code is ErrorCode.TOKEN_INVALID


def test_es256_token_verified_with_pem_public_key(
    ec_key: ec.EllipticCurvePrivateKey, ec_pem_path: Path
) -> None:
    verifier = TokenVerifier(public_key_path=str(ec_pem_path))
    token = jwt.encode(_claims(sub="carol"), ec_key, algorithm="ES256")
    assert verifier.verify(token).user_id == "carol"


def test_rs256_token_refused_by_ec_key_verifier(
    rsa_key: rsa.RSAPrivateKey, ec_pem_path: Path
) -> None:
    verifier = TokenVerifier(public_key_path=str(ec_pem_path))
    token = jwt.encode(_claims(), rsa_key, algorithm="RS256")
    assert _token_error(verifier, token).code is ErrorCode.TOKEN_INVALID


def test_es384_token_refused_by_p256_key_verifier(ec_pem_path: Path) -> None:
    p384 = ec.generate_private_key(ec.SECP384R1())
    verifier = TokenVerifier(public_key_path=str(ec_pem_path))
    token = jwt.encode(_claims(), p384, algorithm="ES384")
    assert _token_error(verifier, token).code is ErrorCode.TOKEN_INVALID


def test_expired_asymmetric_token_refused_as_token_expired(
    rsa_key: rsa.RSAPrivateKey, rsa_pem_path: Path
) -> None:
    now = int(time.time())
    verifier = TokenVerifier(public_key_path=str(rsa_pem_path))
    token = jwt.encode(_claims(iat=now - 3600, exp=now - 600), rsa_key, algorithm="RS256")
    assert _token_error(verifier, token).code is ErrorCode.TOKEN_EXPIRED


# -- JWKS ----------------------------------------------------------------------------------------


@pytest.fixture
def jwks_path(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> Path:
    rsa_jwk = RSAAlgorithm.to_jwk(rsa_key.public_key(), as_dict=True)
    rsa_jwk.update(kid="rsa-1", use="sig")
    ec_jwk = ECAlgorithm.to_jwk(ec_key.public_key(), as_dict=True)
    ec_jwk.update(kid="ec-1", use="sig")
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [rsa_jwk, ec_jwk]}))
    return path


def test_rs256_token_verified_with_jwks_key_by_kid(
    rsa_key: rsa.RSAPrivateKey, jwks_path: Path
) -> None:
    verifier = TokenVerifier(jwks_path=str(jwks_path))
    token = jwt.encode(_claims(sub="dave"), rsa_key, algorithm="RS256", headers={"kid": "rsa-1"})
    assert verifier.verify(token).user_id == "dave"


def test_es256_token_verified_with_jwks_key_by_kid(
    ec_key: ec.EllipticCurvePrivateKey, jwks_path: Path
) -> None:
    verifier = TokenVerifier(jwks_path=str(jwks_path))
    token = jwt.encode(_claims(), ec_key, algorithm="ES256", headers={"kid": "ec-1"})
    assert verifier.verify(token).user_id == "alice"


def test_jwks_token_with_unknown_kid_refused(rsa_key: rsa.RSAPrivateKey, jwks_path: Path) -> None:
    verifier = TokenVerifier(jwks_path=str(jwks_path))
    token = jwt.encode(_claims(), rsa_key, algorithm="RS256", headers={"kid": "rsa-2"})
    assert _token_error(verifier, token).code is ErrorCode.TOKEN_INVALID


def test_jwks_token_with_kid_of_other_key_type_refused(
    rsa_key: rsa.RSAPrivateKey, jwks_path: Path
) -> None:
    verifier = TokenVerifier(jwks_path=str(jwks_path))
    token = jwt.encode(_claims(), rsa_key, algorithm="RS256", headers={"kid": "ec-1"})
    assert _token_error(verifier, token).code is ErrorCode.TOKEN_INVALID


def test_hs256_token_refused_by_jwks_only_verifier(jwks_path: Path) -> None:
    verifier = TokenVerifier(jwks_path=str(jwks_path))
    assert _token_error(verifier, _hs256(_claims(), kid="rsa-1")).code is ErrorCode.TOKEN_INVALID


def test_verifier_without_any_key_cannot_be_built() -> None:
    with pytest.raises(ValueError, match="needs a secret"):
        TokenVerifier()


# -- the user claim ------------------------------------------------------------------------------


def test_token_missing_user_claim_refused(verifier: TokenVerifier) -> None:
    claims = _claims()
    del claims["sub"]
    error = _token_error(verifier, _hs256(claims))
    assert error.code is ErrorCode.TOKEN_INVALID
    assert "sub" in error.message


@pytest.mark.parametrize("user_id", ["", "a b", "a|b", "a,b", "x" * 129, "a\nb", True, 1.5, []])
def test_token_with_invalid_user_id_refused(verifier: TokenVerifier, user_id: object) -> None:
    assert _token_error(verifier, _hs256(_claims(sub=user_id))).code is ErrorCode.TOKEN_INVALID


def test_integer_user_id_accepted_as_string() -> None:
    verifier = TokenVerifier(secret=SECRET, user_claim="uid")
    assert verifier.verify(_hs256(_claims(uid=42))).user_id == "42"


def test_custom_user_claim_is_read_instead_of_sub() -> None:
    verifier = TokenVerifier(secret=SECRET, user_claim="userId")
    identity = verifier.verify(_hs256(_claims(sub="ignored", userId="user-7")))
    assert identity.user_id == "user-7"
    claims = _claims()
    assert _token_error(verifier, _hs256(claims)).code is ErrorCode.TOKEN_INVALID


# -- grants --------------------------------------------------------------------------------------


def test_grants_from_workflow_execution_and_project_lists() -> None:
    grants = Grants.from_claims({"workflows": ["w1", "w2"], "executions": ["e1"], "projects": "p1"})
    assert grants.allows("workflow", "w1")
    assert grants.allows("workflow", "w2")
    assert not grants.allows("workflow", "w3")
    assert grants.allows("execution", "e1")
    assert grants.allows("project", "p1")
    assert not grants.allows("project", "p2")
    assert not grants.admin


def test_wildcard_grants_every_id_of_one_kind() -> None:
    grants = Grants.from_claims({"workflows": "*"})
    assert grants.allows("workflow", "anything")
    assert not grants.allows("execution", "anything")


def test_channel_patterns_grant_channels_of_any_kind() -> None:
    grants = Grants.from_claims({"channels": ["workflow:w9", "execution:*", "user:bob"]})
    assert grants.allows("workflow", "w9")
    assert not grants.allows("workflow", "w1")
    assert grants.allows("execution", "e-anything")
    assert grants.allows("user", "bob")
    assert not grants.admin


def test_malformed_channel_patterns_grant_nothing() -> None:
    grants = Grants.from_claims({"channels": ["workflow", "bogus:1", "workflow:", 5, ":x"]})
    assert grants.by_kind == {}
    assert not grants.admin
    assert not grants.allows("workflow", "")


def test_star_channel_pattern_grants_admin() -> None:
    grants = Grants.from_claims({"channels": "*"})
    assert grants.admin
    assert grants.allows("project", "p")


def test_admin_claim_must_be_true_exactly() -> None:
    assert Grants.from_claims({"admin": True}).allows("workflow", "x")
    assert not Grants.from_claims({"admin": "true"}).admin
    assert not Grants.from_claims({"admin": 1}).admin


def test_non_string_grant_entries_ignored() -> None:
    grants = Grants.from_claims({"workflows": ["w1", 2, None, {"id": "w3"}], "executions": 7})
    assert grants.by_kind == {"workflow": frozenset({"w1"})}


def test_empty_claims_grant_nothing() -> None:
    grants = Grants.from_claims({})
    assert grants == Grants()
    assert not grants.allows("workflow", "w1")


# -- minting -------------------------------------------------------------------------------------


def test_minted_token_verifies_with_its_grants() -> None:
    token = mint_token(
        SECRET, "alice", workflows=["w1"], executions=["e1"], projects=["p1"], ttl=120
    )
    identity = TokenVerifier(secret=SECRET).verify(token)
    assert identity.user_id == "alice"
    assert identity.grants.allows("workflow", "w1")
    assert identity.grants.allows("execution", "e1")
    assert identity.grants.allows("project", "p1")
    assert not identity.grants.admin
    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert claims["exp"] - claims["iat"] == 120
    assert jwt.get_unverified_header(token)["alg"] == "HS256"


def test_minted_admin_token_with_audience_and_issuer_verifies() -> None:
    token = mint_token(SECRET, "root", admin=True, audience="lp", issuer="n8n")
    verifier = TokenVerifier(secret=SECRET, audience="lp", issuer="n8n")
    identity = verifier.verify(token)
    assert identity.user_id == "root"
    assert identity.grants.admin


def test_minted_token_with_past_now_is_expired() -> None:
    token = mint_token(SECRET, "alice", ttl=60, now=time.time() - 3600)
    assert _token_error(TokenVerifier(secret=SECRET), token).code is ErrorCode.TOKEN_EXPIRED


def test_minted_token_omits_empty_grant_claims() -> None:
    claims = jwt.decode(mint_token(SECRET, "alice"), SECRET, algorithms=["HS256"])
    assert set(claims) == {"sub", "iat", "exp"}


def test_a_token_verified_once_is_shared_until_it_expires() -> None:
    """Tabs of one user present one token: they share one Identity, and the cache never
    outlives the token."""
    verifier = TokenVerifier(secret=SECRET, leeway=0)
    token = mint_token(SECRET, "alice", ttl=1)
    first = verifier.verify(token)
    assert verifier.verify(token) is first
    time.sleep(max(0.0, first.expires_at - time.time()) + 0.05)  # type: ignore[operator]
    with pytest.raises(AuthError) as raised:
        verifier.verify(token)
    assert raised.value.code is ErrorCode.TOKEN_EXPIRED


def test_a_bad_token_is_never_cached() -> None:
    verifier = TokenVerifier(secret=SECRET)
    token = mint_token("another-secret-" + "x" * 40, "mallory")
    for _ in range(2):
        with pytest.raises(AuthError):
            verifier.verify(token)


def test_profile_read_from_claims(verifier: TokenVerifier) -> None:
    identity = verifier.verify(
        _hs256(_claims(email="a@example.com", given_name="Ada", family_name="Lovelace"))
    )
    assert identity.profile == {
        "email": "a@example.com",
        "firstName": "Ada",
        "lastName": "Lovelace",
    }
    n8n_style = verifier.verify(_hs256(_claims(firstName="Ada", given_name="ignored", email=7)))
    assert n8n_style.profile == {"firstName": "Ada"}


# -- time claims are numbers, and the cache never outlives a token ----------------------------


@pytest.mark.parametrize("claim", ["exp", "nbf", "iat"])
@pytest.mark.parametrize("value", ["as string", True, None, [1], {"t": 1}])
def test_time_claims_must_be_numbers(verifier: TokenVerifier, claim: str, value: Any) -> None:
    now = int(time.time())
    bad = str(now + 600) if value == "as string" else value
    error = _token_error(verifier, _hs256(_claims(**{claim: bad})))
    assert error.code is ErrorCode.TOKEN_INVALID
    assert "NumericDate" in str(error) or claim in str(error)


@pytest.mark.parametrize("value", ["Infinity", "NaN", "1e999"])
def test_infinite_or_nan_times_are_refused(verifier: TokenVerifier, value: str) -> None:
    header = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = _b64url(f'{{"sub":"alice","exp":{value}}}'.encode())
    signature = hmac.new(SECRET.encode(), f"{header}.{payload}".encode(), hashlib.sha256)
    token = f"{header}.{payload}.{_b64url(signature.digest())}"
    assert _token_error(verifier, token).code is ErrorCode.TOKEN_INVALID


def test_claims_nested_too_deeply_are_refused(verifier: TokenVerifier) -> None:
    header = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    nested = "[" * 100_000 + "]" * 100_000
    payload = _b64url(f'{{"sub":"alice","exp":{int(time.time()) + 60},"x":{nested}}}'.encode())
    signature = hmac.new(SECRET.encode(), f"{header}.{payload}".encode(), hashlib.sha256)
    token = f"{header}.{payload}.{_b64url(signature.digest())}"
    assert _token_error(verifier, token).code is ErrorCode.TOKEN_INVALID


def test_a_cached_token_is_refused_once_it_expires() -> None:
    verifier = TokenVerifier(secret=SECRET, leeway=0)
    now = time.time()
    token = _hs256(_claims(iat=int(now), exp=int(now) + 1))
    identity = verifier.verify(token)
    assert identity.expires_at == int(now) + 1
    assert verifier.verify(token) is identity  # from the cache
    time.sleep(max(0.0, identity.expires_at - time.time()) + 0.05)
    assert _token_error(verifier, token).code is ErrorCode.TOKEN_EXPIRED


def test_token_issued_in_the_future_is_refused(verifier: TokenVerifier) -> None:
    now = int(time.time())
    error = _token_error(verifier, _hs256(_claims(iat=now + 300, exp=now + 900)))
    assert error.code is ErrorCode.TOKEN_INVALID
