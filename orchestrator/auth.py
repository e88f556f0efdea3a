"""RS256 bearer tokens: issue, verify, rotate the signing key.

The signing keys live in ``service_signing_keys``, private halves wrapped by the KEK of the key
provider. Each token names its key in the ``kid`` header; rotation makes a new key active and
keeps the old public keys, so tokens signed before a rotation verify until they expire.
A verified token is remembered (bounded LRU keyed by the token's SHA-256, ``VERIFIED_CACHE_SIZE``
entries) until its ``exp``: a repeated token skips the RS256 check, and ``exp`` is still checked on
every use. Claims: ``sub``, ``organization_id`` (absent for a platform admin without an organization),
``roles``, ``iat``, ``exp``, ``iss``, ``aud``, ``jti``.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
import uuid
from collections import OrderedDict, deque
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session

from orchestrator.keys import KeyRing, record_key_version, signing_aad
from schema import audit
from schema.config import Settings
from schema.db import transaction
from schema.errors import AuthenticationError, InvalidInputError, PermissionDeniedError
from schema.models import ServiceSigningKey, User
from schema.timeutil import utcnow
from schema.validation import one_of, parse_uuid

ROLES: tuple[str, ...] = ("platform_admin", "org_admin", "org_user", "node")
VERIFIED_CACHE_SIZE = 10_000
#: Database lookups of kids never seen before, per second (forged tokens cost no more than this).
KID_MISSES_PER_S = 20
_TTL = re.compile(r"^\s*(\d+)\s*([smhd]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_ttl(text: str) -> int:
    """Seconds of a lifetime written like ``900``, ``15m``, ``2h`` or ``1d``."""
    match = _TTL.match(text)
    if match is None or int(match.group(1)) <= 0:
        raise InvalidInputError(f"ttl '{text}' is not a duration; write e.g. 900, 15m, 2h or 1d")
    return int(match.group(1)) * _UNITS[match.group(2)]


@dataclass(frozen=True)
class Principal:
    """Who called: the token's subject, organization and roles."""

    subject: str
    organization_id: uuid.UUID | None
    roles: frozenset[str]
    user_id: uuid.UUID | None = None
    """The ``users`` row the subject names (a UUID ``sub`` of a user of the token's organization)."""

    def require_org(self, organization_id: uuid.UUID, roles: tuple[str, ...]) -> None:
        """The caller may act on ``organization_id`` with one of ``roles`` (platform admins may always)."""
        if "platform_admin" in self.roles:
            return
        if self.organization_id != organization_id or not self.roles.intersection(roles):
            raise PermissionDeniedError("forbidden")


