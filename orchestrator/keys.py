"""Envelope encryption of provider API keys (invariant 7).

A provider API key is AES-256-GCM ciphertext under its organization's data key (DEK); the DEK is
stored only wrapped (AES-256-GCM) by a key-encryption key (KEK) that lives outside the database:
a local file (default) or a PKCS#11 token (SoftHSM, a real HSM). The AAD of an API key binds the
organization id and the config id, so a ciphertext copied to another row or tenant does not
decrypt. Rotating the KEK re-wraps every DEK; rotating an organization's DEK re-encrypts its keys.
``hsm_key_registry`` records the current version of the KEK (system-wide ``master_kek``) and of
each organization's DEK (``organization_dek``); every rotation is audited (never the key bytes).

Formats (all bytes): wrapped DEK = nonce(12) | ciphertext+tag, AAD ``accute:dek:<org>:<version>``;
API key = b"k1" | DEK version (4, big endian) | nonce(12) | ciphertext+tag.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import secrets
import struct
import threading
import uuid
from pathlib import Path
from typing import Any, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from schema import audit
from schema.config import Settings
from schema.errors import ConfigurationError
from schema.models import HsmKeyRegistry, OrganizationDataKey, ServiceSigningKey, TenantLlmConfig
from schema.personal_data import PersonalDataVault
from schema.timeutil import utcnow

log = logging.getLogger("accute.orchestrator")

NONCE_BYTES = 12
KEY_BYTES = 32
_SECRET_PREFIX = b"k1"


class KeyUnusableError(ConfigurationError):
    """A key cannot be used: wrong KEK, tampered ciphertext, or a missing key version."""

    code = "key_error"


class KekProvider(Protocol):
    """Where the key-encryption key lives. Versions are strings; the newest one wraps."""

    name: str
    uri: str

    def current_version(self) -> str: ...

    def wrap(self, plaintext: bytes, aad: bytes) -> tuple[str, bytes]: ...

    def unwrap(self, version: str, blob: bytes, aad: bytes) -> bytes: ...

    def rotate(self) -> str: ...


def _seal(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def _open(key: bytes, blob: bytes, aad: bytes) -> bytes:
    try:
        return AESGCM(key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad)
    except InvalidTag:
        raise KeyUnusableError(
            "a wrapped key or secret does not decrypt (wrong key or tampered data)"
        ) from None


def _check_private(path: Path) -> None:
    """Refuse a KEK file others can read or write, or one in a folder others can write.

    The file is created 0600 in a 0700 folder; a pre-existing one with looser modes (copied with
    a default umask, a shared folder) would otherwise be used without a word.
    """
    try:
        file_mode = path.stat().st_mode & 0o777
        folder_mode = path.parent.stat().st_mode & 0o777
    except OSError as exc:
        raise ConfigurationError(f"the KEK file {path} is unreadable ({type(exc).__name__})") from None
    if file_mode & 0o077:
        raise ConfigurationError(
            f"the KEK file {path} is accessible to other users (mode {file_mode:04o}); run chmod 600 {path}"
        )
    if folder_mode & 0o022:
        raise ConfigurationError(
            f"the KEK folder {path.parent} is writable by other users (mode {folder_mode:04o}); "
            f"run chmod 700 {path.parent}"
        )
    if folder_mode & 0o005:
        log.warning("the KEK folder %s is readable by other users (mode %04o)", path.parent, folder_mode)


class LocalFileKek:
    """KEK versions in a JSON file created 0600 (folder 0700) on first use; looser modes are refused."""

    name = "local"

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.uri = f"file://{self.path.resolve()}"
        self._lock = threading.Lock()
        self._keys: dict[str, bytes] = {}
        self._current = ""

    def _load(self) -> None:
        if self._current:
            return
        with self._lock:
            if self._current:
                return
            if not self.path.exists():
                self._write({"1": AESGCM.generate_key(bit_length=256)}, "1", create=True)
            _check_private(self.path)
            try:
                document = json.loads(self.path.read_text())
                keys = {v: base64.b64decode(k) for v, k in document["keys"].items()}
                current = str(document["current"])
            except (OSError, ValueError, KeyError) as exc:
                raise ConfigurationError(
                    f"the KEK file {self.path} is unreadable ({type(exc).__name__}); restore it from backup"
                ) from None
            if current not in keys or any(len(k) != KEY_BYTES for k in keys.values()):
                raise ConfigurationError(f"the KEK file {self.path} is malformed; restore it from backup")
            self._keys, self._current = keys, current

    def _write(self, keys: dict[str, bytes], current: str, create: bool = False) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        document = {"current": current, "keys": {v: base64.b64encode(k).decode() for v, k in keys.items()}}
        temporary = self.path.with_name(f".{self.path.name}.{secrets.token_hex(4)}")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as stream:
            json.dump(document, stream)
            stream.flush()
            os.fsync(stream.fileno())
        if create:
            with contextlib.suppress(FileExistsError):  # first writer wins when two processes start
                os.link(temporary, self.path)
            os.unlink(temporary)
        else:
            os.replace(temporary, self.path)

    def current_version(self) -> str:
        self._load()
        return self._current

    def wrap(self, plaintext: bytes, aad: bytes) -> tuple[str, bytes]:
        self._load()
        return self._current, _seal(self._keys[self._current], plaintext, aad)

    def unwrap(self, version: str, blob: bytes, aad: bytes) -> bytes:
        self._load()
        key = self._keys.get(version)
        if key is None:
            raise KeyUnusableError(f"KEK version {version} is not in {self.path}")
        return _open(key, blob, aad)

    def rotate(self) -> str:
        self._load()
        with self._lock:
            new = str(max(int(v) for v in self._keys) + 1)
            keys = {**self._keys, new: AESGCM.generate_key(bit_length=256)}
            self._write(keys, new)
            self._keys, self._current = keys, new
        return new


class Pkcs11Kek:
    """KEK versions as AES-256 secret keys on a PKCS#11 token, labelled ``<label>-v<N>``.

    The key material never leaves the token: wrapping is AES-GCM performed by the token.
    """

    name = "pkcs11"

    def __init__(self, module: str, token_label: str, pin: str, key_label: str) -> None:
        try:
            import pkcs11
        except ImportError:
            raise ConfigurationError("ACCUTE_KEY_PROVIDER=pkcs11 needs the python-pkcs11 package") from None
        self._pkcs11: Any = pkcs11
        try:
            self._lib = pkcs11.lib(module)
            self._token = self._lib.get_token(token_label=token_label)
        except Exception as exc:
            raise ConfigurationError(
                f"PKCS#11 token '{token_label}' is not available in {module} ({type(exc).__name__})"
            ) from None
        self._pin = pin
        self._label = key_label
        self.uri = f"pkcs11:token={token_label};object={key_label}"
        self._lock = threading.Lock()
        self._session: Any = None

    def _open_session(self) -> Any:
        if self._session is None:
            try:
                self._session = self._token.open(user_pin=self._pin, rw=True)
            except self._pkcs11.UserAlreadyLoggedIn:  # the login is per application, not per session
                self._session = self._token.open(rw=True)
        return self._session

    def _versions(self) -> dict[str, Any]:
        session = self._open_session()
        found = {}
        for key in session.get_objects({self._pkcs11.Attribute.CLASS: self._pkcs11.ObjectClass.SECRET_KEY}):
            label = key.label or ""
            if label.startswith(f"{self._label}-v") and label[len(self._label) + 2 :].isdigit():
                found[label[len(self._label) + 2 :]] = key
        return found

    def _generate(self, version: str) -> None:
        self._open_session().generate_key(
            self._pkcs11.KeyType.AES, 256, label=f"{self._label}-v{version}", store=True
        )

    def current_version(self) -> str:
        with self._lock:
            versions = self._versions()
            if not versions:
                self._generate("1")
                return "1"
            return str(max(int(v) for v in versions))

    def _key(self, version: str) -> Any:
        key = self._versions().get(version)
        if key is None:
            raise KeyUnusableError(f"KEK version {version} is not on the PKCS#11 token")
        return key

    def wrap(self, plaintext: bytes, aad: bytes) -> tuple[str, bytes]:
        version = self.current_version()
        nonce = os.urandom(NONCE_BYTES)
        with self._lock:
            sealed = self._key(version).encrypt(
                plaintext,
                mechanism=self._pkcs11.Mechanism.AES_GCM,
                mechanism_param=self._pkcs11.GCMParams(nonce, aad, 128),
            )
        return version, nonce + bytes(sealed)

    def unwrap(self, version: str, blob: bytes, aad: bytes) -> bytes:
        with self._lock:
            try:
                return bytes(
                    self._key(version).decrypt(
                        blob[NONCE_BYTES:],
                        mechanism=self._pkcs11.Mechanism.AES_GCM,
                        mechanism_param=self._pkcs11.GCMParams(blob[:NONCE_BYTES], aad, 128),
                    )
                )
            except self._pkcs11.PKCS11Error:
                raise KeyUnusableError("a wrapped key does not decrypt on the PKCS#11 token") from None

    def rotate(self) -> str:
        with self._lock:
            versions = self._versions()
            new = str(max((int(v) for v in versions), default=0) + 1)
            self._generate(new)
        return new


def kek_provider(settings: Settings) -> KekProvider:
    if settings.key_provider == "pkcs11":
        if settings.pkcs11_pin is None:
            raise ConfigurationError("ACCUTE_PKCS11_PIN is required with ACCUTE_KEY_PROVIDER=pkcs11")
        return Pkcs11Kek(
            settings.pkcs11_module,
            settings.pkcs11_token_label,
            settings.pkcs11_pin.get_secret_value(),
            settings.pkcs11_key_label,
        )
    return LocalFileKek(settings.kek_file)


def _dek_aad(organization_id: uuid.UUID, version: int) -> bytes:
    return f"accute:dek:{organization_id}:{version}".encode()


def secret_aad(organization_id: uuid.UUID, config_id: uuid.UUID) -> bytes:
    return f"accute:tenant_llm_config:{organization_id}:{config_id}".encode()


def signing_aad(kid: str) -> bytes:
    return f"accute:signing:{kid}".encode()


class KeyRing:
    """Per-organization data keys under one KEK provider; unwrapped DEKs are cached in memory only."""

    def __init__(self, kek: KekProvider) -> None:
        self.kek = kek
        self._deks: dict[tuple[uuid.UUID, int], bytes] = {}
        self._lock = threading.Lock()

    # -- data keys ---------------------------------------------------------------------------------
    def _unwrap_row(self, row: OrganizationDataKey) -> bytes:
        cached = self._deks.get((row.organization_id, row.version))
        if cached is None:
            cached = self.kek.unwrap(
                row.kek_version, row.wrapped_key, _dek_aad(row.organization_id, row.version)
            )
            with self._lock:
                self._deks[(row.organization_id, row.version)] = cached
        return cached

    def _active_row(self, session: Session, organization_id: uuid.UUID) -> OrganizationDataKey | None:
        query = select(OrganizationDataKey).where(
            OrganizationDataKey.organization_id == organization_id, OrganizationDataKey.is_active.is_(True)
        )
        return session.scalars(query.order_by(OrganizationDataKey.version.desc()).limit(1)).first()

    def _new_data_key(
        self, session: Session, organization_id: uuid.UUID, version: int
    ) -> OrganizationDataKey:
        dek = AESGCM.generate_key(bit_length=256)
        kek_version, wrapped = self.kek.wrap(dek, _dek_aad(organization_id, version))
        row = OrganizationDataKey(
            organization_id=organization_id, version=version, wrapped_key=wrapped, kek_version=kek_version
        )
        session.add(row)
        session.flush()
        record_key_version(
            session, organization_id, "organization_dek", f"dek-{organization_id}", str(version), self.kek.uri
        )
        return row

    def active_data_key(self, session: Session, organization_id: uuid.UUID) -> tuple[int, bytes]:
        """The organization's active DEK, created (version 1) on first use."""
        row = self._active_row(session, organization_id)
        if row is None:
            try:
                with session.begin_nested():
                    row = self._new_data_key(session, organization_id, 1)
            except IntegrityError:  # another request created it first
                row = self._active_row(session, organization_id)
                if row is None:
                    raise
        return row.version, self._unwrap_row(row)

    def _data_key(self, session: Session, organization_id: uuid.UUID, version: int) -> bytes:
        cached = self._deks.get((organization_id, version))
        if cached is not None:
            return cached
        row = session.scalars(
            select(OrganizationDataKey).where(
                OrganizationDataKey.organization_id == organization_id, OrganizationDataKey.version == version
            )
        ).first()
        if row is None:
            raise KeyUnusableError(f"data key version {version} of organization {organization_id} is missing")
        return self._unwrap_row(row)

    # -- secrets -----------------------------------------------------------------------------------
    def encrypt_secret(
        self, session: Session, organization_id: uuid.UUID, config_id: uuid.UUID, plaintext: str
    ) -> bytes:
        version, dek = self.active_data_key(session, organization_id)
        sealed = _seal(dek, plaintext.encode(), secret_aad(organization_id, config_id))
        return _SECRET_PREFIX + struct.pack(">I", version) + sealed

    def decrypt_secret(
        self, session: Session, organization_id: uuid.UUID, config_id: uuid.UUID, blob: bytes
    ) -> str:
        if blob[:2] != _SECRET_PREFIX or len(blob) < 6 + NONCE_BYTES:
            raise KeyUnusableError("an encrypted API key has an unknown format")
        (version,) = struct.unpack(">I", blob[2:6])
        dek = self._data_key(session, organization_id, version)
        return _open(dek, blob[6:], secret_aad(organization_id, config_id)).decode()

    # -- rotation ----------------------------------------------------------------------------------
    def rotate_kek(self, session: Session) -> str:
        """A new KEK version; every data key and signing key is re-wrapped under it."""
        new_version = self.kek.rotate()
        rows = session.scalars(select(OrganizationDataKey)).all()
        now = utcnow()
        for row in rows:
            dek = self._unwrap_row(row)
            row.kek_version, row.wrapped_key = self.kek.wrap(dek, _dek_aad(row.organization_id, row.version))
            row.rewrapped_at = now
        signing = session.scalars(select(ServiceSigningKey)).all()
        for key in signing:
            private = self.kek.unwrap(key.kek_version, key.private_wrapped, signing_aad(key.kid))
            key.kek_version, key.private_wrapped = self.kek.wrap(private, signing_aad(key.kid))
        personal = PersonalDataVault(self.kek).rewrap_all(session)  # users' data keys (issue 19)
        from schema import audit_signing  # the audit log's re-anchor signing keys (issue 19)

        audit_keys = audit_signing.rewrap_keys(session, self.kek)
        record_key_version(session, None, "master_kek", "accute-kek", new_version, self.kek.uri)
        audit.append(
            session,
            organization_id=None,
            action="keys.kek_rotated",
            resource_type="master_kek",
            data={
                "kek_version": new_version,
                "rewrapped_data_keys": len(rows),
                "rewrapped_signing_keys": len(signing),
                "rewrapped_personal_data_keys": personal,
                "rewrapped_audit_signing_keys": audit_keys,
            },
        )
        return new_version

    def rotate_data_key(self, session: Session, organization_id: uuid.UUID) -> int:
        """A new DEK version for one organization; its API keys are re-encrypted under it."""
        current = self._active_row(session, organization_id)
        configs = session.scalars(
            select(TenantLlmConfig).where(
                TenantLlmConfig.organization_id == organization_id,
                TenantLlmConfig.api_key_encrypted.is_not(None),
            )
        ).all()
        plaintexts = {
            c.id: self.decrypt_secret(session, organization_id, c.id, c.api_key_encrypted or b"")
            for c in configs
        }
        version = (current.version + 1) if current is not None else 1
        session.execute(
            update(OrganizationDataKey)
            .where(OrganizationDataKey.organization_id == organization_id)
            .values(is_active=False)
        )
        self._new_data_key(session, organization_id, version)
        for config in configs:
            config.api_key_encrypted = self.encrypt_secret(
                session, organization_id, config.id, plaintexts[config.id]
            )
        audit.append(
            session,
            organization_id=organization_id,
            action="keys.data_key_rotated",
            resource_type="organization_dek",
            data={"version": version, "reencrypted_configs": len(configs)},
        )
        return version


