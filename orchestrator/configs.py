"""Tenant provider configs (``tenant_llm_config``): validation, CRUD, and the cascade's view of them.

The API key is write-only: it is stored only as ciphertext (``orchestrator.keys``), never returned
(responses say ``has_api_key``), never logged or audited. Every function takes the organization
id and filters by it, so one tenant never reads or changes another's configs.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr
from sqlalchemy import select
from sqlalchemy import update as sql_update
from sqlalchemy.orm import Session

from orchestrator.adapters import KEY_OPTIONAL, NEEDS_ENDPOINT, Target
from orchestrator.egress import EgressError, EgressPolicy
from orchestrator.keys import KeyRing
from schema import audit
from schema.errors import ConflictError, InvalidInputError, NotFoundError
from schema.models import FineTunedModelConfig, LlmUsageLog, TenantLlmConfig, Workspace
from schema.timeutil import as_utc, iso
from schema.validation import clean_name, one_of, parse_uuid
from schema.vocab import LLM_PROVIDERS

#: Fields a caller may change; the key goes through ``api_key`` only.
EDITABLE = (
    "display_name",
    "model_id",
    "api_endpoint",
    "priority",
    "is_active",
    "rate_limit_rpm",
    "rate_limit_tpm",
    "max_tokens",
    "temperature",
    "config_json",
    "workspace_id",
)


class ConfigCreate(BaseModel):
    """POST body of ``/v1/orgs/{org}/llm-configs``."""

    model_config = ConfigDict(extra="forbid")

    provider: str
    display_name: str = Field(min_length=1, max_length=100)
    model_id: str = Field(min_length=1, max_length=200)
    api_endpoint: str | None = Field(default=None, max_length=500)
    api_key: SecretStr | None = Field(default=None, description="Write-only; never returned.")
    priority: int = Field(default=1, ge=0, le=10_000)
    is_active: bool = True
    rate_limit_rpm: int | None = Field(default=60, ge=1, le=1_000_000)
    rate_limit_tpm: int | None = Field(default=100_000, ge=1, le=1_000_000_000)
    max_tokens: int | None = Field(default=4096, ge=1, le=1_000_000)
    temperature: Decimal | None = Field(default=Decimal("0.7"), ge=0, le=2, decimal_places=2)
    config_json: dict[str, Any] = Field(default_factory=dict)
    workspace_id: uuid.UUID | None = None


class ConfigUpdate(BaseModel):
    """PATCH body: any subset of the POST fields except ``provider``."""

    model_config = ConfigDict(extra="forbid")

    display_name: str | None = Field(default=None, min_length=1, max_length=100)
    model_id: str | None = Field(default=None, min_length=1, max_length=200)
    api_endpoint: str | None = Field(default=None, max_length=500)
    api_key: SecretStr | None = None
    priority: int | None = Field(default=None, ge=0, le=10_000)
    is_active: bool | None = None
    rate_limit_rpm: int | None = Field(default=None, ge=1, le=1_000_000)
    rate_limit_tpm: int | None = Field(default=None, ge=1, le=1_000_000_000)
    max_tokens: int | None = Field(default=None, ge=1, le=1_000_000)
    temperature: Decimal | None = Field(default=None, ge=0, le=2, decimal_places=2)
    config_json: dict[str, Any] | None = None
    workspace_id: uuid.UUID | None = None


def _check_endpoint(endpoint: str | None, egress: EgressPolicy | None) -> None:
    """A plain http(s) base URL: no credentials, spaces or control characters, a valid port, a
    host that is not an internal address (``orchestrator.egress``; names are checked at connect)."""
    if endpoint is None:
        return
    usage = "api_endpoint must be an http(s) base URL without credentials, e.g. https://host/v1"
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in endpoint):
        raise InvalidInputError(f"{usage} (it contains spaces or control characters)")
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.password:
        raise InvalidInputError(usage)
    try:
        port = parts.port
    except ValueError:
        raise InvalidInputError(f"{usage} (the port must be 1-65535)") from None
    if port == 0:
        raise InvalidInputError(f"{usage} (the port must be 1-65535)")
    if egress is not None:
        try:
            egress.check_endpoint(endpoint)
        except EgressError as exc:
            raise InvalidInputError(str(exc)) from None


def _check(
    session: Session,
    organization_id: uuid.UUID,
    row: TenantLlmConfig,
    has_key: bool,
    egress: EgressPolicy | None,
) -> None:
    one_of(row.provider, LLM_PROVIDERS, "provider")
    clean_name(row.display_name, "display_name", max_length=100)
    clean_name(row.model_id, "model_id", max_length=200)
    _check_endpoint(row.api_endpoint, egress)
    if row.provider in NEEDS_ENDPOINT and not row.api_endpoint:
        raise InvalidInputError(f"provider {row.provider} needs api_endpoint (its base URL)")
    if row.provider not in KEY_OPTIONAL and not has_key:
        raise InvalidInputError(f"provider {row.provider} needs api_key")
    config = row.config_json or {}
    if row.provider == "azure_openai":
        for name in ("deployment", "api_version"):
            if name in config and not isinstance(config[name], str):
                raise InvalidInputError(f"config_json.{name} must be a string")
    if row.provider == "fine_tuned" and "fine_tuned_model_id" in config:
        model_id = parse_uuid(str(config["fine_tuned_model_id"]), "config_json.fine_tuned_model_id")
        model = session.get(FineTunedModelConfig, model_id)
        if model is None or model.organization_id not in (None, organization_id):
            raise InvalidInputError(
                "config_json.fine_tuned_model_id names no fine-tuned model of this organization"
            )
    if row.workspace_id is not None:
        workspace = session.get(Workspace, row.workspace_id)
        if workspace is None or workspace.organization_id != organization_id:
            raise InvalidInputError("workspace_id names no workspace of this organization")


def _duplicate(session: Session, organization_id: uuid.UUID, row: TenantLlmConfig) -> None:
    clash = session.scalar(
        select(TenantLlmConfig.id).where(
            TenantLlmConfig.organization_id == organization_id,
            TenantLlmConfig.provider == row.provider,
            TenantLlmConfig.model_id == row.model_id,
            TenantLlmConfig.id != row.id,
        )
    )
    if clash is not None:
        raise ConflictError(f"a {row.provider} config for model {row.model_id} already exists ({clash})")


def as_dict(row: TenantLlmConfig) -> dict[str, Any]:
    return {
        "id": str(row.id),
        "organization_id": str(row.organization_id),
        "workspace_id": str(row.workspace_id) if row.workspace_id else None,
        "provider": row.provider,
        "display_name": row.display_name,
        "model_id": row.model_id,
        "api_endpoint": row.api_endpoint,
        "has_api_key": row.api_key_encrypted is not None,
        "priority": row.priority,
        "is_active": bool(row.is_active),
        "rate_limit_rpm": row.rate_limit_rpm,
        "rate_limit_tpm": row.rate_limit_tpm,
        "max_tokens": row.max_tokens,
        "temperature": float(row.temperature) if row.temperature is not None else None,
        "config_json": row.config_json or {},
        "health_status": row.health_status,
        "last_health_check": iso(row.last_health_check),
        "created_at": iso(row.created_at),
        "updated_at": iso(row.updated_at),
    }


def _audit(session: Session, row: TenantLlmConfig, action: str, changed: list[str]) -> None:
    audit.append(
        session,
        organization_id=row.organization_id,
        action=action,
        resource_type="tenant_llm_config",
        resource_id=row.id,
        data={"provider": row.provider, "model_id": row.model_id, "changed": sorted(changed)},
    )


def _check_key(key: SecretStr | None) -> None:
    if key is not None and any(ord(c) < 32 or ord(c) == 127 for c in key.get_secret_value()):
        raise InvalidInputError("api_key contains control characters (NUL, CR, LF...); paste the key alone")


def create(
    session: Session,
    keyring: KeyRing,
    organization_id: uuid.UUID,
    body: ConfigCreate,
    egress: EgressPolicy | None = None,
) -> TenantLlmConfig:
    row = TenantLlmConfig(
        id=uuid.uuid4(),
        organization_id=organization_id,
        **body.model_dump(exclude={"api_key"}),
        health_status="unknown",
    )
    row.display_name, row.model_id = row.display_name.strip(), row.model_id.strip()
    _check_key(body.api_key)
    _check(session, organization_id, row, body.api_key is not None, egress)
    _duplicate(session, organization_id, row)
    if body.api_key is not None:
        row.api_key_encrypted = keyring.encrypt_secret(
            session, organization_id, row.id, body.api_key.get_secret_value()
        )
    session.add(row)
    session.flush()
    _audit(session, row, "llm_config.created", list(body.model_fields_set))
    return row


def get(session: Session, organization_id: uuid.UUID, config_id: str) -> TenantLlmConfig:
    row = session.get(TenantLlmConfig, parse_uuid(config_id, "config id"))
    if row is None or row.organization_id != organization_id:
        raise NotFoundError(f"LLM config {config_id} does not exist in this organization")
    return row


def list_for(session: Session, organization_id: uuid.UUID) -> list[TenantLlmConfig]:
    query = select(TenantLlmConfig).where(TenantLlmConfig.organization_id == organization_id)
    return list(session.scalars(query.order_by(TenantLlmConfig.priority, TenantLlmConfig.created_at)))


def _destination(row: TenantLlmConfig) -> tuple[str | None, str | None]:
    """What decides where the key is sent: the endpoint, and a fine-tuned model's own endpoint."""
    return row.api_endpoint, str((row.config_json or {}).get("fine_tuned_model_id") or "") or None