class TokenService:
    def __init__(self, engine: Engine, keyring: KeyRing, settings: Settings) -> None:
        self.engine = engine
        self.keyring = keyring
        self.settings = settings
        self._public: dict[str, Any] = {}
        self._signing: tuple[str, Any] | None = None
        self._lock = threading.Lock()
        self._verified: OrderedDict[bytes, tuple[Principal, float]] = OrderedDict()
        self._verified_lock = threading.Lock()
        self.verified_cache_size = VERIFIED_CACHE_SIZE
        self._unknown: OrderedDict[str, None] = OrderedDict()
        self._misses: deque[float] = deque()

    # -- signing keys ------------------------------------------------------------------------------
    def _create_key(self, session: Session) -> ServiceSigningKey:
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        kid = uuid.uuid4().hex
        der = private.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        kek_version, wrapped = self.keyring.kek.wrap(der, signing_aad(kid))
        public_pem = (
            private.public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            .decode()
        )
        row = ServiceSigningKey(
            kid=kid, public_pem=public_pem, private_wrapped=wrapped, kek_version=kek_version
        )
        session.add(row)
        session.flush()
        record_key_version(session, None, "signing", "accute-jwt-signing", kid, self.keyring.kek.uri)
        return row

    def _active_signing_key(self) -> tuple[str, Any]:
        if self._signing is not None:
            return self._signing
        with self._lock, transaction(self.engine) as session:
            row = session.scalars(
                select(ServiceSigningKey)
                .where(ServiceSigningKey.is_active.is_(True))
                .order_by(ServiceSigningKey.created_at.desc())
                .limit(1)
            ).first()
            if row is None:
                row = self._create_key(session)
            der = self.keyring.kek.unwrap(row.kek_version, row.private_wrapped, signing_aad(row.kid))
            self._signing = (row.kid, serialization.load_der_private_key(der, password=None))
        return self._signing

    def rotate_signing_key(self, session: Session) -> str:
        """Retire the active key (it still verifies) and make a new one active."""
        session.execute(
            update(ServiceSigningKey)
            .where(ServiceSigningKey.is_active.is_(True))
            .values(is_active=False, retired_at=utcnow())
        )
        row = self._create_key(session)
        audit.append(
            session,
            organization_id=None,
            action="keys.signing_key_rotated",
            resource_type="signing",
            data={"kid": row.kid},
        )
        self._signing = None
        return row.kid

    def _public_key(self, kid: str) -> Any:
        """The public key of ``kid``; unknown kids are looked up at most ``KID_MISSES_PER_S`` a second.

        A kid is 32 lowercase hex digits (what ``_create_key`` makes); anything else (NUL, a
        megabyte of text) is refused without a query. Kids not in the database are remembered
        (bounded) and lookups of new unknown kids are rate limited, so forged tokens with random
        kids cannot turn into one database query each.
        """
        key = self._public.get(kid)
        if key is not None:
            return key
        if len(kid) != 32 or not all(c in "0123456789abcdef" for c in kid) or kid in self._unknown:
            raise AuthenticationError("unauthenticated")
        now = time.monotonic()
        with self._lock:
            while self._misses and now - self._misses[0] >= 1.0:
                self._misses.popleft()
            if len(self._misses) >= KID_MISSES_PER_S:
                raise AuthenticationError("unauthenticated")
        with transaction(self.engine) as session:
            row = session.get(ServiceSigningKey, kid)
            if row is None:
                with self._lock:
                    self._misses.append(now)
                    self._unknown[kid] = None
                    while len(self._unknown) > 4096:
                        self._unknown.popitem(last=False)
                raise AuthenticationError("unauthenticated")
            key = serialization.load_pem_public_key(row.public_pem.encode())
        self._public[kid] = key
        return key

    # -- tokens ------------------------------------------------------------------------------------
    def issue(
        self,
        *,
        role: str,
        organization_id: str | uuid.UUID | None,
        subject: str | None = None,
        ttl_s: int | None = None,
    ) -> str:
        one_of(role, ROLES, "role")
        org = parse_uuid(organization_id, "organization id") if organization_id else None
        if org is None and role != "platform_admin":
            raise InvalidInputError(f"role {role} needs an organization; pass --org")
        ttl = ttl_s or self.settings.jwt_ttl_s
        if ttl > self.settings.jwt_max_ttl_s:
            raise InvalidInputError(
                f"ttl {ttl}s exceeds ACCUTE_JWT_MAX_TTL_S ({self.settings.jwt_max_ttl_s}s)"
            )
        self._refuse_listed_user(subject, org)
        kid, private = self._active_signing_key()
        now = utcnow()
        claims: dict[str, Any] = {
            "sub": subject or f"{role}:{org or 'platform'}",
            "roles": [role],
            "iat": now,
            "exp": now + timedelta(seconds=ttl),
            "iss": self.settings.jwt_issuer,
            "aud": self.settings.jwt_audience,
            "jti": uuid.uuid4().hex,
        }
        if org is not None:
            claims["organization_id"] = str(org)
        return jwt.encode(claims, private, algorithm="RS256", headers={"kid": kid})

    def _refuse_listed_user(self, subject: str | None, organization_id: uuid.UUID | None) -> None:
        """A token for a user (``sub`` = a user id of its organization) whose email address threat
        intelligence lists is not issued (``ThreatListedError``)."""
        from orchestrator.security.threat_intel import refuse_listed_email

        user_id = self._user_of(subject, organization_id) if subject else None
        if user_id is None:
            return
        with transaction(self.engine) as session:
            email = session.scalar(select(User.email).where(User.id == user_id))
        if email:
            refuse_listed_email(self.engine, email, "token.issue", organization_id)

    def cached(self, token: str) -> Principal | None:
        """The principal of a token verified before and not yet expired; None otherwise."""
        key = hashlib.sha256(token.encode()).digest()
        with self._verified_lock:
            entry = self._verified.get(key)
            if entry is None:
                return None
            principal, expires_at = entry
            if time.time() >= expires_at:
                del self._verified[key]
                return None
            self._verified.move_to_end(key)
            return principal

    def verify(self, token: str) -> Principal:
        """The principal of a valid token; every failure is the same bare 401."""
        principal = self.cached(token)
        if principal is not None:
            return principal
        principal, expires_at = self._verify_signature(token)
        key = hashlib.sha256(token.encode()).digest()
        with self._verified_lock:
            self._verified[key] = (principal, expires_at)
            self._verified.move_to_end(key)
            while len(self._verified) > self.verified_cache_size:
                self._verified.popitem(last=False)
        return principal

    def _verify_signature(self, token: str) -> tuple[Principal, float]:
        try:
            header = jwt.get_unverified_header(token)
            kid = header.get("kid")
            if not isinstance(kid, str) or header.get("alg") != "RS256":
                raise AuthenticationError("unauthenticated")
            claims = jwt.decode(
                token,
                self._public_key(kid),
                algorithms=["RS256"],
                audience=self.settings.jwt_audience,
                issuer=self.settings.jwt_issuer,
                options={"require": ["exp", "iat", "sub", "iss", "aud"]},
            )
            roles = frozenset(r for r in claims.get("roles", []) if r in ROLES)
            raw_org = claims.get("organization_id")
            org = uuid.UUID(raw_org) if raw_org else None
            expires_at = float(claims["exp"])
        except (jwt.PyJWTError, ValueError, TypeError, AttributeError):
            raise AuthenticationError("unauthenticated") from None
        if not roles or (org is None and "platform_admin" not in roles):
            raise AuthenticationError("unauthenticated")
        subject = str(claims["sub"])
        return Principal(subject, org, roles, self._user_of(subject, org)), expires_at

    def _user_of(self, subject: str, organization_id: uuid.UUID | None) -> uuid.UUID | None:
        """The user a token speaks for: its ``sub`` when that is the id of a user of its organization.

        Checked once per token (verified tokens are cached), so usage rows can name the user
        (``llm_usage_log.user_id``) without ever pointing at a user of another organization.
        """
        if organization_id is None or len(subject) != 36:
            return None
        try:
            user_id = uuid.UUID(subject)
        except ValueError:
            return None
        with transaction(self.engine) as session:
            user = session.get(User, user_id)
        return user_id if user is not None and user.organization_id == organization_id else None