def record_key_version(
    session: Session,
    organization_id: uuid.UUID | None,
    purpose: str,
    name: str,
    version: str,
    uri: str,
) -> None:
    """Upsert the ``hsm_key_registry`` row of (organization, purpose) with the current version."""
    query = select(HsmKeyRegistry).where(HsmKeyRegistry.key_purpose == purpose)
    query = query.where(
        HsmKeyRegistry.organization_id.is_(None)
        if organization_id is None
        else HsmKeyRegistry.organization_id == organization_id
    )
    row = session.scalars(query).first()
    now = utcnow()
    if row is None:
        session.add(
            HsmKeyRegistry(
                organization_id=organization_id,
                key_name=name,
                key_vault_uri=uri[:500],
                key_version=version,
                key_purpose=purpose,
                algorithm="AES-256-GCM" if purpose != "signing" else "RS256",
                is_active=True,
                last_rotated_at=now,
            )
        )
    else:
        row.key_version, row.key_vault_uri, row.last_rotated_at = version, uri[:500], now
    session.flush()


# -- personal data (issue 19) ----------------------------------------------------------------------
def personal_data_vault(settings: Settings) -> PersonalDataVault:
    """Per-user data keys (crypto-shredding) under the same KEK provider as the organizations' DEKs."""
    return PersonalDataVault(kek_provider(settings))


def configured_kek(settings: Settings) -> KekProvider | None:
    """The KEK provider when this host can use it without creating one, else None.

    For commands that may run where the KEK is absent (``db upgrade`` on a migration host): the local
    provider counts only when its file already exists (a new file here would be a stray KEK nobody
    else holds), PKCS#11 only with a PIN.
    """
    if settings.key_provider == "pkcs11":
        return kek_provider(settings) if settings.pkcs11_pin is not None else None
    return LocalFileKek(settings.kek_file) if Path(settings.kek_file).exists() else None