def update(
    session: Session,
    keyring: KeyRing,
    organization_id: uuid.UUID,
    config_id: str,
    body: ConfigUpdate,
    egress: EgressPolicy | None = None,
) -> TenantLlmConfig:
    """Apply a PATCH.

    Changing where requests go (``api_endpoint``, or ``config_json.fine_tuned_model_id``) while a
    key is stored needs the key again in the same PATCH (409 otherwise): the stored key was given
    for its endpoint, and sending it to a new one would let whoever can PATCH (a tenant admin, or a
    stolen admin token) read the "write-only" key at an endpoint of their choosing.
    """
    row = get(session, organization_id, config_id)
    _check_key(body.api_key)
    before = _destination(row)
    changes = body.model_dump(exclude_unset=True, exclude={"api_key"})
    for name, value in changes.items():
        if value is None and name in ("display_name", "model_id", "priority", "is_active", "config_json"):
            raise InvalidInputError(f"{name} cannot be null")
        setattr(row, name, value)
    if row.api_key_encrypted is not None and body.api_key is None and _destination(row) != before:
        raise ConflictError(
            "api_endpoint changed but api_key was not sent: the stored key is only ever sent to the "
            "endpoint it was given for; send api_key again in the same PATCH"
        )
    if isinstance(row.display_name, str):
        row.display_name, row.model_id = row.display_name.strip(), row.model_id.strip()
    _check(
        session,
        organization_id,
        row,
        body.api_key is not None or row.api_key_encrypted is not None,
        egress,
    )
    _duplicate(session, organization_id, row)
    if body.api_key is not None:
        row.api_key_encrypted = keyring.encrypt_secret(
            session, organization_id, row.id, body.api_key.get_secret_value()
        )
    if changes or body.api_key is not None:
        # Whatever changed (endpoint, key, model), the old health verdict no longer applies.
        row.health_status = "unknown"
    session.flush()
    _audit(session, row, "llm_config.updated", list(body.model_fields_set))
    return row


