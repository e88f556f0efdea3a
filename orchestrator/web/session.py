"""The dashboard's sign-in session: a cookie sealed with the service's KEK, and its CSRF token.

Why sealed and not an opaque id mapped in memory: ``accute-fl serve --workers N`` runs N processes
that share nothing but the database and the KEK; a server-side session table in one process would
sign the admin out whenever the next request lands on another worker. The cookie is therefore
self-contained: AES-256-GCM under the current KEK version (``KekProvider.wrap``, associated data
``SESSION_AAD``), holding the bearer token the admin signed in with, a random CSRF secret and the
expiry. The browser sees only ciphertext; any change to it fails authentication (GCM tag); every
request re-verifies the token (``Guard.authenticate``), so its expiry, roles and signing key apply
exactly as to an API call. A KEK rotation keeps old versions for unwrapping, so sessions survive it.

The price of statelessness: "log out" deletes the cookie in the browser but cannot revoke a copy
taken before; a copied cookie works until the token expires (at most ``ACCUTE_JWT_MAX_TTL_S``), the
same as a copied bearer token. Sign in with short-lived tokens (``--ttl 1h``).

CSRF: a synchronizer token. ``csrf`` is random per session and stored only inside the sealed
cookie; every state-changing form carries it in a hidden field and the POST is refused (403)
unless the field equals the session's value (constant-time). The sign-in form, before a session
exists, uses a double-submit pair: a random value in a short-lived ``LOGIN_COOKIE`` and the same in
the form (a cross-site page can read neither, so it cannot sign a victim into its own account).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import secrets
import time
from dataclasses import dataclass

from orchestrator.keys import KekProvider
from schema.errors import ConfigurationError

COOKIE = "accute_admin"
LOGIN_COOKIE = "accute_admin_login"
COOKIE_PATH = "/admin"
SESSION_AAD = b"accute-admin-session/1"
#: Browsers cap a cookie near 4096 bytes; a longer value is a forgery (or a token no session can hold).
MAX_COOKIE_CHARS = 4000
#: Bearer tokens a session may hold (an RS256 token of this service is ~700 characters).
MAX_TOKEN_CHARS = 2500


@dataclass(frozen=True)
class WebSession:
    token: str
    csrf: str
    expires_at: float

    def csrf_ok(self, submitted: str | None) -> bool:
        return submitted is not None and hmac.compare_digest(self.csrf.encode(), submitted.encode())


def new_session(token: str, expires_at: float) -> WebSession:
    return WebSession(token=token, csrf=secrets.token_urlsafe(32), expires_at=float(expires_at))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def seal(kek: KekProvider, session: WebSession) -> str:
    """The cookie value: ``<kek version>.<base64url(nonce + ciphertext + tag)>``."""
    payload = json.dumps(
        {"t": session.token, "c": session.csrf, "e": session.expires_at}, separators=(",", ":")
    ).encode()
    version, blob = kek.wrap(payload, SESSION_AAD)
    return f"{version}.{_b64(blob)}"


def unseal(kek: KekProvider, value: str | None, now: float | None = None) -> WebSession | None:
    """The session in a cookie value, or None when absent, malformed, tampered with or expired."""
    if not value or len(value) > MAX_COOKIE_CHARS or "." not in value:
        return None
    version, _, encoded = value.partition(".")
    try:
        payload = json.loads(kek.unwrap(version, _unb64(encoded), SESSION_AAD))
        session = WebSession(token=str(payload["t"]), csrf=str(payload["c"]), expires_at=float(payload["e"]))
    except (ConfigurationError, ValueError, KeyError, TypeError, binascii.Error):
        return None
    if (now if now is not None else time.time()) >= session.expires_at:
        return None
    return session
