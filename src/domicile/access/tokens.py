"""Credentials to principals: a bearer token from the principals file, or a signed JWT.

``Authorization: Bearer <credential>``.  A credential with two dots is read
as a JWT, anything else as a token of the principals file.

JWTs are for deployments with an identity provider.  The key decides the one
algorithm accepted — an Ed25519 public key (PEM) means ``EdDSA``, any other
key file is an ``HS256`` shared secret (at least 32 bytes) — so a token can
never choose its own algorithm (``alg: none``, or HS256 signed with the
public key, are refused).  ``exp``, ``sub``, ``aud`` and ``role`` are
required, ``aud`` must name this gateway, and ``employer`` and ``country``
are read as the principal's attributes.

Every failure is :class:`~domicile.access.errors.Unauthenticated` (HTTP 401)
with a message that says what was wrong with the credential, never with
whom it might belong to.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from domicile.access.errors import Unauthenticated
from domicile.access.principals import (
    Principal,
    PrincipalDirectory,
    check_country,
    check_name,
    check_role,
)
from domicile.errors import ConfigError

MIN_SECRET = 32
MAX_CREDENTIAL = 8192
LEEWAY_SECONDS = 5


@dataclass(frozen=True)
class JwtSettings:
    """How JWTs are checked: the key, its one algorithm, the audience and (optional) issuer."""

    key: Any
    algorithm: str
    audience: str
    issuer: str | None = None


def load_jwt_settings(key_file: Path, audience: str, issuer: str | None = None) -> JwtSettings:
    """Read a JWT key: an Ed25519 public key (PEM) for EdDSA, else an HS256 secret."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    if not audience:
        raise ConfigError("a JWT key needs an audience", hint="pass --jwt-audience NAME")
    try:
        data = key_file.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"cannot read the JWT key: {exc.strerror or exc}", where=str(key_file)
        ) from None
    if data.lstrip().startswith(b"-----BEGIN"):
        try:
            key = load_pem_public_key(data)
        except ValueError as exc:
            raise ConfigError(f"not a PEM public key: {exc}", where=str(key_file)) from None
        if not isinstance(key, Ed25519PublicKey):
            raise ConfigError(
                "the JWT public key is not an Ed25519 key",
                where=str(key_file),
                hint="EdDSA (Ed25519) and HS256 are the algorithms the gateway accepts",
            )
        return JwtSettings(key, "EdDSA", audience, issuer)
    secret = data.strip()
    if len(secret) < MIN_SECRET:
        raise ConfigError(
            f"the HS256 secret has {len(secret)} bytes; at least {MIN_SECRET} are needed",
            where=str(key_file),
        )
    return JwtSettings(secret, "HS256", audience, issuer)


class Authenticator:
    """Bearer credentials to principals."""

    def __init__(self, principals: PrincipalDirectory, jwt: JwtSettings | None = None):
        self.principals = principals
        self.jwt = jwt

    def authenticate(self, authorization: str | None) -> Principal:
        """The principal of an ``Authorization`` header value; Unauthenticated otherwise."""
        if not authorization:
            raise Unauthenticated("no credentials: send Authorization: Bearer <token>")
        scheme, _, credential = authorization.strip().partition(" ")
        credential = credential.strip()
        if scheme.lower() != "bearer" or not credential:
            raise Unauthenticated("malformed credentials: send Authorization: Bearer <token>")
        if len(credential) > MAX_CREDENTIAL:
            raise Unauthenticated("malformed credentials: the token is too long")
        if credential.count(".") == 2:
            return self._jwt(credential)
        principal = self.principals.by_token(credential)
        if principal is None:
            raise Unauthenticated("unknown token")
        return principal

    def _jwt(self, credential: str) -> Principal:
        import jwt

        if self.jwt is None:
            raise Unauthenticated("JWTs are not accepted here (the gateway has no JWT key)")
        s = self.jwt
        try:
            claims = jwt.decode(
                credential,
                s.key,
                algorithms=[s.algorithm],
                audience=s.audience,
                issuer=s.issuer,
                leeway=LEEWAY_SECONDS,
                options={"require": ["exp", "sub", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("the JWT has expired") from None
        except jwt.InvalidAudienceError:
            raise Unauthenticated("the JWT is not for this gateway (aud)") from None
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthenticated(f"the JWT lacks the {exc.claim!r} claim") from None
        except jwt.InvalidAlgorithmError:
            raise Unauthenticated(f"the JWT is not signed with {s.algorithm}") from None
        except jwt.InvalidSignatureError:
            raise Unauthenticated("the JWT's signature does not verify") from None
        except jwt.InvalidTokenError as exc:
            raise Unauthenticated(f"invalid JWT: {exc}") from None
        try:
            return Principal(
                name=check_name(str(claims["sub"])),
                role=check_role(str(claims.get("role", ""))),
                employer=str(claims["employer"]) if claims.get("employer") else None,
                country=check_country(str(claims["country"])) if claims.get("country") else None,
                via="jwt",
            )
        except ConfigError as exc:
            raise Unauthenticated(f"the JWT's claims are not usable: {exc.message}") from None