def delete(session: Session, organization_id: uuid.UUID, config_id: str) -> None:
    row = get(session, organization_id, config_id)
    _audit(session, row, "llm_config.deleted", [])
    # Usage rows keep their history; they stop pointing at the deleted config.
    session.execute(
        sql_update(LlmUsageLog).where(LlmUsageLog.llm_config_id == row.id).values(llm_config_id=None)
    )
    session.delete(row)
    session.flush()


@dataclass
class ConfigView:
    """What the cascade needs of one config, its key decrypted (held in memory only)."""

    id: uuid.UUID
    workspace_id: uuid.UUID | None
    priority: int
    rpm: int | None
    tpm: int | None
    max_tokens: int | None
    temperature: float | None
    health_status: str
    unhealthy_for_s: float | None
    target: Target = field(repr=False)


def views(
    session: Session, keyring: KeyRing, organization_id: uuid.UUID, now_wall: float
) -> list[ConfigView]:
    """Active configs of the organization by priority, keys decrypted, for the cascade."""
    query = (
        select(TenantLlmConfig)
        .where(TenantLlmConfig.organization_id == organization_id, TenantLlmConfig.is_active.is_(True))
        .order_by(TenantLlmConfig.priority, TenantLlmConfig.created_at)
    )
    result = []
    for row in session.scalars(query):
        key = (
            keyring.decrypt_secret(session, organization_id, row.id, row.api_key_encrypted)
            if row.api_key_encrypted is not None
            else None
        )
        model_id, endpoint, config = row.model_id, row.api_endpoint, dict(row.config_json or {})
        if row.provider == "fine_tuned" and config.get("fine_tuned_model_id"):
            model = session.get(FineTunedModelConfig, uuid.UUID(str(config["fine_tuned_model_id"])))
            if model is None or not model.is_active:
                continue
            model_id = model.fine_tune_id or model.model_name
            endpoint = endpoint or model.endpoint_url
        checked = as_utc(row.last_health_check).timestamp() if row.last_health_check is not None else None
        unhealthy_for = None
        if row.health_status == "unhealthy":
            unhealthy_for = max(now_wall - checked, 0.0) if checked is not None else float("inf")
        result.append(
            ConfigView(
                id=row.id,
                workspace_id=row.workspace_id,
                priority=row.priority,
                rpm=row.rate_limit_rpm,
                tpm=row.rate_limit_tpm,
                max_tokens=row.max_tokens,
                temperature=float(row.temperature) if row.temperature is not None else None,
                health_status=row.health_status or "unknown",
                unhealthy_for_s=unhealthy_for,
                target=Target(row.provider, model_id, endpoint, key, config),
            )
        )
    return result
